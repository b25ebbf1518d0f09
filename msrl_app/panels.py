"""Side panels: slide properties and overlay controls."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from PySide6.QtCore import QModelIndex, QRect, QSize, Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QCheckBox, QComboBox, QGridLayout, QHeaderView, QLabel, QSlider,
                               QStyledItemDelegate, QStyleOptionViewItem, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from msrl_app.overlays import COLORMAPS
from msrl_app.overview import ColorLegend
from msrl_app.viewer import SlideViewer

if TYPE_CHECKING:
    from msrl_model.slide import Slide

MPP_SOURCE_TEXT = {  # shown after the value; the tooltip says more
    "metadata": "metadata",
    "objective-power": "from objective power",
    "assumed": "assumed",
}
MPP_SOURCE_TIP = {
    "metadata": "Read from the file's metadata",
    "objective-power": "Not in the metadata: derived from the objective power (10 / magnification)",
    "assumed": "Neither microns per pixel nor objective power in the file: a value was assumed",
}


ZWSP = "\u200b"  # zero-width space: a line may break there


def breakable(text: str) -> str:
    """``text`` with a zero-width space after each separator (``/ \\ . _ -``) of its long unspaced runs
    (a folder, a property key), where the tree's word wrap could not otherwise break them."""
    return re.sub(r"\S{16,}", lambda run: re.sub(r"([/\\._-])", "\\1" + ZWSP, run.group()), text)


def slide_summary(slide: Slide) -> list[tuple[str, list[tuple[str, str]]]]:
    """The properties shown for a slide, as (section, [(name, value)]) in display order."""
    w0, h0 = slide.dimensions
    mpp_text = f"{slide.mpp:.4g} µm/px · {MPP_SOURCE_TEXT.get(slide.mpp_source, slide.mpp_source)}"
    size_mm = f"{w0 * slide.mpp / 1000:.2f} × {h0 * slide.mpp / 1000:.2f} mm"
    power = f"{slide.objective_power:g}×" if slide.objective_power is not None else "not recorded"
    try:
        size_mb = f"{slide.size_bytes() / 2**20:,.1f} MiB"  # a DICOM series: all its files
    except OSError:
        size_mb = "?"
    sections = [
        ("Slide", [("File", slide.path.name), ("Folder", str(slide.path.parent)), ("File size", size_mb),
                   ("Vendor", slide.vendor or "unknown"), ("Backend", slide.backend)]),
        ("Resolution", [("Dimensions", f"{w0:,} × {h0:,} px"), ("Physical size", size_mm),
                        ("Microns per pixel", mpp_text), ("Objective power", power)]),
        ("Pyramid", [(f"Level {i}", f"{w:,} × {h:,} px · ÷{ds:.4g}")
                     for i, ((w, h), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples))]),
    ]
    if slide.associated_image_names:
        sections[0][1].append(("Associated images", ", ".join(slide.associated_image_names)))
    if slide.warnings:
        sections.append(("Warnings", [(f"{i + 1}", w) for i, w in enumerate(slide.warnings)]))
    return sections


def report_facts(slide: Slide) -> list[tuple[str, str]]:
    """A few facts about a slide for the PDF report."""
    rows = dict(row for _, section in slide_summary(slide) for row in section)
    return [(k, rows[k]) for k in ("File", "Vendor", "Dimensions", "Physical size", "Microns per pixel",
                                   "Objective power") if k in rows]


class _WrappingDelegate(QStyledItemDelegate):
    """Row heights for wrapped text: the tree asks its delegate for a row's height without the column's
    width (Qt's shortcut), so the text would never wrap; this gives the width."""

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802
        tree = self.parent()
        width = tree.columnWidth(index.column())
        if index.column() == 0:  # less the indentation of the item's depth (the root decorated)
            depth, parent = 1, index.parent()
            while parent.isValid():
                depth, parent = depth + 1, parent.parent()
            width -= depth * tree.indentation()
        sized = QStyleOptionViewItem(option)
        sized.rect = QRect(0, 0, max(1, width), option.fontMetrics.height())
        return super().sizeHint(sized, index)


