"""Mouse and keyboard navigation of the slide viewer: wheel zoom at the cursor, drag to pan,
double-click to zoom in, + / − / arrows / F (fit) / 1 (1:1).

A mixin of :class:`msrl_app.viewer.SlideViewer` (listed before ``QWidget`` in its bases), which
provides the view it drives: ``slide``, ``zoom_by``, ``pan_by``, ``fit``, ``one_to_one``,
``map_to_level0``, ``_set_center``, ``_center``, ``_scale``, ``_anim``, ``_drag_origin``,
``_drag_center`` and the ``cursorMoved`` signal.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QKeyEvent, QMouseEvent, QWheelEvent


class NavigationMixin:
    """Input handlers of the viewer; each falls through to ``QWidget``'s when it does nothing."""

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0  # one notch = 1
        if steps:
            self.zoom_by(1.25 ** steps, event.position(), animate=True)
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton and self.slide is not None:
            self._anim.stop()
            self._drag_origin = event.position()
            self._drag_center = QPointF(self._center)
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self.slide is None:
            return
        if self._drag_origin is not None:
            self._set_center(self._drag_center - (event.position() - self._drag_origin) / self._scale)
        p = self.map_to_level0(event.position())
        self.cursorMoved.emit(p.x(), p.y())

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self._drag_origin = None
            self.unsetCursor()
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self.zoom_by(2.0, event.position(), animate=True)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        key = event.key()
        step = 0.15 * min(self.width(), self.height())
        actions = {
            Qt.Key.Key_Plus: lambda: self.zoom_by(1.5, animate=True),
            Qt.Key.Key_Equal: lambda: self.zoom_by(1.5, animate=True),
            Qt.Key.Key_Minus: lambda: self.zoom_by(1 / 1.5, animate=True),
            Qt.Key.Key_Left: lambda: self.pan_by(step, 0),
            Qt.Key.Key_Right: lambda: self.pan_by(-step, 0),
            Qt.Key.Key_Up: lambda: self.pan_by(0, step),
            Qt.Key.Key_Down: lambda: self.pan_by(0, -step),
            Qt.Key.Key_F: self.fit,
            Qt.Key.Key_1: self.one_to_one,
        }
        if key in actions and self.slide is not None:
            actions[key]()
            event.accept()
        else:
            super().keyPressEvent(event)
