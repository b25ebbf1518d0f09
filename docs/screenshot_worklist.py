"""Take the README's screenshot of the Worklist dock after Analyze all, in a real X window.

``DISPLAY=:92 python docs/screenshot_worklist.py CMU_SLIDE BUNDLE docs/img [WIDTHxHEIGHT]`` (default
1366x768; Xvfb as in docs/screenshots.py). The worklist is a scratch folder with the CMU slide, two
synthetic H&E slides, a blank slide and a picture (no slide): three rows done, two failed with their
reasons. Writes ``worklist-<size>.png``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from screenshots import _settle, _shot, _wait, open_window  # docs/screenshots.py, beside this script


def case_folder(folder: Path, cmu_slide: Path) -> Path:
    from PIL import Image

    from msrl_model.synth.slides import make_slide

    folder.mkdir(parents=True)
    shutil.copy(cmu_slide, folder / "CMU-small-region.svs")
    make_slide(folder / "synthetic-case-01.svs", 2048, 1536, seed=11)
    make_slide(folder / "synthetic-case-02.svs", 2048, 1536, seed=12)
    make_slide(folder / "blank-glass.svs", 1024, 768, seed=3, kind="blank")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / "gross-photo.png")
    return folder


def main(cmu_slide: str, bundle: str, out_dir: str, size: str = "1366x768") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    app, window, scratch = open_window(size, bundle)
    folder = case_folder(scratch / "cases", Path(cmu_slide))
    _wait(app, lambda: window.bundle_manifest is not None)
    window.worklist.open(folder)
    ended: list[str] = []
    window.worklist.events.finished.connect(ended.append)
    window.worklist.analyze_all()
    _wait(app, lambda: bool(ended) and len(window.worklist.thumbnails) >= 4)
    cmu = next(i for i, e in enumerate(window.worklist.entries) if e.name.startswith("CMU"))
    window.worklist.open_entry(cmu)  # the slide with its heat-map in the viewer, the worklist beside it
    _wait(app, lambda: window.result is not None and window.viewer.thumbnail() is not None)
    window.worklist_dock.raise_()
    window.worklist_panel.table.selectRow(cmu)
    _settle(app, 2.0)
    _shot(window, out / f"worklist-{size}.png")
    window.close()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or ("DISPLAY" not in os.environ and os.environ.get("QT_QPA_PLATFORM") != "offscreen"):
        raise SystemExit("usage: DISPLAY=:92 python docs/screenshot_worklist.py CMU_SLIDE BUNDLE OUT_DIR [WIDTHxHEIGHT]")
    main(*sys.argv[1:])
