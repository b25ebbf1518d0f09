#!/usr/bin/env bash
# Build the MSRL Studio onedir folder (Linux) in a lean venv and check it with its own --self-test.
# Usage: installers/build.sh [--cpu]   (--cpu installs the CPU build of torch, as CI machines need)
# Output: dist/MSRL-Studio/ (run dist/MSRL-Studio/msrl-studio), with msrl-studio.desktop beside it.
# The build fails unless the built program passes `msrl-studio --self-test` (it analyses a synthetic
# slide with the shipped bundle and writes a PDF report, offscreen). macOS: installers/build-macos.sh;
# Windows: installers/build.ps1.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
python3 -m venv build/installer-venv
. build/installer-venv/bin/activate
pip install --upgrade pip
if [ "${1:-}" = "--cpu" ]; then pip install torch==2.13.0; fi
pip install . pyinstaller
pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller installers/msrl_studio.spec
# The Linux desktop entry travels with the folder (see its header for installing it).
cp installers/msrl-studio.desktop dist/MSRL-Studio/msrl-studio.desktop
if command -v desktop-file-validate >/dev/null; then desktop-file-validate dist/MSRL-Studio/msrl-studio.desktop; fi
built=$((SECONDS - started))
# Self-test of the built folder (not of the venv): fails the build on exit status 1.
if ! line=$(dist/MSRL-Studio/msrl-studio --self-test); then
    echo "${line:-self-test failed: no output}" >&2
    echo "build FAILED: the built program did not pass its self-test" >&2
    exit 1
fi
echo "$line"
echo "built dist/MSRL-Studio ($(du -sh dist/MSRL-Studio | cut -f1)) in ${built} s"
