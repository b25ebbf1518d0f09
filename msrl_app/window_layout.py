"""How the main window shares its space: the slide viewer gets at least half of the width, the left
column (overview, overlays, slide properties) and the results column share the rest in proportion,
and the results can leave the window for a large window of their own (and come back).

The proportions apply on the window's first show (a saved window state of this layout replaces
them); after that the user's splitter positions stand. At 1366 px: left 219, results 437, viewer ~700 (≥ 683).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, QRect, Qt, QTimer
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence

from msrl_app.theme import first_size

if TYPE_CHECKING:
    from msrl_app.window import MainWindow


@dataclass(frozen=True)
class ColumnShares:
    """Width of the side columns as shares of the window's width, clamped to pixel bounds."""

    left: float = 0.16  # overview, overlays and slide properties
    left_px: tuple[int, int] = (200, 340)  # (min, max) width of the left column
    results: float = 0.32  # the results column
    results_px: tuple[int, int] = (400, 680)  # (min, max) width of the results column
    popped_out: float = 0.8  # the results' own window: this share of the screen's available area


SHARES = ColumnShares()
STATE_VERSION = 2  # of the saved dock layout (QMainWindow.saveState): a state saved by an older layout is ignored


def column_widths(window_width: int, shares: ColumnShares = SHARES) -> tuple[int, int]:
    """(left column, results column) widths in pixels for a window ``window_width`` wide; the viewer
    keeps the rest, at least half the window when the window is at least 1200 px wide."""
    left = min(max(round(shares.left * window_width), shares.left_px[0]), shares.left_px[1])
    results = min(max(round(shares.results * window_width), shares.results_px[0]), shares.results_px[1])
    return left, results


def arrange_columns(window: MainWindow) -> None:
    """Give the side columns their share of the window's current width (the viewer the rest)."""
    left, results = column_widths(window.width())
    window.resizeDocks([window.overview_dock, window.results_dock], [left, results], Qt.Orientation.Horizontal)


def popped_out_geometry(available: QRect, shares: ColumnShares = SHARES) -> QRect:
    """The results' own window: ``shares.popped_out`` of the screen's available area, centred."""
    width, height = round(available.width() * shares.popped_out), round(available.height() * shares.popped_out)
    return QRect(available.x() + (available.width() - width) // 2, available.y() + (available.height() - height) // 2,
                 width, height)


def set_results_popped_out(window: MainWindow, popped_out: bool) -> None:
    """Float the results dock as a large window of its own (``popped_out``) or dock it back in its column."""
    dock = window.results_dock
    if popped_out == dock.isFloating():
        return
    dock.show()
    dock.setFloating(popped_out)
    if popped_out:
        screen = window.screen() or QGuiApplication.primaryScreen()
        dock.setGeometry(popped_out_geometry(screen.availableGeometry()))
        dock.raise_()
        dock.activateWindow()
    else:
        dock.raise_()  # the current tab of its column again (it may share it with the worklist)
        QTimer.singleShot(0, lambda: arrange_columns(window))  # once the dock is back in its column


class _FirstShow(QObject):
    """Arranges the columns once, when the window is first shown at its real size, unless a saved
    window state already placed the docks; a first window as large as a small screen (a laptop's
    1366x768) is maximized, so that its title bar does not push the status bar below the screen."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if watched is self.window and event.type() == QEvent.Type.Show:
            self.window.removeEventFilter(self)
            if not getattr(self.window, "state_restored", False):
                arrange_columns(self.window)
                screen = self.window.screen() or QGuiApplication.primaryScreen()
                fitted = first_size(screen)
                if self.window.size() == fitted and fitted != first_size(None):
                    QTimer.singleShot(0, self.window.showMaximized)
        return False


def install(window: MainWindow) -> None:
    """View ▸ Panels ▸ Results in their own window (``window.pop_out_results_action``), the results
    panel's pop-out button, and the first-show column widths."""
    act = QAction("Results in their own &window", window)
    act.setCheckable(True)
    act.setShortcut(QKeySequence("Ctrl+Shift+D"))
    act.setStatusTip("Show the results in a large window of their own (again: back beside the slide)")
    act.toggled.connect(lambda on: set_results_popped_out(window, on))
    window.results_dock.topLevelChanged.connect(act.setChecked)
    window.results_dock.topLevelChanged.connect(window.results.set_popped_out)
    window.results.popOutRequested.connect(lambda: act.setChecked(not act.isChecked()))
    window.panels_menu.addSeparator()
    window.panels_menu.addAction(act)
    window.pop_out_results_action = act
    window.installEventFilter(_FirstShow(window))
