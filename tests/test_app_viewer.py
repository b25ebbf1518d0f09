"""SlideViewer: level choice, tiles off the GUI thread, LRU cache, navigation, overlays, overview."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QImage, QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from msrl_app.overlays import HeatmapLegend, colormap_lut, grid_raster, normalize
from msrl_app.tiles import TileCache, choose_level, tiles_in_rect
from msrl_app.viewer import (ColorLegend, OverviewWidget, SlideViewer, format_length, magnification,
                             nice_scale_length)


@pytest.fixture(scope="module")
def synth_slide(tmp_path_factory):
    """A small pyramidal synthetic Aperio slide: 2048x1536, levels downsample 1 and 4."""
    from msrl_model.synth.slides import make_slide

    return make_slide(tmp_path_factory.mktemp("slides") / "synth.svs", 2048, 1536, seed=7)


def _open(path):
    from msrl_model.slide import open_slide

    return open_slide(path)


@pytest.fixture
def viewer(qtbot, synth_slide):
    v = SlideViewer(threads=2)
    qtbot.addWidget(v)
    v.resize(400, 300)
    v.show()
    qtbot.waitExposed(v)
    v.set_slide(_open(synth_slide))
    yield v
    v.shutdown()


def _settled(v: SlideViewer) -> bool:
    return v.visible_tiles() <= v.cached_tiles() and v.background_jobs() == 0


def _pixel(v: SlideViewer, x: int, y: int) -> tuple[int, int, int]:
    c = v.grab().toImage().pixelColor(x, y)
    return c.red(), c.green(), c.blue()


# -- pure helpers ---------------------------------------------------------------------------------------

def test_choose_level_never_upsamples():
    ds = [1.0, 4.0, 16.0]
    assert choose_level(ds, 0.5) == 0
    assert choose_level(ds, 3.9) == 0
    assert choose_level(ds, 4.0) == 1
    assert choose_level(ds, 100.0) == 2


def test_tiles_in_rect_covers_rect_and_clips_to_level():
    keys = tiles_in_rect(1, (1000, 700), 4.0, QRectF(0, 0, 4 * 600, 4 * 100), 512)
    assert keys == {(1, 0, 0), (1, 1, 0)}
    assert tiles_in_rect(0, (1000, 700), 1.0, QRectF(-50, -50, 10_000, 10_000), 512) == {
        (0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)}


def test_scale_bar_lengths_are_round_and_fit():
    length, px = nice_scale_length(0.5, max_px=140)  # 140 px = 70 µm -> 50 µm
    assert (length, px) == (50.0, 100.0)
    assert nice_scale_length(20.0)[0] == 2000.0 and format_length(2000.0) == "2 mm"
    assert format_length(200.0) == "200 µm"
    assert magnification(0.5, 1.0) == pytest.approx(20.0)
    assert magnification(0.25, 0.5) == pytest.approx(20.0)


def test_tile_cache_is_lru_and_bounded():
    image = QImage(64, 64, QImage.Format.Format_RGB32)
    cache = TileCache(max_bytes=3 * image.sizeInBytes())
    for i in range(3):
        cache.put((0, i, 0), image)
    assert cache.get((0, 0, 0)) is not None  # 0 becomes most recent
    cache.put((0, 3, 0), image)
    assert (0, 1, 0) not in cache and (0, 0, 0) in cache and len(cache) == 3
    assert cache.nbytes <= cache.max_bytes


def test_overlay_rasters():
    assert normalize(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert normalize(np.array([1.0, 3.0]), "minmax").tolist() == [0.0, 1.0]
    lut = colormap_lut()  # viridis: dark purple -> yellow, lightness rising throughout
    assert lut.shape == (256, 3) and lut[0, 2] > lut[0, 1] and lut[-1, 0] > lut[-1, 2]
    lightness = lut.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(lightness[::16]) > 0)  # perceptually ordered, unlike a rainbow
    turbo = colormap_lut(256, "turbo")
    assert not np.all(np.diff((turbo.astype(float) @ np.array([0.299, 0.587, 0.114]))[::16]) > 0)
    with pytest.raises(ValueError, match="unknown colour map"):
        colormap_lut(16, "jet")
    coords = np.array([[100, 200], [356, 200], [100, 456]])
    raster = grid_raster(coords, 256, np.array([255, 0, 0, 255], np.uint8))
    assert (raster.image.width(), raster.image.height()) == (2, 2)
    assert raster.rect == QRectF(100, 200, 512, 512)
    assert raster.image.pixelColor(0, 0).alpha() == 255 and raster.image.pixelColor(1, 1).alpha() == 0


# -- viewer ----------------------------------------------------------------------------------------------

def test_zoom_and_pan_change_visible_tiles_and_level(qtbot, viewer):
    assert viewer.current_level() == 1  # fitted: ~5 level-0 px per screen px
    fitted = viewer.visible_tiles()
    assert fitted and all(k[0] == 1 for k in fitted)
    qtbot.waitUntil(lambda: _settled(viewer), timeout=10000)
    assert fitted <= viewer.cached_tiles()

    viewer.zoom_to(1.0, QPointF(0, 0))  # 1:1 at the top-left corner
    assert viewer.scale == 1.0 and viewer.current_level() == 0
    zoomed = viewer.visible_tiles()
    assert zoomed == {(0, 0, 0)}
    viewer.pan_by(-600, 0)  # content moves left: we look further right
    panned = viewer.visible_tiles()
    assert panned != zoomed and all(k[0] == 0 for k in panned)
    qtbot.waitUntil(lambda: panned <= viewer.cached_tiles(), timeout=10000)
    assert viewer.magnification() == pytest.approx(20.0)


def test_cache_stays_within_its_budget(qtbot, synth_slide):
    tile_bytes = 512 * 512 * 4
    v = SlideViewer(cache_bytes=3 * tile_bytes, threads=2)
    qtbot.addWidget(v)
    v.resize(300, 300)
    v.set_slide(_open(synth_slide))
    v.zoom_to(1.0)
    for x in range(0, 2048, 400):
        v.set_center(QPointF(x, 700))
        qtbot.waitUntil(lambda: _settled(v), timeout=30000)
        assert len(v.cached_tiles()) <= 3
    v.shutdown()


class ManualPool:
    """Stands in for the loader's QThreadPool: reads run only when the test says, in its order."""

    def __init__(self) -> None:
        self.queue: list = []

    def start(self, fn) -> None:
        self.queue.append(fn)

    def clear(self) -> None:
        self.queue.clear()

    def waitForDone(self, msecs: int = -1) -> bool:  # noqa: N802 - QThreadPool's name
        return True

    def run(self) -> None:
        """Run every queued read on this thread (``loaded`` is then delivered at once)."""
        queue, self.queue = self.queue, []
        for fn in queue:
            fn()


