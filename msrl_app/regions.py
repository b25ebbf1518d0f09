"""Drawing regions of interest on the slide viewer, importing QuPath annotations, exporting QuPath GeoJSON.

:class:`RegionTools` adds to the main window a "Regions" toolbar (Pan · Polygon · Brush, Include ·
Exclude, the brush size, Clear), File ▸ Import regions (QuPath GeoJSON)… and File ▸ Export QuPath
GeoJSON…, and draws on the viewer through an event filter — the viewer's own navigation stays as it
is: the wheel zooms with every tool, and with Pan a right click on a region offers Include / Exclude /
Delete.

* **Polygon**: click the corners; double-click or Enter closes the outline (at least 3 corners);
  right click or Backspace removes the last corner, Escape drops the outline.
* **Brush**: drag to paint a band of the brush's diameter (screen pixels at the current zoom).

The regions live in the Qt-free :class:`msrl_app.region_store.RegionStore` (``state.regions``: saved
per slide, used by Analyze); :class:`RegionOverlay`, a child widget of the viewer that lets the mouse
through, paints them above the tiles and heat-map (include: green outline and tint; exclude: red,
dashed and hatched).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, QPointF, Qt
from PySide6.QtGui import (QAction, QActionGroup, QBrush, QColor, QKeyEvent, QMouseEvent, QPainter, QPainterPath, QPen,
                           QTransform)
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QLabel, QMenu, QSpinBox,
                               QToolBar, QWidget)

from msrl_model.slide.regions import EXCLUDE, INCLUDE, SKIP, RegionSet, brush_geometry, default_mode, polygon_geometry

if TYPE_CHECKING:
    from msrl_app.viewer import SlideViewer
    from msrl_app.window import MainWindow

log = logging.getLogger(__name__)

__all__ = ["ClassModesDialog", "RegionOverlay", "RegionTools"]

TOOLS = ("pan", "polygon", "brush")
COLORS = {INCLUDE: QColor(40, 200, 110), EXCLUDE: QColor(230, 60, 60)}
GEOJSON_FILTER = "QuPath GeoJSON (*.geojson *.json)"


def _path(geometry) -> QPainterPath:
    """A shapely Polygon/MultiPolygon as a QPainterPath in level-0 coordinates (holes by the odd-even rule)."""
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.OddEvenFill)
    for poly in getattr(geometry, "geoms", [geometry]):
        for ring in [poly.exterior, *poly.interiors]:
            pts = list(ring.coords)
            path.moveTo(*pts[0])
            for x, y in pts[1:]:
                path.lineTo(x, y)
            path.closeSubpath()
    return path


class RegionOverlay(QWidget):
    """Paints the regions and the outline being drawn over the viewer (a transparent child widget)."""

    def __init__(self, viewer: SlideViewer) -> None:
        super().__init__(viewer)
        self.viewer = viewer
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.paths: list[tuple[str, QPainterPath]] = []  # (mode, level-0 path) per region
        self.draft: list[QPointF] = []  # level-0 points of the outline or stroke being drawn
        self.draft_mode = INCLUDE
        self.draft_brush = 0.0  # brush radius in level-0 px (0: a polygon outline)
        self.cursor: QPointF | None = None  # level-0 point under the mouse while drawing a polygon
        viewer.viewChanged.connect(self.update)
        self.resize(viewer.size())

    def set_regions(self, regions: RegionSet) -> None:
        self.paths = [(r.mode, _path(r.geometry)) for r in regions.regions]
        self.update()

    def _transform(self) -> QTransform:
        origin = self.viewer.map_from_level0(QPointF(0, 0))
        s = self.viewer.scale
        return QTransform(s, 0, 0, s, origin.x(), origin.y())

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.viewer.slide is None or not (self.paths or self.draft):
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setTransform(self._transform())
        for mode, path in self.paths:
            color = COLORS[mode]
            pen = QPen(color, 2.0)
            pen.setCosmetic(True)
            if mode == EXCLUDE:
                pen.setStyle(Qt.PenStyle.DashLine)
            fill = QColor(color)
            fill.setAlpha(45 if mode == INCLUDE else 70)
            brush = QBrush(fill, Qt.BrushStyle.SolidPattern if mode == INCLUDE else Qt.BrushStyle.BDiagPattern)
            brush.setTransform(QTransform().scale(1 / self.viewer.scale, 1 / self.viewer.scale))  # hatch in screen px
            painter.setPen(pen)
            painter.setBrush(brush)
            painter.drawPath(path)
        self._paint_draft(painter)

    def _paint_draft(self, painter: QPainter) -> None:
        if not self.draft:
            return
        color = QColor(COLORS[self.draft_mode])
        points = [*self.draft, *([self.cursor] if self.cursor is not None and not self.draft_brush else [])]
        if self.draft_brush:  # the band the brush paints: a stroke of the brush's diameter in level-0 px
            color.setAlpha(110)
            pen = QPen(color, 2 * self.draft_brush, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                       Qt.PenJoinStyle.RoundJoin)
        else:
            pen = QPen(color, 2.0, Qt.PenStyle.DashLine)
            pen.setCosmetic(True)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        if len(points) == 1:
            painter.drawPoint(points[0])
        else:
            painter.drawPolyline(points)


class ClassModesDialog(QDialog):
    """Asks, before an import, whether each classification of the file is included, excluded or skipped."""

    CHOICES = ((INCLUDE, "Include (analyse inside)"), (EXCLUDE, "Exclude (leave out)"), (SKIP, "Skip"))

    def __init__(self, counts: dict[str, int], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Import regions")
        form = QFormLayout(self)
        form.addRow(QLabel("How should each QuPath class be used?"))
        self.combos: dict[str, QComboBox] = {}
        for name, n in sorted(counts.items()):
            combo = QComboBox()
            for mode, text in self.CHOICES:
                combo.addItem(text, mode)
            combo.setCurrentIndex([m for m, _ in self.CHOICES].index(default_mode(name or None)))
            form.addRow(f"{name or 'No class'} ({n} annotation{'s' if n != 1 else ''})", combo)
            self.combos[name] = combo
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def modes(self) -> dict[str, str]:
        return {name: str(combo.currentData()) for name, combo in self.combos.items()}


class RegionTools(QObject):
    """The region toolbar, menu entries and drawing on ``window.viewer`` (see the module docstring)."""

    BRUSH_PX = 24  # default brush radius in screen pixels

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.viewer = window.viewer
        self.store = window.state.regions
        self.tool = "pan"
        self.mode = INCLUDE
        self.overlay = RegionOverlay(self.viewer)
        self.store.changed.connect(self._on_regions)
        window.state.events.result.connect(lambda _: self._on_regions(self.store.regions))
        self.viewer.installEventFilter(self)
        self._build_toolbar()
        self._build_menu()
        self._on_regions(self.store.regions)

    # -- widgets ------------------------------------------------------------------------------------
    def _build_toolbar(self) -> None:
        w = self.window
        bar = self.toolbar = QToolBar("Regions", w)
        bar.setObjectName("regions_toolbar")
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        bar.addWidget(QLabel(" Regions "))
        tools = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for name, text, key, tip in (("pan", "Pan", "H", "Move around the slide (right click on a region: "
                                      "include / exclude / delete)"),
                                     ("polygon", "Polygon", "P", "Click the corners; double-click or Enter closes"),
                                     ("brush", "Brush", "B", "Drag to paint a region")):
            act = self._checkable(bar, tools, text, f"{tip} ({key})", lambda _=False, n=name: self.set_tool(n))
            act.setShortcut(key)
            self.tool_actions[name] = act
        self.tool_actions["pan"].setChecked(True)
        bar.addSeparator()
        modes = QActionGroup(self)
        self.mode_actions = {
            INCLUDE: self._checkable(bar, modes, "Include", "New regions are analysed (only the patches inside "
                                     "include regions are used)", lambda _=False: self.set_mode(INCLUDE)),
            EXCLUDE: self._checkable(bar, modes, "Exclude", "New regions are left out of the analysis (pen marks, "
                                     "folds, normal tissue)", lambda _=False: self.set_mode(EXCLUDE))}
        self.mode_actions[INCLUDE].setChecked(True)
        bar.addSeparator()
        bar.addWidget(QLabel(" Brush "))
        self.brush_spin = QSpinBox()
        self.brush_spin.setRange(2, 200)
        self.brush_spin.setValue(self.BRUSH_PX)
        self.brush_spin.setSuffix(" px")
        self.brush_spin.setToolTip("Brush radius in screen pixels at the current zoom")
        bar.addWidget(self.brush_spin)
        self.clear_action = bar.addAction("Clear regions", self.store.clear)
        self.clear_action.setToolTip("Remove every region of this slide (Analyze then uses all its tissue)")
        self.summary_label = QLabel()
        self.summary_label.setStyleSheet("padding-left: 8px;")
        bar.addWidget(self.summary_label)
        w.addToolBarBreak(Qt.ToolBarArea.TopToolBarArea)
        w.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)

    def _checkable(self, bar: QToolBar, group: QActionGroup, text: str, tip: str, slot) -> QAction:
        act = QAction(text, self.window)
        act.setCheckable(True)
        act.setToolTip(tip)
        act.triggered.connect(slot)
        group.addAction(act)
        bar.addAction(act)
        return act

    def _build_menu(self) -> None:
        w = self.window
        self.import_action = QAction("Import regions (QuPath GeoJSON)…", w)
        self.import_action.setToolTip("Annotations exported from QuPath become include / exclude regions")
        self.import_action.triggered.connect(self.choose_import)
        self.export_action = QAction("Export QuPath GeoJSON…", w)
        self.export_action.setToolTip("The analysed patches (attention per task), the tissue and the regions, "
                                      "for File ▸ Import objects in QuPath")
        self.export_action.triggered.connect(self.choose_export)
        file_menu = w.quit_action.associatedObjects()[0] if w.quit_action.associatedObjects() else None
        if isinstance(file_menu, QMenu):
            file_menu.insertAction(w.quit_action, self.import_action)
            file_menu.insertAction(w.quit_action, self.export_action)
            file_menu.insertSeparator(w.quit_action)

    def _on_regions(self, regions: RegionSet) -> None:
        self.overlay.set_regions(regions)
        self.summary_label.setText(self.summary(regions, self.window.state.result))
        self.clear_action.setEnabled(bool(regions))

    @staticmethod
    def summary(regions: RegionSet, result) -> str:
        """The toolbar's line: the regions, and what the shown result analysed when it used these regions."""
        if not regions:
            return "none — Analyze uses all the tissue"
        text = f"{len(regions.of_mode(INCLUDE))} include, {len(regions.of_mode(EXCLUDE))} exclude"
        chosen = getattr(result, "regions", None) or {}
        if chosen.get("sha256") == regions.fingerprint():
            return f"{text} — {chosen['patches_selected']:,} of {chosen['patches_on_tissue']:,} tissue patches analysed"
        return f"{text} — Analyze uses the patches inside"

    # -- tools --------------------------------------------------------------------------------------
    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown region tool {tool!r}; use one of {TOOLS}")
        self.tool = tool
        self.tool_actions[tool].setChecked(True)
        self._drop_draft()
        if tool == "pan":
            self.viewer.unsetCursor()
        else:
            self.viewer.setCursor(Qt.CursorShape.CrossCursor)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.mode_actions[mode].setChecked(True)
        self.overlay.draft_mode = mode
        self.overlay.update()

    def _drop_draft(self) -> None:
        self.overlay.draft, self.overlay.cursor, self.overlay.draft_brush = [], None, 0.0
        self.overlay.update()

    def finish_polygon(self) -> bool:
        """Close the outline being drawn into a region (False when it has fewer than 3 corners)."""
        points = [(p.x(), p.y()) for p in self.overlay.draft]
        self._drop_draft()
        return self.store.add(polygon_geometry(points), self.mode)

    def _finish_stroke(self) -> bool:
        points = [(p.x(), p.y()) for p in self.overlay.draft]
        radius = self.overlay.draft_brush
        self._drop_draft()
        return self.store.add(brush_geometry(points, radius), self.mode)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if obj is self.viewer and event.type() == QEvent.Type.Resize:
            self.overlay.resize(self.viewer.size())
            return False
        if obj is not self.viewer or self.viewer.slide is None:
            return False
        if isinstance(event, QMouseEvent):
            return self._mouse(event)
        if isinstance(event, QKeyEvent) and event.type() == QEvent.Type.KeyPress and self.tool == "polygon":
            return self._polygon_key(event.key())
        return False

    def _mouse(self, event: QMouseEvent) -> bool:
        kind, button = event.type(), event.button()
        point = self.viewer.map_to_level0(event.position())
        if self.tool == "pan":
            if kind == QEvent.Type.MouseButtonPress and button == Qt.MouseButton.RightButton:
                return self._context_menu(point, event.globalPosition().toPoint())
            return False
        draft = self.overlay.draft
        if self.tool == "brush":
            if kind == QEvent.Type.MouseButtonPress and button == Qt.MouseButton.LeftButton:
                self.overlay.draft, self.overlay.draft_brush = [point], self.brush_spin.value() / self.viewer.scale
            elif kind == QEvent.Type.MouseMove and draft and event.buttons() & Qt.MouseButton.LeftButton:
                draft.append(point)
            elif kind == QEvent.Type.MouseButtonRelease and button == Qt.MouseButton.LeftButton and draft:
                self._finish_stroke()
            else:
                return kind in (QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonDblClick)
            self.overlay.update()
            return True
        # polygon
        if kind == QEvent.Type.MouseButtonPress and button == Qt.MouseButton.LeftButton:
            draft.append(point)
        elif kind == QEvent.Type.MouseButtonPress and button == Qt.MouseButton.RightButton:
            draft[-1:] = []
        elif kind == QEvent.Type.MouseButtonDblClick and button == Qt.MouseButton.LeftButton:
            self.finish_polygon()
        elif kind == QEvent.Type.MouseMove:
            self.overlay.cursor = point if draft else None
            self.overlay.update()
            return False  # the viewer still reports the position under the cursor
        else:
            return kind == QEvent.Type.MouseButtonRelease
        self.overlay.update()
        return True

    def _polygon_key(self, key: int) -> bool:
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.finish_polygon()
        elif key == Qt.Key.Key_Backspace:
            self.overlay.draft[-1:] = []
            self.overlay.update()
        elif key == Qt.Key.Key_Escape and self.overlay.draft:
            self._drop_draft()
        else:
            return False
        return True

    def _context_menu(self, point: QPointF, at) -> bool:
        index = self.store.index_at(point.x(), point.y())
        if index is None:
            return False
        region = self.store.regions.regions[index]
        menu = QMenu(self.viewer)
        menu.addSection(region.name or f"Region {index + 1}")
        for mode, text in ((INCLUDE, "Include"), (EXCLUDE, "Exclude")):
            act = menu.addAction(text, lambda m=mode: self.store.set_mode(index, m))
            act.setCheckable(True)
            act.setChecked(region.mode == mode)
        menu.addAction("Delete", lambda: self.store.remove(index))
        menu.popup(at)
        return True

    # -- files --------------------------------------------------------------------------------------
    def _start_dir(self) -> str:
        return str(self.window.settings.value("paths/export_dir", str(Path.home())))

    def choose_import(self) -> None:
        from msrl_model.slide.regions import classifications

        if self.window.state.slide is None:
            self.window.statusBar().showMessage("Open a slide first: regions belong to a slide", 8000)
            return
        path, _ = QFileDialog.getOpenFileName(self.window, "Import regions", self._start_dir(), GEOJSON_FILTER)
        if not path:
            return
        try:
            counts = classifications(path)
        except Exception as exc:  # noqa: BLE001 - a dialog, never a crash
            self.window.state.report_error(f"Cannot import {Path(path).name}", exc)
            return
        dialog = ClassModesDialog(counts, self.window)
        if counts and dialog.exec() != QDialog.DialogCode.Accepted:
            return
        self.import_file(path, dialog.modes())

    def import_file(self, path: str | Path, modes: dict[str, str] | None = None) -> RegionSet | None:
        """Import a QuPath GeoJSON file as regions of the open slide; None (and an error) when it cannot."""
        state = self.window.state
        try:
            imported = self.store.import_file(path, modes)
        except Exception as exc:  # noqa: BLE001
            state.report_error(f"Cannot import {Path(path).name}", exc,
                               "Export the annotations from QuPath with File ▸ Export objects as GeoJSON.")
            return None
        notes = f" ({'; '.join(imported.notes)})" if imported.notes else ""
        state.message(f"Imported {len(imported)} region{'s' if len(imported) != 1 else ''} from "
                      f"{Path(path).name}{notes}", 10000)
        log.info("regions imported from %s: %d%s", path, len(imported), notes)
        return imported

    def choose_export(self) -> None:
        state = self.window.state
        stem = state.result.slide_id if state.result is not None else "slide"
        path, _ = QFileDialog.getSaveFileName(self.window, "Export QuPath GeoJSON",
                                              str(Path(self._start_dir()) / f"{stem}.geojson"), GEOJSON_FILTER)
        if path:
            self.export(path)

    def export(self, path: str | Path) -> bool:
        """Write the shown result, the tissue outline the viewer shows and the regions as QuPath GeoJSON."""
        from msrl_model.slide.regions import mask_geometry

        tissue, slide = self.viewer.tissue_mask(), self.viewer.slide
        outline = mask_geometry(*tissue, slide.dimensions) if tissue is not None and slide is not None else None
        return self.window.state.export_qupath(path, outline)
