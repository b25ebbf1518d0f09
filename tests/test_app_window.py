"""MainWindow: opening slides (menu, recent, drop), properties, errors that keep the open slide."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication, QMessageBox

from msrl_app.applog import setup_logging
from msrl_app.window import MainWindow
from msrl_model import RESEARCH_USE_ONLY


@pytest.fixture(scope="module")
def synth_slide(tmp_path_factory):
    from msrl_model.synth.slides import make_slide

    return make_slide(tmp_path_factory.mktemp("slides") / "synth-a.svs", 2048, 1536, seed=11)


@pytest.fixture
def dialogs(monkeypatch):
    """Captures QMessageBox.critical / about instead of blocking on them."""
    shown: list[tuple[str, str, str]] = []
    monkeypatch.setattr(QMessageBox, "critical",
                        lambda parent, title, text, *a, **k: shown.append(("critical", title, text)))
    monkeypatch.setattr(QMessageBox, "about", lambda parent, title, text: shown.append(("about", title, text)))
    return shown


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, dialogs):
    # settings and logs of the test only: never the user's
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "user"))
    monkeypatch.setenv("MSRL_STUDIO_LOG_DIR", str(tmp_path / "logs"))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    log_path = setup_logging()
    assert log_path == tmp_path / "logs" / "msrl-studio.log"
    w = MainWindow(settings=settings, log_path=log_path)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


def test_opening_cmu_fills_properties(qtbot, window, cmu_slide):
    assert window.open_slide(cmu_slide)
    props = window.properties
    assert props.value("Slide", "Vendor") == "aperio"
    assert props.value("Slide", "Backend") in ("openslide", "tiffslide")
    assert props.value("Resolution", "Dimensions") == "2,220 × 2,967 px"
    assert props.value("Resolution", "Microns per pixel").startswith("0.499 µm/px")
    assert "metadata" in props.value("Resolution", "Microns per pixel")
    assert props.value("Resolution", "Objective power") == "20×"
    assert props.value("Pyramid", "Level 0").startswith("2,220 × 2,967 px")
    assert cmu_slide.name in window.windowTitle()
    assert window.viewer.slide.path == cmu_slide


def test_synthetic_slide_lists_its_levels(qtbot, window, synth_slide):
    assert window.open_slide(synth_slide)
    assert window.properties.value("Slide", "Vendor") == "aperio"
    assert window.properties.value("Pyramid", "Level 1").startswith("512 × 384 px")
    assert window.properties.value("Resolution", "Microns per pixel").startswith("0.5 µm/px")


def test_recent_files_update_and_reopen(qtbot, window, cmu_slide, synth_slide):
    window.open_slide(cmu_slide)
    window.open_slide(synth_slide)
    window.open_slide(cmu_slide)
    assert window.recent_files() == [str(cmu_slide.resolve()), str(synth_slide.resolve())]
    labels = [a.text() for a in window.recent_menu.actions() if a.text()]
    assert labels[0].endswith(cmu_slide.name) and labels[1].endswith(synth_slide.name)
    window.recent_menu.actions()[1].trigger()  # the synthetic slide
    assert window.viewer.slide.path.name == synth_slide.name
    # persisted: a new window on the same settings sees the list
    again = MainWindow(settings=window.settings)
    qtbot.addWidget(again)
    assert again.recent_files()[0] == str(synth_slide.resolve())


def test_non_slide_shows_error_and_keeps_current_slide(qtbot, window, dialogs, cmu_slide, tmp_path):
    window.open_slide(cmu_slide)
    bad = tmp_path / "notes.svs"
    bad.write_text("this is not a slide\n")
    assert not window.open_slide(bad)
    assert len(dialogs) == 1
    kind, title, text = dialogs[0]
    assert kind == "critical" and "notes.svs" in title
    assert "not a whole-slide image" in text and f"{cmu_slide.name} is still open" in text
    assert window.viewer.slide.path == cmu_slide
    assert window.properties.value("Slide", "File") == cmu_slide.name
    assert str(bad.resolve()) not in window.recent_files()
    assert "Cannot open notes.svs" in window.log_path.read_text()


def test_missing_file_error_says_what_to_do(qtbot, window, dialogs, tmp_path):
    assert not window.open_slide(tmp_path / "gone.svs")
    assert "does not exist" in dialogs[0][2] and "Open slide" in dialogs[0][2]
    assert window.viewer.slide is None


def test_unexpected_exception_is_a_dialog_not_a_crash(qtbot, window, dialogs, cmu_slide, monkeypatch):
    import msrl_model.slide

    def boom(path):
        raise ZeroDivisionError("synthetic failure")

    monkeypatch.setattr(msrl_model.slide, "open_slide", boom)
    assert not window.open_slide(cmu_slide)
    text = dialogs[0][2]
    assert "Unexpected error: ZeroDivisionError: synthetic failure" in text
    assert str(window.log_path) in text


def test_drop_opens_the_file(qtbot, window, cmu_slide):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(cmu_slide))])
    event = QDropEvent(QPointF(300, 300), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    assert window.viewer.slide is not None and window.viewer.slide.path == cmu_slide


def test_research_use_only_and_about(qtbot, window, dialogs):
    assert window.research_label.isVisible() and window.research_label.text() == RESEARCH_USE_ONLY
    window.about_action.trigger()
    kind, title, text = dialogs[-1]
    assert kind == "about" and "Research use only" in text and str(window.log_path) in text


def test_overlay_actions_follow_the_viewer(qtbot, window, cmu_slide):
    window.open_slide(cmu_slide)
    action = window.overlay_actions["tissue"]
    qtbot.waitUntil(lambda: action.isEnabled(), timeout=15000)  # tissue detection finished
    action.setChecked(True)
    assert window.viewer.overlay_visible("tissue")
    assert window.overlays.checks["tissue"].isChecked()
    window.overlays.checks["tissue"].setChecked(False)
    assert not action.isChecked() and not window.viewer.overlay_visible("tissue")
    assert not window.overlay_actions["heatmap"].isEnabled()  # nothing analysed yet


def test_view_actions(qtbot, window, synth_slide):
    window.open_slide(synth_slide)
    window.one_to_one_action.trigger()
    assert window.viewer.scale == 1.0
    assert "20.0×" in window.mag_label.text()
    window.fit_action.trigger()
    assert window.viewer.scale == pytest.approx(window.viewer.fit_scale())
    QApplication.processEvents()
