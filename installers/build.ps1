# Build the MSRL Studio onedir bundle on Windows and check it with its own --self-test (offscreen).
# Usage: powershell -File installers\build.ps1
# NOT BUILT OR RUN HERE: only the Linux build (installers/build.sh) was made and self-tested.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
python -m venv build\installer-venv
. build\installer-venv\Scripts\Activate.ps1
python -m pip install --upgrade pip
pip install . pyinstaller
pyinstaller --noconfirm --distpath dist --workpath build\pyinstaller installers\msrl_studio.spec
# msrl-studio.exe is a GUI-subsystem program: wait for it explicitly and read its one-line summary
# from a file (the line is also in the app's log file).
$selfTest = Start-Process -FilePath dist\MSRL-Studio\msrl-studio.exe -ArgumentList "--self-test" -Wait -PassThru `
    -NoNewWindow -RedirectStandardOutput build\self-test.txt
Get-Content build\self-test.txt
if ($selfTest.ExitCode -ne 0) { throw "build FAILED: the built program did not pass its self-test (exit $($selfTest.ExitCode))" }
Write-Host "built dist\MSRL-Studio"
