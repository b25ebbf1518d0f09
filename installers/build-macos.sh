#!/usr/bin/env bash
# Build "MSRL Studio.app" (macOS) in a lean venv and check it with its own --self-test.
#
# NOT BUILT OR RUN HERE: this script was written on Linux and has never been run on a Mac; it is the
# Linux build (installers/build.sh) plus the spec's BUNDLE step (installers/msrl_studio.spec, active
# only when sys.platform == "darwin"). Expect to adjust it on the first macOS build.
#
# Usage (on macOS, Python 3.11+ from python.org or Homebrew):  bash installers/build-macos.sh
# Output: dist/MSRL Studio.app (and the onedir folder dist/MSRL-Studio it is made from), plus
# dist/MSRL-Studio.dmg. The app is ad-hoc signed by PyInstaller, not notarised: Gatekeeper asks on
# first start (right-click ▸ Open). The build fails unless the app passes `--self-test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(uname -s)" != "Darwin" ]; then
    echo "error: build-macos.sh runs on macOS only; on Linux use installers/build.sh" >&2
    exit 2
fi
started=$SECONDS
python3 -m venv build/installer-venv
. build/installer-venv/bin/activate
pip install --upgrade pip
pip install torch==2.13.0  # PyPI's macOS wheels are CPU/MPS builds
pip install . pyinstaller
pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller installers/msrl_studio.spec
app="dist/MSRL Studio.app"
test -x "$app/Contents/MacOS/msrl-studio"
built=$((SECONDS - started))
# Self-test of the built app (offscreen: no window shows): fails the build on exit status 1.
if ! line=$("$app/Contents/MacOS/msrl-studio" --self-test); then
    echo "${line:-self-test failed: no output}" >&2
    echo "build FAILED: the built app did not pass its self-test" >&2
    exit 1
fi
echo "$line"
rm -f dist/MSRL-Studio.dmg
hdiutil create -volname "MSRL Studio" -srcfolder "$app" -ov -format UDZO dist/MSRL-Studio.dmg
echo "built $app ($(du -sh "$app" | cut -f1)) and dist/MSRL-Studio.dmg in ${built} s"
