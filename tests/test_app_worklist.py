"""The Worklist dock in the main window: a folder with a good slide (the CMU slide), a blank slide and a
picture is analysed by Analyze all (tiny random bundle) and shows done / failed with each reason; a
second run skips the done slide; clicking a row opens that slide with its result."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMessageBox

from msrl_app.applog import setup_logging
from msrl_app.labels import task_title
from msrl_app.main import parse_args, run_startup
from msrl_app.window import MainWindow
from msrl_app.worklist import NO_CALL
from test_worklist_model import case_folder

TIMEOUT_MS = 180_000


@pytest.fixture
def cases(tmp_path, cmu_slide) -> Path:
    return case_folder(tmp_path / "cases", cmu_slide)


@pytest.fixture
def dialogs(monkeypatch):
    shown: list[tuple[str, str]] = []
    for kind in ("critical", "information"):
        monkeypatch.setattr(QMessageBox, kind, lambda parent, title, text, *a, **kw: shown.append((title, text)))
    return shown


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, dialogs, builtin_he_bundle):
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "user"))
    monkeypatch.setenv("MSRL_STUDIO_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("MSRL_STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat),
                   log_path=setup_logging())
    w.set_device("cpu")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    with qtbot.waitSignal(w.bundleLoaded, timeout=TIMEOUT_MS):
        w.set_bundle(builtin_he_bundle)
    yield w
    w.close()


def analyze_all(qtbot, window) -> tuple[str, list[str]]:
    """Click Analyze all and wait for its end; (how it ended, the progress messages)."""
    ended: list[str] = []
    messages: list[str] = []
    events = window.worklist.events
    events.finished.connect(ended.append)
    events.progress.connect(lambda tick: messages.append(tick.message))
    qtbot.mouseClick(window.worklist_panel.analyze_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(ended), timeout=TIMEOUT_MS)
    events.finished.disconnect(ended.append)
    return ended[0], messages


def cell(panel, row: int, column: int, role=Qt.ItemDataRole.DisplayRole):
    return panel.table_model.index(row, column).data(role)


def test_worklist_analyses_a_folder_and_opens_a_row(qtbot, window, cases, dialogs):
    panel, model = window.worklist_panel, window.worklist
    assert "Open &worklist folder…" in [a.text() for a in window.recent_menu.parentWidget().actions()]
    assert model.open(cases)
    assert window.worklist_dock.isVisible() and not window.worklist_dock.visibleRegion().isEmpty()
    assert [cell(panel, r, 1).replace("\u200b", "") for r in range(3)] == ["blank.svs", "cmu.svs", "photo.png"]
    assert [cell(panel, r, 2) for r in range(3)] == ["not analysed"] * 3
    qtbot.waitUntil(lambda: {0, 1} <= set(model.thumbnails), timeout=TIMEOUT_MS)  # the slides' thumbnails
    assert cell(panel, 1, 0, Qt.ItemDataRole.DecorationRole) is not None
    assert cell(panel, 2, 0, Qt.ItemDataRole.DecorationRole) is None  # the picture is no slide

    outcome, messages = analyze_all(qtbot, window)
    assert outcome == "done" and not dialogs
    assert cell(panel, 1, 2) == "done"
    assert cell(panel, 0, 2).startswith("failed: no tissue found on blank.svs: it looks blank")
    assert ";" not in cell(panel, 0, 2)  # the reason's first clause; what to do is in the tooltip
    assert cell(panel, 2, 2) == "failed: photo.png is a plain PNG image, not a whole-slide image"
    blank_tip = cell(panel, 0, 2, Qt.ItemDataRole.ToolTipRole)
    assert "failed: no tissue found" in blank_tip and "; check the slide" in blank_tip  # what to do: in the tooltip
    cmu = model.entries[1]
    calls = [f"{task_title(f.task)}: {f.call} {f.probability:.0%}" for f in cmu.findings if f.informative is not False]
    risk = f"{cmu.risk_group.capitalize()} risk, percentile {cmu.risk_percentile:.0f}"
    assert cmu.findings and cell(panel, 1, 3).splitlines() == [risk, *(calls or [NO_CALL])]  # uninformative: left out
    assert cell(panel, 0, 3) == ""
    tooltip = cell(panel, 1, 3, Qt.ItemDataRole.ToolTipRole)
    assert all(f"{task_title(f.task)}: {f.call}" in tooltip for f in cmu.findings)  # every call in the tooltip
    assert panel.summary_label.text() == "3 slides: 1 done, 2 failed"
    assert panel.bar.value() == 3 and panel.bar.format() == "3 / 3 slides" and not panel.bar.isVisible()
    assert any(m.startswith("cmu.svs: read+encode") for m in messages)

    # a second run skips the done slide: no extraction, its result file untouched
    stamp = Path(cmu.result).stat().st_mtime_ns
    outcome, messages = analyze_all(qtbot, window)
    assert outcome == "done" and cell(panel, 1, 2) == "done"
    assert not any(m.startswith("cmu.svs:") for m in messages)  # skipped before any extraction stage
    assert Path(model.entries[1].result).stat().st_mtime_ns == stamp

    # clicking the row opens that slide with its result
    rect = panel.table.visualRect(panel.table_model.index(1, 1))
    qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: window.result is not None, timeout=TIMEOUT_MS)
    assert window.state.slide == cases / "cmu.svs" and window.viewer.slide.path == cases / "cmu.svs"
    assert window.result.slide_id == "cmu" and window.result.bundle_sha256 == model.risks_bundle
    assert window.results.title.text() == "cmu" and window.cohort_risks["survival"].size > 0
    assert window.viewer.overlay_available("heatmap")


def test_command_line_opens_a_worklist(qtbot, window, cases):
    args = parse_args(["--worklist", str(cases), "--bundle", str(window.state.bundle_path)])
    assert run_startup(window, args) == 0
    assert [e.name for e in window.worklist.entries] == ["blank.svs", "cmu.svs", "photo.png"]
    assert window.state.slide is None  # no demo slide over the worklist
    assert window.worklist_dock.isVisible()


def test_closing_the_window_stops_analyze_all(qtbot, window, cases):
    from msrl_model.infer.worklist import Worklist

    model = window.worklist
    assert model.open(cases)
    messages: list[str] = []
    model.events.progress.connect(lambda tick: messages.append(tick.message))
    assert model.analyze_all()
    job = model._job
    qtbot.waitUntil(lambda: any(": read+encode" in m for m in messages), timeout=TIMEOUT_MS)  # encoding a slide
    window.close()  # the app state stops every job and waits (bounded) for its thread
    assert job.abort_requested and job.wait(0)  # told to stop, and its work is over
    statuses = [e.status for e in Worklist.open(cases, model.worklist.out_dir).entries]
    assert "running" not in statuses and "queued" not in statuses  # reopened: what was cut off reads not analysed