def _manual_viewer(qtbot, synth_slide, cache: TileCache) -> tuple[SlideViewer, ManualPool]:
    v = SlideViewer(cache_bytes=cache.max_bytes, threads=1)
    qtbot.addWidget(v)
    pool = ManualPool()
    v._loader._pool = pool  # reads by hand, in the order that used to lose a visible tile
    v._cache = cache
    v.resize(300, 300)
    v.set_slide(_open(synth_slide))
    return v, pool


def _late_loads(v: SlideViewer) -> None:
    """Reads of the fitted view and of the first 1:1 view that had started before the view moved
    on (they passed the loader's "still wanted" check) arrive after the current view's tile."""
    for key, (w, h) in [((1, 0, 0), (512, 384)), ((0, 1, 1), (512, 512)), ((0, 2, 1), (512, 512))]:
        image = QImage(w, h, QImage.Format.Format_RGB32)
        image.fill(0x808080)
        v._loader.loaded.emit(v._loader.generation, key, image)


def _move_like_the_budget_test(v: SlideViewer, pool: ManualPool) -> None:
    v.zoom_to(1.0)  # from the fitted view (tile (1, 0, 0)) to 1:1 at the center: (0, 1, 1), (0, 2, 1)
    v.set_center(QPointF(0, 700))  # then at once to the left edge: (0, 0, 1) only
    assert v.visible_tiles() == {(0, 0, 1)}
    pool.run()  # the older reads are skipped (no longer wanted); (0, 0, 1) is read and cached
    assert (0, 0, 1) in v.cached_tiles()


def test_a_late_tile_load_never_evicts_a_visible_tile(qtbot, synth_slide):
    """The race behind the flaky budget test, made deterministic: with room for 3 tiles, three late
    loads of tiles no longer wanted used to evict the one tile on screen, and nothing read it again."""
    tile_bytes = 512 * 512 * 4
    v, pool = _manual_viewer(qtbot, synth_slide, TileCache(3 * tile_bytes))
    _move_like_the_budget_test(v, pool)
    _late_loads(v)
    assert v.visible_tiles() <= v.cached_tiles()  # pinned: older off-screen tiles were evicted instead
    assert v._cache.nbytes <= v._cache.max_bytes and not pool.queue
    v.shutdown()


class UnpinnedCache(TileCache):
    """The cache as it was: plain LRU, visible tiles not protected."""

    def pin(self, keys) -> None:
        pass


