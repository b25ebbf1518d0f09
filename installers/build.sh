#!/usr/bin/env bash
# Build the MSRL Studio onedir bundle (Linux or macOS) in a lean venv and smoke-test it offscreen.
# Usage: installers/build.sh [--cpu]   (--cpu installs the CPU build of torch, as CI machines need)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv build/installer-venv
. build/installer-venv/bin/activate
pip install --upgrade pip
if [ "${1:-}" = "--cpu" ]; then pip install torch==2.13.0; fi
pip install . pyinstaller
pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller installers/msrl_studio.spec
# Smoke test: the frozen app analyses a synthetic slide with the shipped bundle and writes a report.
msrl synth slide build/smoke.svs --width 2048 --height 1536 --seed 1
QT_QPA_PLATFORM=offscreen dist/MSRL-Studio/msrl-studio build/smoke.svs --analyze --export build/smoke.pdf --quit
echo "built dist/MSRL-Studio ($(du -sh dist/MSRL-Studio | cut -f1))"
