"""The app's look: Fusion with a dark palette (viewer-centred tools read better dark), and the
window's size on a first start."""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QColor, QPalette, QScreen
from PySide6.QtWidgets import QApplication, QStyleFactory


def apply_theme(app: QApplication) -> None:
    """Fusion style with a dark palette (viewer-centred tools read better dark)."""
    app.setStyle(QStyleFactory.create("Fusion"))
    p = QPalette()
    base, window, text = QColor("#1f2125"), QColor("#2a2d32"), QColor("#e3e5e8")
    for role, color in [
        (QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, QColor("#262930")),
        (QPalette.ColorRole.ToolTipBase, QColor("#33373d")), (QPalette.ColorRole.ToolTipText, text),
        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.BrightText, QColor("#ff6b6b")),
        (QPalette.ColorRole.Highlight, QColor("#3d7fd9")), (QPalette.ColorRole.HighlightedText, QColor("white")),
        (QPalette.ColorRole.Link, QColor("#6aa6ff")), (QPalette.ColorRole.PlaceholderText, QColor("#8a8f98")),
    ]:
        p.setColor(role, color)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7079"))
    app.setPalette(p)


def first_size(screen: QScreen | None) -> QSize:
    """The window's size on a first start: 1400×900, or the screen's available area when smaller
    (a 1366×768 laptop: nothing beyond the screen's edge)."""
    if screen is None:
        return QSize(1400, 900)
    area = screen.availableGeometry()
    return QSize(min(1400, area.width()), min(900, area.height()))
