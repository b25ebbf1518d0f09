"""Take the README's screenshot of a slide with drawn regions of interest, analysed inside them.

Under Xvfb (see docs/screenshots.py): ``DISPLAY=:91 python docs/regions_screenshot.py SLIDE BUNDLE OUT.png
[WIDTHxHEIGHT]`` (default 1366x768). The regions are drawn with the mouse tools as a user would (a polygon
to include, a brush stroke to exclude; coordinates fit the CMU slide, 2220 x 2967 px), then Analyze runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).parent))
from screenshots import _settle, _shot, _wait, open_window  # noqa: E402 - the README screenshots' helpers

INCLUDE_OUTLINE = [(500, 300), (1900, 250), (2000, 1500), (1700, 2700), (700, 2800), (450, 1600)]
EXCLUDE_STROKE = [(900, 1200), (1100, 1350), (1300, 1450), (1500, 1500)]


def _mouse(viewer, kind: QEvent.Type, level0: tuple[float, float], pressed: bool = True) -> None:
    pos = viewer.map_from_level0(QPointF(*level0))
    buttons = Qt.MouseButton.LeftButton if pressed else Qt.MouseButton.NoButton
    QApplication.sendEvent(viewer, QMouseEvent(kind, pos, viewer.mapToGlobal(pos), Qt.MouseButton.LeftButton, buttons,
                                               Qt.KeyboardModifier.NoModifier))


def main(slide: str, bundle: str, out: str, size: str = "1366x768") -> None:
    app, window, _ = open_window(size, bundle)
    window.open_slide(slide)
    _wait(app, lambda: window.viewer.thumbnail() is not None and window.bundle_manifest is not None)
    _settle(app)
    tools, viewer = window.region_tools, window.viewer
    tools.set_tool("polygon")
    for corner in INCLUDE_OUTLINE:
        _mouse(viewer, QEvent.Type.MouseButtonPress, corner)
        _mouse(viewer, QEvent.Type.MouseButtonRelease, corner, pressed=False)
    _mouse(viewer, QEvent.Type.MouseButtonDblClick, INCLUDE_OUTLINE[-1])
    tools.set_mode("exclude")
    tools.set_tool("brush")
    tools.brush_spin.setValue(40)
    _mouse(viewer, QEvent.Type.MouseButtonPress, EXCLUDE_STROKE[0])
    for point in EXCLUDE_STROKE[1:]:
        _mouse(viewer, QEvent.Type.MouseMove, point)
    _mouse(viewer, QEvent.Type.MouseButtonRelease, EXCLUDE_STROKE[-1], pressed=False)
    tools.set_tool("pan")
    if window.analyze_and_wait() != "done":
        raise SystemExit(f"analysis failed: {window.last_error}")
    _settle(app, 3.0)
    _shot(window, Path(out))
    window.close()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit("usage: DISPLAY=:91 python docs/regions_screenshot.py SLIDE BUNDLE OUT.png [WIDTHxHEIGHT]")
    main(*sys.argv[1:])
