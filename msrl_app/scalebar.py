"""The viewer's scale bar and magnification read-out: round lengths, wording, and the HUD plate."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter

NICE_LENGTHS_UM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def nice_scale_length(um_per_px: float, max_px: float = 140.0) -> tuple[float, float]:
    """The longest round length (µm) whose bar fits in ``max_px`` screen pixels, and its length in px.

    Falls back to the shortest round length when even that is longer than ``max_px``.
    """
    best = NICE_LENGTHS_UM[0]
    for length in NICE_LENGTHS_UM:
        if length / um_per_px <= max_px:
            best = length
    return float(best), best / um_per_px


def format_length(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def magnification(mpp: float, scale: float) -> float:
    """Equivalent objective magnification on screen: 10 / (µm per screen pixel)."""
    return 10.0 * scale / mpp


def position_text(dimensions: tuple[int, int], mpp: float, x: float, y: float, patch: Any = None) -> str:
    """The status-bar readout of the level-0 point (x, y): millimetres and pixels, and the heat-map
    patch under it (a :class:`msrl_app.overlays.PatchValue`: its attention and rank); '' off the slide."""
    w0, h0 = dimensions
    if not (0 <= x < w0 and 0 <= y < h0):
        return ""
    value = (f" · patch {patch.index}: attention {patch.value:.3g}, higher than {patch.percentile:.0f}% of this "
             "slide's patches" if patch is not None else "")
    return f"x {x * mpp / 1000:.3f} mm, y {y * mpp / 1000:.3f} mm ({int(x):,}, {int(y):,} px){value}"


def format_magnification(mag: float) -> str:
    return f"{mag:.0f}×" if mag >= 100 else f"{mag:.1f}×"


def paint_hud(painter: QPainter, base_font: QFont, height: float, mpp: float, scale: float) -> None:
    """Magnification and scale bar, bottom left of a widget ``height`` px high, on a translucent
    plate (``mpp``: the slide's µm per level-0 px; ``scale``: screen px per level-0 px)."""
    um_per_px = mpp / scale
    length_um, length_px = nice_scale_length(um_per_px)
    mag = format_magnification(magnification(mpp, scale))
    label = format_length(length_um)
    painter.setOpacity(1.0)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    font = QFont(base_font)
    font.setBold(True)
    painter.setFont(font)
    metrics = painter.fontMetrics()
    pad, gap = 8, 12
    mag_w = metrics.horizontalAdvance(mag)
    label_w = metrics.horizontalAdvance(label)
    width = pad + mag_w + gap + max(length_px, label_w) + pad
    plate_h = metrics.height() + 18
    plate = QRectF(12, height - 12 - plate_h, width, plate_h)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(20, 22, 26, 190))
    painter.drawRoundedRect(plate, 5, 5)
    painter.setPen(QColor("#f0f0f0"))
    text_y = plate.top() + 4
    painter.drawText(QRectF(plate.left() + pad, text_y, mag_w, metrics.height()),
                     Qt.AlignmentFlag.AlignLeft, mag)
    bar_x = plate.left() + pad + mag_w + gap
    painter.drawText(QRectF(bar_x, text_y - 2, max(length_px, label_w), metrics.height()),
                     Qt.AlignmentFlag.AlignHCenter, label)
    bar_y = plate.bottom() - 6
    painter.fillRect(QRectF(bar_x, bar_y - 3, length_px, 3), QColor("#f0f0f0"))
    painter.fillRect(QRectF(bar_x, bar_y - 7, 1.5, 7), QColor("#f0f0f0"))
    painter.fillRect(QRectF(bar_x + length_px - 1.5, bar_y - 7, 1.5, 7), QColor("#f0f0f0"))
