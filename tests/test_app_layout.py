"""The main window's layout measured, not looked at: at 1366x768, 1600x1000 and 1920x1080, after an
Analyze (tiny random bundle, small synthetic slide), the viewer gets at least half of the width, no
results tab scrolls sideways, no label of the results is cut, the linked-cases table shows TABLE_ROWS
whole rows, and the results pop out into a large window of their own and dock back."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractScrollArea, QApplication, QLabel, QWidget

from msrl_app.linked_cases import DETAIL_MIN_WIDTH_PX, TABLE_ROWS, WIDE_PX
from msrl_app.theme import first_size
from msrl_app.window import MainWindow
from msrl_app.window_layout import STATE_VERSION, column_widths, popped_out_geometry

SIZES = [(1366, 768), (1600, 1000), (1920, 1080)]
TIMEOUT_S = 120.0


def wait_for(condition, timeout_s: float = TIMEOUT_S) -> None:
    """Run the event loop until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        QTest.qWait(20)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """The random-weight test bundle, its graph with 16 neighbours per case (the shipped bundle has 12
    linked cases; the tiny preset's 3 would not fill the table)."""
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle
    from msrl_model.nn.config import MSRLConfig

    enc = build_encoder("builtin-he")
    tiny = MSRLConfig.tiny
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MSRLConfig, "tiny", classmethod(lambda cls, **overrides: tiny(**{"k": 16, **overrides})))
        return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", patch_dim=enc.dim,
                                  encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from msrl_model.synth.slides import make_slide

    return make_slide(tmp_path_factory.mktemp("slides") / "synth-layout-TCGA-AB-1234-01Z-00-DX1.svs", 2048, 1536,
                      seed=5)


