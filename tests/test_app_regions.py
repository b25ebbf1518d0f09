"""Regions in the window: drawing (polygon, brush) with the mouse, Analyze restricted to the regions on the real
CMU slide, regions saved and reloaded with the slide, and the QuPath round trip (import annotations ->
analyze -> export -> QuPath's rules)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication, QMenu
from shapely.geometry import Point

from msrl_model.slide.regions import EXCLUDE, INCLUDE, read_regions
from test_app_analyze import analyze, dialogs, load, tiny_bundle, window  # noqa: F401 - fixtures and helpers
from test_qupath_geojson import qupath_annotations, qupath_rule_violations

CMU_SIZE = (2220, 2967)


def send(viewer, kind: QEvent.Type, level0: tuple[float, float], button=Qt.MouseButton.LeftButton,
         buttons=Qt.MouseButton.LeftButton) -> None:
    """A mouse event at the widget position of the level-0 point."""
    pos = viewer.map_from_level0(QPointF(*level0))
    QApplication.sendEvent(viewer, QMouseEvent(kind, pos, viewer.mapToGlobal(pos), button, buttons,
                                               Qt.KeyboardModifier.NoModifier))


def test_polygon_and_brush_draw_regions(qtbot, window, cmu_slide):
    assert window.open_slide(cmu_slide)
    tools, viewer, store = window.region_tools, window.viewer, window.state.regions
    tools.set_tool("polygon")
    corners = [(300.0, 400.0), (1500.0, 400.0), (1500.0, 2000.0), (300.0, 2000.0)]
    for corner in corners:
        send(viewer, QEvent.Type.MouseButtonPress, corner)
        send(viewer, QEvent.Type.MouseButtonRelease, corner, buttons=Qt.MouseButton.NoButton)
    center_before = viewer.center
    send(viewer, QEvent.Type.MouseButtonDblClick, corners[-1])
    assert viewer.center == center_before  # the double-click closed the outline instead of zooming
    (region,) = store.regions.regions
    assert region.mode == INCLUDE and region.area == pytest.approx(1200 * 1600, rel=1e-3)
    # brush: an exclude stroke, its band as wide as the brush at this zoom
    tools.set_mode(EXCLUDE)
    tools.set_tool("brush")
    tools.brush_spin.setValue(10)
    stroke = [(600.0, 1000.0), (800.0, 1000.0), (1000.0, 1000.0)]
    send(viewer, QEvent.Type.MouseButtonPress, stroke[0])
    for p in stroke[1:]:
        send(viewer, QEvent.Type.MouseMove, p, button=Qt.MouseButton.NoButton)
    send(viewer, QEvent.Type.MouseButtonRelease, stroke[-1], buttons=Qt.MouseButton.NoButton)
    brush = store.regions.regions[1]
    radius = 10 / viewer.scale
    assert brush.mode == EXCLUDE and brush.area == pytest.approx(400 * 2 * radius + np.pi * radius ** 2, rel=0.02)
    assert tools.summary_label.text().startswith("1 include, 1 exclude")
    # the regions are saved for this slide and come back when it is opened again
    assert store.path is not None and store.path.is_file()
    window.close_slide()
    assert not store.regions
    assert window.open_slide(cmu_slide)
    assert [r.mode for r in store.regions.regions] == [INCLUDE, EXCLUDE]
    assert store.regions.fingerprint() == read_regions(store.path).fingerprint()


def test_regions_restrict_the_analysed_patches(qtbot, window, tiny_bundle, cmu_slide):
    load(qtbot, window, tiny_bundle, cmu_slide)
    assert analyze(qtbot, window) == "done", window.last_error
    every = np.asarray(window.result.coords)
    size = window.result.patch_size_level0
    assert window.state.regions.add(Point(1100, 1500).buffer(700), INCLUDE)
    assert window.state.regions.add(Point(1100, 1500).buffer(250), EXCLUDE)
    assert analyze(qtbot, window) == "done", window.last_error
    coords = np.asarray(window.result.coords)
    centres = np.hypot(every[:, 0] + size / 2 - 1100, every[:, 1] + size / 2 - 1500)
    ring = (centres <= 700 * np.cos(np.pi / 64)) & (centres > 250)  # inside the 64-gon, outside the exclude disc
    assert 0 < len(coords) < len(every)
    assert {tuple(c) for c in every[ring]} <= {tuple(c) for c in coords.tolist()}
    assert len(coords) == window.result.regions["patches_selected"] and window.result.regions["exclude"] == 1
    assert window.region_tools.summary_label.text() == (
        f"1 include, 1 exclude — {len(coords)} of {len(every)} tissue patches analysed")
    restricted = f"{len(coords)} of {len(every)} tissue patches (inside 1 include region, outside 1 exclude region)"
    assert restricted in window.results.meta_label.text()  # the results say the prediction read only those
    inside = window.state.regions.regions.select(every, size)
    np.testing.assert_array_equal(coords, every[inside])
    assert window.viewer.heatmap_value_at(*(coords[0] + size / 2)) is not None
    assert window.viewer.heatmap_value_at(1100, 1500) is None  # the heat-map has no patch in the excluded middle


def test_qupath_round_trip(qtbot, window, tiny_bundle, cmu_slide, tmp_path):
    load(qtbot, window, tiny_bundle, cmu_slide)
    annotations = tmp_path / "qupath-export.geojson"
    annotations.write_text(json.dumps(qupath_annotations(*CMU_SIZE)))
    imported = window.region_tools.import_file(annotations)
    assert imported is not None and len(imported) == 3 and "skipped 1 detection objects" in imported.notes
    assert analyze(qtbot, window) == "done", window.last_error
    qtbot.waitUntil(lambda: window.viewer.tissue_mask() is not None, timeout=30_000)
    out = tmp_path / "cmu.geojson"
    assert window.region_tools.export(out)  # written by a background job
    qtbot.waitUntil(lambda: out.is_file() and window.statusBar().currentMessage().startswith("QuPath GeoJSON written"),
                    timeout=30_000)
    doc = json.loads(out.read_text())
    assert qupath_rule_violations(doc, *CMU_SIZE) == []
    kinds = [f["properties"]["objectType"] for f in doc["features"]]
    assert kinds.count("tile") == len(window.result.coords) and kinds.count("annotation") == 4
    tiles = [f for f in doc["features"] if f["properties"]["objectType"] == "tile"]
    ring = np.asarray(tiles[0]["geometry"]["coordinates"][0])  # the first patch's square, level-0 px
    x, y = window.result.coords[0]
    assert [*ring.min(axis=0), *ring.max(axis=0)] == [x, y, x + window.result.patch_size_level0,
                                                      y + window.result.patch_size_level0]
    attention = window.result.tasks["survival"].attention
    assert [t["properties"]["measurements"]["survival: attention"] for t in tiles] == pytest.approx(attention)
    # the exported file imports back as the same regions (the tissue outline and the tiles are skipped)
    again = read_regions(out)
    assert again.fingerprint() == window.state.regions.regions.fingerprint()
    assert sorted(again.notes) == ["skipped 1 tissue outlines", f"skipped {len(tiles)} tile objects"]


def test_import_dialog_defaults_and_region_menu(qtbot, window, cmu_slide):
    from msrl_app.regions import ClassModesDialog

    dialog = ClassModesDialog({"Tumor": 2, "Ignore*": 1, "": 3})
    qtbot.addWidget(dialog)
    assert dialog.modes() == {"": INCLUDE, "Ignore*": EXCLUDE, "Tumor": INCLUDE}
    dialog.combos["Tumor"].setCurrentIndex(2)  # the user skips the tumour annotations
    assert dialog.modes()["Tumor"] == "skip"
    # with Pan, a right click on a region opens its menu: switch it to exclude, then delete it
    assert window.open_slide(cmu_slide)
    store = window.state.regions
    assert store.add(Point(1000, 1000).buffer(300), INCLUDE)
    send(window.viewer, QEvent.Type.MouseButtonPress, (1000, 1000), button=Qt.MouseButton.RightButton,
         buttons=Qt.MouseButton.RightButton)
    menu = window.viewer.findChild(QMenu)
    qtbot.waitUntil(lambda: menu is not None and menu.isVisible())
    texts = {a.text(): a for a in menu.actions()}
    texts["Exclude"].trigger()
    assert [r.mode for r in store.regions.regions] == [EXCLUDE]
    texts["Delete"].trigger()
    assert not store.regions and store.path is not None and not store.path.exists()  # no regions: no file