def test_the_viewer_requests_again_a_visible_tile_that_was_evicted(qtbot, synth_slide):
    """Whatever drops a visible tile from the cache, the next load or failure re-requests it."""
    tile_bytes = 512 * 512 * 4
    v, pool = _manual_viewer(qtbot, synth_slide, UnpinnedCache(3 * tile_bytes))
    _move_like_the_budget_test(v, pool)
    _late_loads(v)
    assert (0, 0, 1) not in v.cached_tiles()  # the old LRU evicted the visible tile ...
    assert len(pool.queue) == 1  # ... and the viewer queued its read again
    pool.run()
    assert v.visible_tiles() <= v.cached_tiles()
    v.shutdown()


def test_tile_cache_never_evicts_pinned_tiles():
    image = QImage(64, 64, QImage.Format.Format_RGB32)
    size = image.sizeInBytes()
    cache = TileCache(max_bytes=2 * size)
    cache.pin({(0, 0, 0), (0, 1, 0)})
    for i in range(4):
        cache.put((0, i, 0), image)
    assert set(cache.keys()) == {(0, 0, 0), (0, 1, 0)}  # late loads of unpinned tiles go first
    cache.pin({(0, i, 0) for i in range(3)})  # a view larger than the budget: kept whole, over budget
    cache.put((0, 2, 0), image)
    assert len(cache) == 3 and cache.nbytes == 3 * size
    cache.pin({(0, 2, 0)})  # a smaller view: back within the budget at once
    assert cache.nbytes <= cache.max_bytes and (0, 2, 0) in cache
    cache.clear()
    assert cache.pinned == frozenset() and len(cache) == 0


def test_keyboard_navigation(qtbot, viewer):
    qtbot.keyClick(viewer, Qt.Key.Key_1)
    assert viewer.scale == 1.0
    before = viewer.center
    qtbot.keyClick(viewer, Qt.Key.Key_Right)
    assert viewer.center.x() > before.x()
    qtbot.keyClick(viewer, Qt.Key.Key_F)
    assert viewer.scale == pytest.approx(viewer.fit_scale())
    qtbot.keyClick(viewer, Qt.Key.Key_Plus)
    qtbot.waitUntil(lambda: viewer.scale == pytest.approx(1.5 * viewer.fit_scale()), timeout=5000)