class SlidePropertiesPanel(QTreeWidget):
    """Two-column tree of the open slide's metadata; all raw properties in a collapsed section. In a narrow
    column the names take at most ``NAME_SHARE`` of the width and long names and values wrap (never cut)."""

    NAME_SHARE = 0.5

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setColumnCount(2)
        self.setHeaderLabels(["Property", "Value"])
        self.setRootIsDecorated(True)
        self.setIndentation(12)  # room for the names in a narrow column
        self.setAlternatingRowColors(True)
        self.setUniformRowHeights(False)
        self.setWordWrap(True)
        self.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.setItemDelegate(_WrappingDelegate(self))
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.header().setStretchLastSection(True)
        self.set_slide(None)

    def fit_columns(self) -> None:
        """The names as wide as they need up to ``NAME_SHARE`` of the width; rows re-wrapped to the widths."""
        self.setColumnWidth(0, min(self.sizeHintForColumn(0), round(self.NAME_SHARE * self.viewport().width())))
        self.scheduleDelayedItemsLayout()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.fit_columns()

    def set_slide(self, slide: Slide | None) -> None:
        self.clear()
        if slide is None:
            QTreeWidgetItem(self, ["No slide open", ""])
            return
        for section, rows in slide_summary(slide):
            top = QTreeWidgetItem(self, [section, ""])
            font = top.font(0)
            font.setBold(True)
            top.setFont(0, font)
            for name, value in rows:
                item = QTreeWidgetItem(top, [name, breakable(value)])
                item.setToolTip(1, MPP_SOURCE_TIP.get(slide.mpp_source, value)
                                if name == "Microns per pixel" else value)
                if section == "Warnings" or (name == "Microns per pixel" and slide.mpp_source != "metadata"):
                    item.setForeground(1, QBrush(QColor("#e0a030")))
            top.setExpanded(True)
        raw = QTreeWidgetItem(self, [f"All properties ({len(slide.properties)})", ""])
        for key in sorted(slide.properties):
            item = QTreeWidgetItem(raw, [breakable(key), breakable(slide.properties[key])])
            item.setToolTip(1, slide.properties[key])
        self.fit_columns()

    def value(self, section: str, name: str) -> str | None:
        """The displayed value of a row (tests and copy actions)."""
        for i in range(self.topLevelItemCount()):
            top = self.topLevelItem(i)
            if top.text(0) == section:
                for j in range(top.childCount()):
                    if top.child(j).text(0).replace(ZWSP, "") == name:
                        return top.child(j).text(1).replace(ZWSP, "")
        return None


class OverlayPanel(QWidget):
    """A visibility check box and an opacity slider per overlay, and the heat-map legend."""

    TITLES = {"tissue": "Tissue mask", "patches": "Analysed patches", "heatmap": "Attention heat-map"}
    UNAVAILABLE = {"tissue": "Tissue detection has not finished (or found nothing) for this slide",
                   "patches": "Shown after the slide has been analysed",
                   "heatmap": "Shown after the slide has been analysed"}

    def __init__(self, viewer: SlideViewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.checks: dict[str, QCheckBox] = {}
        self.sliders: dict[str, QSlider] = {}
        grid = QGridLayout()
        grid.setColumnStretch(1, 1)
        for row, name in enumerate(self.TITLES):
            check = QCheckBox(self.TITLES[name])
            check.toggled.connect(lambda on, n=name: viewer.set_overlay_visible(n, on))
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(0, 100)
            slider.setToolTip("Opacity")
            slider.setMaximumWidth(110)
            slider.valueChanged.connect(lambda v, n=name: viewer.set_overlay_opacity(n, v / 100))
            grid.addWidget(check, row, 0, 1, 2)
            grid.addWidget(slider, row, 2)
            self.checks[name], self.sliders[name] = check, slider
        self.legend = ColorLegend()
        self.colormap_combo = QComboBox()  # the heat-map's colour map
        for name, title in COLORMAPS.items():  # the name in the box (a narrow column), the rest in its tooltip
            self.colormap_combo.addItem(title.split(" (")[0], name)
            self.colormap_combo.setItemData(self.colormap_combo.count() - 1, title, Qt.ItemDataRole.ToolTipRole)
        self.colormap_combo.setToolTip("Colour map of the heat-map (the first three are perceptually uniform; "
                                       "Turbo is a rainbow)")
        self.colormap_combo.currentIndexChanged.connect(
            lambda _: self.viewer.set_heatmap_colormap(self.colormap_combo.currentData()))
        self.smooth_check = QCheckBox("Smooth heat-map")
        self.smooth_check.setToolTip("Interpolate the heat-map between patch centres instead of one square per "
                                     "patch (hovering still names the patch and its value)")
        self.smooth_check.toggled.connect(viewer.set_heatmap_smooth)
        self.tissue_label = QLabel()
        self.tissue_label.setStyleSheet("color: #9aa0a8;")
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.tissue_label)
        layout.addWidget(self.legend)
        layout.addWidget(self.colormap_combo)
        layout.addWidget(self.smooth_check)
        layout.addStretch(1)
        viewer.overlaysChanged.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        for name in self.TITLES:
            available = self.viewer.overlay_available(name)
            check, slider = self.checks[name], self.sliders[name]
            for widget, value in ((check, self.viewer.overlay_visible(name)),
                                  (slider, round(100 * self.viewer.overlay_opacity(name)))):
                widget.blockSignals(True)
                widget.setChecked(value) if widget is check else widget.setValue(value)
                widget.blockSignals(False)
            check.setEnabled(available)
            slider.setEnabled(available)
            check.setToolTip("" if available else self.UNAVAILABLE[name])
        fraction = self.viewer.tissue_fraction()
        self.tissue_label.setText("" if fraction is None else f"Tissue: {100 * fraction:.1f} % of the slide area")
        legend = self.viewer.heatmap_legend()
        self.legend.setVisible(legend is not None)
        if legend is not None:
            self.legend.set_legend(legend)
            self.colormap_combo.blockSignals(True)
            self.colormap_combo.setCurrentIndex(max(0, self.colormap_combo.findData(legend.colormap)))
            self.colormap_combo.blockSignals(False)
            self.smooth_check.blockSignals(True)
            self.smooth_check.setChecked(self.viewer.heatmap_smooth())
            self.smooth_check.blockSignals(False)
        self.colormap_combo.setVisible(legend is not None)
        self.smooth_check.setVisible(legend is not None)
