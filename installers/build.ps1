# Build the MSRL Studio onedir bundle on Windows and smoke-test it offscreen.
# Usage: powershell -File installers\build.ps1
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
python -m venv build\installer-venv
. build\installer-venv\Scripts\Activate.ps1
python -m pip install --upgrade pip
pip install . pyinstaller
pyinstaller --noconfirm --distpath dist --workpath build\pyinstaller installers\msrl_studio.spec
$env:QT_QPA_PLATFORM = "offscreen"
msrl synth slide build\smoke.svs --width 2048 --height 1536 --seed 1
& dist\MSRL-Studio\msrl-studio.exe build\smoke.svs --analyze --export build\smoke.pdf --quit
if ($LASTEXITCODE -ne 0) { throw "smoke test failed with exit code $LASTEXITCODE" }
Write-Host "built dist\MSRL-Studio"
