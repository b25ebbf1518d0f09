"""Small views around the slide viewer: the overview (whole-slide thumbnail with the viewport
rectangle) and the heat-map's colour legend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QPointF, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QImage, QLinearGradient, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from msrl_app.overlays import DEFAULT_COLORMAP, HeatmapLegend, colormap_lut

if TYPE_CHECKING:
    from msrl_app.viewer import SlideViewer

BACKGROUND = QColor("#1b1d21")  # behind slides, in the viewer and the overview


class OverviewWidget(QWidget):
    """The whole-slide thumbnail with the viewport rectangle; click or drag to move the view."""

    def __init__(self, viewer: SlideViewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._image: QImage | None = None
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")
        viewer.thumbnailReady.connect(self._on_thumbnail)
        viewer.slideChanged.connect(self._on_slide_changed)
        viewer.viewChanged.connect(self.update)

    def _on_thumbnail(self, image: QImage) -> None:
        self._image = image
        self.updateGeometry()
        self.update()

    def _on_slide_changed(self) -> None:
        self._image = self.viewer.thumbnail()
        self.update()

    def hasHeightForWidth(self) -> bool:  # noqa: N802
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802
        slide = self.viewer.slide
        if slide is None:
            return 160
        w0, h0 = slide.dimensions
        return max(100, min(360, round(width * h0 / w0)))

    def image_rect(self) -> QRectF:
        """Where the slide is drawn in this widget."""
        slide = self.viewer.slide
        if slide is None:
            return QRectF()
        w0, h0 = slide.dimensions
        s = min((self.width() - 8) / w0, (self.height() - 8) / h0)
        w, h = w0 * s, h0 * s
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        slide = self.viewer.slide
        if slide is None:
            return
        target = self.image_rect()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        if self._image is not None:
            painter.drawImage(target, self._image)
        else:
            painter.fillRect(target, QColor("white"))
        s = target.width() / slide.dimensions[0]
        view = self.viewer.view_rect_level0().intersected(self.viewer.slide_rect())
        box = QRectF(target.left() + view.left() * s, target.top() + view.top() * s,
                     max(3.0, view.width() * s), max(3.0, view.height() * s))
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setPen(QPen(QColor(0, 0, 0, 120), 3))
        painter.drawRect(box)
        painter.setPen(QPen(QColor("#ffcc33"), 1.5))
        painter.drawRect(box)

    def _jump(self, pos: QPointF) -> None:
        slide = self.viewer.slide
        target = self.image_rect()
        if slide is None or target.isEmpty():
            return
        s = slide.dimensions[0] / target.width()
        self.viewer.set_center(QPointF((pos.x() - target.left()) * s, (pos.y() - target.top()) * s))

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self._jump(event.position())

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._jump(event.position())


class ColorLegend(QWidget):
    """Horizontal colour bar of the heat-map's colour map with its title and scale: by rank (the
    colours of a percentile heat-map, as in the PDF: lowest to highest of this slide's patches) or by
    value (min–max)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._title, self._lo, self._hi = "", "", ""
        self._colormap = DEFAULT_COLORMAP
        policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)  # the title wraps in a narrow column
        self.setSizePolicy(policy)

    def set_legend(self, legend: HeatmapLegend) -> None:
        self._colormap = legend.colormap
        if legend.normalization == "percentile":
            self._title = f"{legend.label}: rank among this slide's patches"
            self._lo, self._hi = "lowest", "highest"
        else:
            self._title = legend.label
            self._lo, self._hi = f"low ({legend.low:.3g})", f"high ({legend.high:.3g})"
        self.updateGeometry()
        self.update()

    def texts(self) -> tuple[str, str, str]:
        return self._title, self._lo, self._hi

    def _title_rect(self, width: int) -> QRect:
        """Where the title goes, wrapped to ``width``."""
        return self.fontMetrics().boundingRect(QRect(0, 0, max(1, width), 10_000), Qt.TextFlag.TextWordWrap,
                                               self._title)

    def hasHeightForWidth(self) -> bool:  # noqa: N802
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802
        """The wrapped title, the 12-pixel bar and the scale's line."""
        return max(48, self._title_rect(width).height() + 2 + 12 + 2 + self.fontMetrics().height() + 2)

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(200, self.heightForWidth(200))

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        """As high as the title wrapped to the current width needs: a short panel never cuts it."""
        return QSize(80, self.heightForWidth(self.width()))

    def resizeEvent(self, event) -> None:  # noqa: N802
        if self.heightForWidth(event.size().width()) != self.heightForWidth(event.oldSize().width()):
            self.updateGeometry()  # the title wraps onto another number of lines: a new minimum height
        super().resizeEvent(event)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        metrics = painter.fontMetrics()
        title = self._title_rect(self.width())
        bar = QRectF(2, title.height() + 2, self.width() - 4, 12)
        gradient = QLinearGradient(bar.topLeft(), bar.topRight())
        lut = colormap_lut(16, self._colormap)
        for i, (r, g, b) in enumerate(lut):
            gradient.setColorAt(i / (len(lut) - 1), QColor(int(r), int(g), int(b)))
        painter.fillRect(bar, gradient)
        painter.setPen(self.palette().windowText().color())
        painter.drawText(QRectF(0, 0, self.width(), title.height()),
                         Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap, self._title)
        below = QRectF(0, bar.bottom() + 2, self.width(), metrics.height())
        painter.drawText(below, Qt.AlignmentFlag.AlignLeft, self._lo)
        painter.drawText(below, Qt.AlignmentFlag.AlignRight, self._hi)