def test_wheel_zooms_smoothly_towards_the_cursor(qtbot, viewer):
    cursor = QPointF(100, 80)
    under = viewer.map_to_level0(cursor)
    start = viewer.scale
    event = QWheelEvent(cursor, viewer.mapToGlobal(cursor), QPoint(0, 0), QPoint(0, 240),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(viewer, event)
    qtbot.waitUntil(lambda: viewer.scale == pytest.approx(start * 1.25 ** 2), timeout=5000)
    after = viewer.map_to_level0(cursor)
    assert after.x() == pytest.approx(under.x(), abs=1) and after.y() == pytest.approx(under.y(), abs=1)


def test_drag_pans(qtbot, viewer):
    viewer.zoom_to(1.0)
    before = viewer.center

    def send(kind, pos, buttons):
        QApplication.sendEvent(viewer, QMouseEvent(kind, QPointF(*pos), viewer.mapToGlobal(QPointF(*pos)),
                                                   Qt.MouseButton.LeftButton, buttons, Qt.KeyboardModifier.NoModifier))

    send(QMouseEvent.Type.MouseButtonPress, (200, 150), Qt.MouseButton.LeftButton)
    send(QMouseEvent.Type.MouseMove, (150, 110), Qt.MouseButton.LeftButton)
    send(QMouseEvent.Type.MouseButtonRelease, (150, 110), Qt.MouseButton.NoButton)
    assert viewer.center.x() == pytest.approx(before.x() + 50)
    assert viewer.center.y() == pytest.approx(before.y() + 40)


def test_tissue_overlay_toggle_changes_pixels(qtbot, viewer):
    qtbot.waitUntil(lambda: viewer.overlay_available("tissue") and _settled(viewer), timeout=15000)
    assert 0.05 < viewer.tissue_fraction() < 1.0  # detected automatically in the background
    viewer.set_tissue_mask(np.ones((8, 8), bool), downsample=2048 / 8)  # all tissue: tints everywhere
    viewer.set_overlay_visible("tissue", False)
    off = _pixel(viewer, 200, 150)
    viewer.set_overlay_visible("tissue", True)
    on = _pixel(viewer, 200, 150)
    assert on != off
    viewer.set_overlay_opacity("tissue", 0.0)
    assert _pixel(viewer, 200, 150) == off


def test_heatmap_and_patches_are_drawn_and_toggle(qtbot, viewer):
    qtbot.waitUntil(lambda: _settled(viewer), timeout=10000)
    base = _pixel(viewer, 200, 150)
    xs, ys = np.meshgrid(np.arange(0, 2048, 256), np.arange(0, 1536, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)  # (48, 2)
    values = np.linspace(0, 1, len(coords))
    viewer.set_heatmap(coords, 256, values, label="Attention")
    assert viewer.heatmap_legend() == ("Attention", 0.0, 1.0, "percentile", "viridis")
    heat = _pixel(viewer, 200, 150)
    assert heat != base
    patch = viewer.heatmap_value_at(300, 10)  # x 300 is in the second patch of the first row
    assert (patch.index, patch.value) == (1, values[1]) and patch.percentile == pytest.approx(100 / 47)
    assert viewer.heatmap_value_at(5000, 5000) is None
    viewer.set_heatmap_colormap("magma")
    assert _pixel(viewer, 200, 150) not in (heat, base) and viewer.heatmap_legend().colormap == "magma"
    viewer.set_overlay_visible("heatmap", False)
    assert _pixel(viewer, 200, 150) == base
    viewer.set_patches(coords, 256)
    assert viewer.overlay_available("patches") and _pixel(viewer, 200, 150) != base
    viewer.set_patches(None)
    assert not viewer.overlay_available("patches")
    with pytest.raises(ValueError):
        viewer.set_heatmap(coords, 256, values[:3])


def test_smoothed_heatmap_blends_between_patch_centres(qtbot, viewer):
    """Smooth heat-map: across the border of two patches the colour changes gradually (bilinear between their
    centres) instead of in one step; hovering still names one patch."""
    qtbot.waitUntil(lambda: _settled(viewer), timeout=10000)
    viewer.set_overlay_opacity("heatmap", 1.0)
    coords = np.array([[0, 0], [1024, 0]])  # two patches side by side, lowest and highest rank
    viewer.set_heatmap(coords, 1024, np.array([0.0, 1.0]), label="Attention")
    left, right = (viewer.map_from_level0(QPointF(x, 512)) for x in (512, 1536))

    def row() -> list[tuple[int, int, int]]:
        y = int(left.y())
        return [_pixel(viewer, x, y) for x in range(int(left.x()) + 1, int(right.x()))]

    flat = row()
    assert not viewer.heatmap_smooth() and len(set(flat)) <= 3  # two colours (and an anti-aliased seam)
    viewer.set_heatmap_smooth(True)
    smooth = row()
    assert viewer.heatmap_smooth() and len(set(smooth)) > 10  # a gradient between the two patch colours
    assert smooth[0] == pytest.approx(flat[0], abs=12) and smooth[-1] == pytest.approx(flat[-1], abs=12)
    assert viewer.heatmap_value_at(1023, 512).index == 0  # hover still reads one patch
    viewer.set_heatmap_smooth(False)
    assert row() == flat


def test_overview_click_moves_the_view(qtbot, viewer):
    overview = OverviewWidget(viewer)
    qtbot.addWidget(overview)
    overview.resize(200, 150)
    overview.show()
    qtbot.waitUntil(lambda: viewer.thumbnail() is not None, timeout=10000)
    viewer.zoom_to(1.0)
    target = overview.image_rect()
    qtbot.mouseClick(overview, Qt.MouseButton.LeftButton,
                     pos=QPoint(int(target.left() + 0.75 * target.width()), int(target.center().y())))
    assert viewer.center.x() == pytest.approx(0.75 * 2048, abs=20)
    assert viewer.center.y() == pytest.approx(768, abs=20)


def test_switching_slides_resets_tiles_and_overlays(qtbot, viewer, cmu_slide):
    qtbot.waitUntil(lambda: _settled(viewer), timeout=10000)
    viewer.set_heatmap(np.array([[0, 0]]), 256, np.array([1.0]))
    viewer.set_slide(_open(cmu_slide))
    assert viewer.slide.vendor == "aperio" and viewer.slide.dimensions == (2220, 2967)
    assert not viewer.overlay_available("heatmap")
    assert all(k[0] == 0 for k in viewer.visible_tiles())  # one-level slide
    qtbot.waitUntil(lambda: _settled(viewer), timeout=10000)
    assert viewer.cached_tiles() == viewer.visible_tiles()


@pytest.mark.parametrize("normalization, texts", [
    ("percentile", ("Attention: rank among this slide's patches", "lowest", "highest")),  # as the PDF
    ("minmax", ("Attention", "low (0.001)", "high (0.25)")),
])
def test_legend_texts(normalization, texts):
    legend = ColorLegend()
    legend.set_legend(HeatmapLegend("Attention", 0.001, 0.25, normalization, "cividis"))
    assert legend.texts() == texts


def test_position_readout_names_the_patch_under_the_cursor():
    from msrl_app.overlays import PatchValue
    from msrl_app.scalebar import position_text

    text = position_text((2048, 1536), 0.5, 300.0, 10.0, PatchValue(1, 0.0123, 87.2))
    assert text == ("x 0.150 mm, y 0.005 mm (300, 10 px) · patch 1: attention 0.0123, higher than 87% of this "
                    "slide's patches")
    assert position_text((2048, 1536), 0.5, 3000.0, 10.0) == ""