@pytest.fixture(scope="module", params=SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def analysed(request, qapp, tmp_path_factory, tiny_bundle, slide):
    """A window of the given size, first shown at that size (fresh settings), after one Analyze."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MSRL_STUDIO_LOG_DIR", str(home / "logs"))
    mp.setenv("MSRL_STUDIO_CACHE_DIR", str(home / "cache"))
    window = MainWindow(settings=QSettings(str(home / "settings.ini"), QSettings.Format.IniFormat))
    window.show_dialogs = False
    window.set_device("cpu")
    window.resize(*request.param)
    window.show()
    QTest.qWaitForWindowExposed(window)
    window.set_bundle(tiny_bundle)
    wait_for(lambda: window.bundle_manifest is not None)
    assert window.open_slide(slide)
    assert window.analyze_and_wait() == "done", window.last_error
    QTest.qWait(50)
    yield window
    window.close()
    mp.undo()


def show_tab(window: MainWindow, index: int) -> None:
    window.results.tabs.setCurrentIndex(index)
    QApplication.processEvents()
    QTest.qWait(20)


def cut_labels(root: QWidget) -> list[str]:
    """The shown labels under ``root`` whose text does not fit: a one-line label narrower than its
    text, a wrapping label lower than its wrapped text, or a label its parents clip sideways."""
    cut = []
    for label in root.findChildren(QLabel):
        if not label.isVisible() or not label.text():
            continue
        name = f"{label.objectName() or type(label.parent()).__name__}: {label.text()[:60]!r}"
        if label.wordWrap():
            if label.height() < label.heightForWidth(label.width()):
                cut.append(f"{name} is {label.height()} px high for {label.heightForWidth(label.width())}")
        elif label.width() < label.sizeHint().width():
            cut.append(f"{name} is {label.width()} px wide for {label.sizeHint().width()}")
        shown = label.visibleRegion().boundingRect()
        if not shown.isEmpty() and shown.width() < label.width():
            cut.append(f"{name} shows {shown.width()} of {label.width()} px")
    return cut


def test_viewer_gets_at_least_half_the_width(analysed):
    assert analysed.viewer.width() >= analysed.width() / 2
    left, results = column_widths(analysed.width())
    assert analysed.results_dock.width() == pytest.approx(results, abs=8)
    assert analysed.overview_dock.width() == pytest.approx(left, abs=8)


@pytest.mark.parametrize("tab", [0, 1, 2], ids=["survival", "probabilities", "linked"])
def test_no_results_tab_scrolls_sideways_or_cuts_a_label(analysed, tab):
    show_tab(analysed, tab)
    areas = [a for a in analysed.results.findChildren(QAbstractScrollArea) if a.isVisible()]
    assert areas
    sideways = [type(a).__name__ for a in areas if a.horizontalScrollBar().isVisible()]
    assert sideways == []
    assert cut_labels(analysed.results) == []


def test_side_panels_cut_no_label(analysed):
    assert cut_labels(analysed.overlays) == []
    legend = analysed.overlays.legend
    assert legend.isVisible() and legend.height() >= legend.heightForWidth(legend.width())


def test_linked_cases_table_shows_whole_columns_and_names_the_others(analysed):
    """Docked, the table shows the columns that fit whole, in order, never a sideways scroll; its header's
    tooltip names the ones left out. A wide table shows them all again."""
    show_tab(analysed, 2)
    linked = analysed.results.linked
    table, header = linked.table, linked.table.horizontalHeader()
    shown = [c for c in range(table.model().columnCount()) if not table.isColumnHidden(c)]
    assert shown == list(range(len(shown))) and len(shown) >= 5  # case, weight, influence, survival, status
    assert sum(header.sectionSize(c) for c in shown) <= table.viewport().width() + 1
    for c in shown[:-1]:  # the last one stretches
        assert header.sectionSize(c) >= linked.column_width(c)
    if len(shown) < table.model().columnCount():
        assert "Not shown at this width" in header.toolTip()
    linked.table.resize(linked.table_width() + 10, linked.table.height())
    assert not any(table.isColumnHidden(c) for c in range(table.model().columnCount()))


def test_linked_cases_table_shows_its_rows(analysed):
    show_tab(analysed, 2)
    table = analysed.results.linked.table
    assert table.model().rowCount() >= TABLE_ROWS
    viewport = table.viewport().height()
    whole = [r for r in range(table.model().rowCount())
             if 0 <= table.rowViewportPosition(r) and table.rowViewportPosition(r) + table.rowHeight(r) <= viewport]
    assert len(whole) >= TABLE_ROWS


def test_results_pop_out_and_dock_back(analysed):
    dock, docked_width = analysed.results_dock, analysed.results_dock.width()
    analysed.results.pop_out_button.click()
    QTest.qWait(50)
    assert dock.isFloating() and analysed.pop_out_results_action.isChecked()
    assert analysed.results.pop_out_button.text() == "Dock back"
    assert dock.geometry() == popped_out_geometry(analysed.screen().availableGeometry())
    assert dock.width() > docked_width or dock.width() >= 0.8 * analysed.screen().availableGeometry().width() - 1
    analysed.pop_out_results_action.trigger()  # the View menu's action docks it back
    QTest.qWait(50)
    assert not dock.isFloating() and analysed.results.pop_out_button.text() == "Pop out"
    assert analysed.viewer.width() >= analysed.width() / 2
    assert dock.width() == pytest.approx(column_widths(analysed.width())[1], abs=8)


def test_a_wide_results_window_puts_the_case_detail_beside_the_whole_table(analysed):
    dock, linked = analysed.results_dock, analysed.results.linked
    show_tab(analysed, 2)
    analysed.pop_out_results_action.trigger()
    dock.resize(WIDE_PX + 400, 700)  # the user enlarges the results' own window
    QTest.qWait(50)
    try:
        assert linked.splitter.orientation() == Qt.Orientation.Horizontal
        assert not linked.table.horizontalScrollBar().isVisible()  # every column whole
        assert linked.detail_scroll.width() >= DETAIL_MIN_WIDTH_PX and linked.detail_title.isVisible()
        assert cut_labels(analysed.results) == []
    finally:
        analysed.pop_out_results_action.trigger()
        QTest.qWait(50)
    assert linked.splitter.orientation() == Qt.Orientation.Vertical


def test_column_widths_leave_the_viewer_half_of_common_screens():
    for width in (1280, 1366, 1440, 1600, 1920, 2560):
        left, results = column_widths(width)
        assert width - left - results - 12 >= width / 2, width  # 12: dock separators


def shown_window(qtbot, settings: QSettings) -> MainWindow:
    """A window 800x700: within the offscreen screen (800x800), where a restored geometry is not clamped."""
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.resize(800, 700)
    window.show()
    qtbot.waitExposed(window)
    return window


def test_a_saved_layout_stands_and_an_older_one_is_ignored(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    first = shown_window(qtbot, settings)
    first.resizeDocks([first.results_dock], [300], Qt.Orientation.Horizontal)  # the user narrows the results
    QTest.qWait(20)
    assert first.results_dock.width() == pytest.approx(300, abs=8) != column_widths(800)[1]
    first.close()  # saves the window's state
    second = shown_window(qtbot, settings)
    assert second.state_restored and second.results_dock.width() == pytest.approx(300, abs=8)
    second.close()
    settings.setValue("window/state", second.saveState(STATE_VERSION - 1))  # saved by an older layout
    third = shown_window(qtbot, settings)
    fresh = shown_window(qtbot, QSettings(str(tmp_path / "fresh.ini"), QSettings.Format.IniFormat))
    assert not third.state_restored and third.results_dock.width() == fresh.results_dock.width() != 300


def test_slide_properties_wrap_in_a_narrow_column(qtbot, tmp_path, cmu_slide):
    window = shown_window(qtbot, QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    assert window.open_slide(cmu_slide)
    QTest.qWait(50)
    tree = window.properties
    rows = {tree.topLevelItem(0).child(j).text(0): tree.topLevelItem(0).child(j)
            for j in range(tree.topLevelItem(0).childCount())}
    folder, vendor = (tree.visualItemRect(rows[name]) for name in ("Folder", "Vendor"))
    assert tree.columnWidth(0) <= tree.NAME_SHARE * tree.viewport().width() + 1
    assert not tree.horizontalScrollBar().isVisible()
    assert len(str(cmu_slide.parent)) * 5 > tree.columnWidth(1)  # the folder cannot fit on one line…
    assert folder.height() >= 2 * vendor.height()  # … so it wraps onto more


def test_a_first_window_as_large_as_a_small_screen_is_maximized(qtbot, tmp_path):
    window = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    assert window.size() == first_size(window.screen())  # the offscreen screen (800x800) is smaller than 1400x900
    window.show()
    qtbot.waitUntil(window.isMaximized)
