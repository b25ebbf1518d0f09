"""DICOM whole-slide images: the real CMU slide (an Aperio SVS) converted to a DICOM series with
wsidicomizer, opened by its folder or one of its files, analysed by ``msrl analyze`` like the SVS,
and opened by the app (menu, drag and drop, command line).

The conversion (once per session, ~0.5 s) uses wsidicomizer's tiffslide source: its default
source for SVS (opentile, which copies the JPEG tiles unchanged) needs the system library
libturbojpeg, which no PyPI wheel ships. The tiffslide source decodes and re-encodes, so the
encoding is chosen to stay close to the source: the SVS holds JPEG tiles in RGB without chroma
subsampling ("JPEG/RGB" in its description), so the DICOM gets JPEG quality 95, RGB, 4:4:4.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from msrl_model.errors import CorruptSlideError, NotASlideError, SlideError
from msrl_model.features.pipeline import collect_slides
from msrl_model.slide import open_slide
from msrl_model.slide.paths import is_dicom_series, sha256_head, slide_id_of, slide_location, slide_paths_in

# Measured on this conversion (JPEG q95 RGB 4:4:4 of the SVS's JPEG/RGB tiles), whole level 0:
# mean |DICOM - SVS| = 0.12 grey levels (max 10). Bounds at about 4x: a shift by one pixel, a flip
# or a colour-space mix-up gives several grey levels on average.
MAX_MEAN_PIXEL_DIFF = 0.5
# Built-in encoder features of the 39 tissue patches, DICOM vs SVS, measured: per patch relative L2
# difference |f_dicom - f_svs| / |f_svs| <= 0.029 (median 0.006), cosine >= 0.9998. Bounds at 2x the
# largest difference: re-encoding noise of another libjpeg build stays inside, features of a
# different or shifted patch do not (neighbouring patches of this slide differ by far more).
MAX_FEATURE_REL_L2 = 0.06
MIN_FEATURE_COSINE = 0.999

SERIES_NAME = "cmu_small_region_dicom"


def _convert(svs: Path, out: Path) -> Path:
    """``svs`` as a DICOM whole-slide series in the new folder ``out`` (see the module docstring)."""
    pytest.importorskip("wsidicomizer")
    from wsidicom.codec import Channels, JpegSettings, Subsampling
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    encoding = JpegSettings(quality=95, subsampling=Subsampling.R444, channels=Channels.RGB)
    WsiDicomizer.convert(svs, out, preferred_source=SourceIdentifier.TIFFSLIDE, encoding=encoding, workers=1)
    return out


@pytest.fixture(scope="session")
def dicom_cmu(cmu_slide, tmp_path_factory) -> Path:
    """The CMU slide as a DICOM series: a folder of .dcm files (level 0, label, overview, thumbnail)."""
    return _convert(cmu_slide, tmp_path_factory.mktemp("dicom") / SERIES_NAME)


def _copy_series(series: Path, dest: Path) -> Path:
    shutil.copytree(series, dest)
    return dest


# ---- opening -------------------------------------------------------------------------------------


def test_opens_by_folder_and_by_any_file_as_the_same_slide(dicom_cmu, cmu_slide):
    files = sorted(dicom_cmu.glob("*.dcm"))
    assert len(files) == 4  # level 0, label, overview, thumbnail
    with open_slide(cmu_slide) as svs, open_slide(dicom_cmu) as by_folder:
        assert by_folder.vendor == "dicom" and by_folder.backend == "openslide"
        assert by_folder.dimensions == svs.dimensions == (2220, 2967)
        assert by_folder.mpp == pytest.approx(svs.mpp, abs=1e-6) and by_folder.mpp_source == "metadata"
        assert by_folder.path == dicom_cmu and by_folder.slide_id == SERIES_NAME and by_folder.files == files
        assert {"label", "macro", "thumbnail"} <= set(by_folder.associated_image_names)
        assert by_folder.size_bytes() == sum(f.stat().st_size for f in files)
        pixels = by_folder.read_region((0, 0), 0, by_folder.dimensions).astype(np.int16)
        reference = svs.read_region((0, 0), 0, svs.dimensions).astype(np.int16)
        assert np.abs(pixels - reference).mean() < MAX_MEAN_PIXEL_DIFF
        key = by_folder.sha256_head()
    smallest = min(files, key=lambda f: f.stat().st_size)  # a label or thumbnail instance, not level 0
    with open_slide(smallest) as by_file:
        assert by_file.path == dicom_cmu and by_file.files == files and by_file.sha256_head() == key
        assert by_file.dimensions == (2220, 2967) and by_file.vendor == "dicom"


def test_cache_key_hashes_the_series_files_and_ignores_the_folder_name(dicom_cmu, tmp_path):
    files = sorted(dicom_cmu.glob("*.dcm"))
    with open_slide(dicom_cmu) as slide:
        key = slide.sha256_head()
    assert key == sha256_head(files) != sha256_head(files[:-1])
    assert key not in {sha256_head([f]) for f in files}
    moved = _copy_series(dicom_cmu, tmp_path / "renamed.series")
    with open_slide(moved) as slide:
        assert slide.sha256_head() == key and slide.slide_id == "renamed.series"  # dotted names kept whole
    changed = sorted(moved.glob("*.dcm"))
    with open(changed[0], "ab") as fh:
        fh.write(b"\0\0")
    assert sha256_head(changed) != key


def test_slide_paths_in_a_folder_of_slides(dicom_cmu, cmu_slide, tmp_path):
    series = _copy_series(dicom_cmu, tmp_path / "b-series")
    shutil.copy(cmu_slide, tmp_path / "a.svs")
    (tmp_path / "notes.txt").write_text("not a slide")
    (tmp_path / "empty").mkdir()
    dcm = sorted(series.glob("*.dcm"))[0]
    assert is_dicom_series(series) and not is_dicom_series(tmp_path) and not is_dicom_series(dcm)
    assert slide_paths_in(tmp_path) == [tmp_path / "a.svs", series]
    assert slide_paths_in(series) == [series]
    assert slide_location(dcm) == series and slide_location(tmp_path / "a.svs") == tmp_path / "a.svs"
    assert slide_id_of(dcm) == slide_id_of(series) == "b-series" and slide_id_of(tmp_path / "a.svs") == "a"
    # msrl extract / msrl analyze: a series is one slide, however it is named on the command line
    assert collect_slides([tmp_path]) == [tmp_path / "a.svs", series]
    assert collect_slides([dcm, series]) == [series]


# ---- what is not a slide, or a damaged one -------------------------------------------------------


def test_folder_without_dicom_files_is_not_a_slide(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotASlideError, match="folder without DICOM"):
        open_slide(tmp_path)


def test_other_dicom_objects_are_not_slides(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    shutil.copy(pydicom_data.get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")  # a CT image
    with pytest.raises(NotASlideError, match="none of its 1 .dcm files is a DICOM whole-slide image"):
        open_slide(tmp_path)


def test_two_series_in_one_folder_are_refused(dicom_cmu, cmu_slide, tmp_path):
    mixed = _copy_series(dicom_cmu, tmp_path / "mixed")
    second = _convert(cmu_slide, tmp_path / "second")  # the same image, a new SeriesInstanceUID
    for f in second.glob("*.dcm"):
        shutil.copy(f, mixed / f"b-{f.name}")
    with pytest.raises(SlideError, match="holds 2 DICOM series"):
        open_slide(mixed)


def test_truncated_level_or_misnamed_file_is_corrupt(dicom_cmu, tmp_path):
    truncated = _copy_series(dicom_cmu, tmp_path / "truncated")
    level0 = max(truncated.glob("*.dcm"), key=lambda f: f.stat().st_size)
    level0.write_bytes(level0.read_bytes()[: level0.stat().st_size // 2])
    with pytest.raises(CorruptSlideError, match="test read of level 0 failed"):
        open_slide(truncated)
    misnamed = _copy_series(dicom_cmu, tmp_path / "misnamed")
    (misnamed / "notes.dcm").write_text("not DICOM")
    with pytest.raises(CorruptSlideError, match="notes.dcm is not a readable DICOM file"):
        open_slide(misnamed)


# ---- msrl analyze --------------------------------------------------------------------------------


def _analyze(argv: list[str]) -> int:
    from msrl_model.infer.cli import register

    parser = argparse.ArgumentParser(prog="msrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.func(args)


def _features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        return f["coords"][:], f["features"][:]


def test_msrl_analyze_dicom_series_matches_the_svs(dicom_cmu, cmu_slide, tmp_path, capsys):
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle
    from msrl_model.infer.results import PredictionResult

    enc = build_encoder("builtin-he")
    bundle = make_random_bundle(tmp_path / "he.msrl", patch_dim=enc.dim, n_cases=40, seed=5,
                                encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})
    slides = tmp_path / "slides"  # the SVS and the DICOM series side by side: two slides
    slides.mkdir()
    shutil.copy(cmu_slide, slides / cmu_slide.name)
    series = _copy_series(dicom_cmu, slides / SERIES_NAME)
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["--bundle", str(bundle), "--out", str(out), "--cache", str(cache), "--device", "cpu", "--workers", "1",
              "--json", "--quiet"]
    assert _analyze([str(slides), *common]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(line["slide_id"], line["status"]) for line in lines] == [
        ("cmu_small_region", "ok"), (SERIES_NAME, "ok")]

    svs_coords, svs_features = _features(cache / "cmu_small_region.h5")
    coords, features = _features(cache / f"{SERIES_NAME}.h5")
    assert len(svs_coords) > 10
    np.testing.assert_array_equal(coords, svs_coords)  # the same tissue patches, in the same order
    rel = np.linalg.norm(features - svs_features, axis=1) / np.linalg.norm(svs_features, axis=1)
    cosine = (features * svs_features).sum(1) / (np.linalg.norm(features, axis=1)
                                                  * np.linalg.norm(svs_features, axis=1))
    assert rel.max() < MAX_FEATURE_REL_L2 and cosine.min() > MIN_FEATURE_COSINE
    result = PredictionResult.from_json((out / f"{SERIES_NAME}.json").read_text())
    np.testing.assert_array_equal(np.asarray(result.coords), svs_coords)

    # one .dcm file of the series names the same slide: its result is up to date
    one_file = sorted(series.glob("*.dcm"))[0]
    assert _analyze([str(one_file), *common]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["slide_id"], line["status"]) == (SERIES_NAME, "skipped")


# ---- the app -------------------------------------------------------------------------------------


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The texts of the error dialogs, captured instead of blocking."""
    from PySide6.QtWidgets import QMessageBox

    shown: list[str] = []
    monkeypatch.setattr(QMessageBox, "critical", lambda parent, title, text, *a, **k: shown.append(text))
    return shown


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, errors):
    from PySide6.QtCore import QSettings

    from msrl_app.window import MainWindow

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "user"))
    monkeypatch.setenv("MSRL_STUDIO_LOG_DIR", str(tmp_path / "logs"))
    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


def test_app_opens_the_dicom_folder_from_the_menu_a_file_and_a_drop(qtbot, window, errors, dicom_cmu, monkeypatch):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent
    from PySide6.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(dicom_cmu))
    assert window.open_dicom_action in window.menuBar().actions()[0].menu().actions()
    window.open_dicom_action.trigger()  # File ▸ Open DICOM folder…
    viewer = window.viewer
    assert viewer.slide is not None and viewer.slide.path == dicom_cmu
    qtbot.waitUntil(lambda: viewer.thumbnail() is not None and viewer.visible_tiles() and
                    viewer.visible_tiles() <= viewer.cached_tiles(),
                    timeout=15000)  # the overview and every visible tile decoded from the series
    assert window.properties.value("Slide", "Vendor") == "dicom"
    assert window.properties.value("Resolution", "Dimensions") == "2,220 × 2,967 px"
    assert window.properties.value("Resolution", "Microns per pixel").startswith("0.499 µm/px")
    assert SERIES_NAME in window.windowTitle() and window.state.slide == dicom_cmu
    window.close_slide()
    assert window.open_slide(sorted(dicom_cmu.glob("*.dcm"))[-1])  # File ▸ Open slide… with a .dcm file
    assert window.viewer.slide.path == dicom_cmu and window.recent_files()[0] == str(dicom_cmu)
    window.close_slide()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dicom_cmu))])  # a dropped folder
    window.dropEvent(QDropEvent(QPointF(300, 300), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                                Qt.KeyboardModifier.NoModifier))
    assert window.viewer.slide is not None and window.viewer.slide.path == dicom_cmu
    assert errors == []


def test_app_says_why_a_plain_folder_does_not_open(qtbot, window, errors, tmp_path):
    (tmp_path / "empty").mkdir()
    assert not window.open_slide(tmp_path / "empty")
    assert len(errors) == 1 and "folder without DICOM (.dcm) files" in errors[0]


def test_msrl_app_command_line_opens_the_dicom_folder(dicom_cmu, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MSRL_STUDIO_LOG_DIR=str(tmp_path / "logs"),
               HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    run = subprocess.run([sys.executable, "-m", "msrl_app", str(dicom_cmu), "--quit"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    log = (tmp_path / "logs" / "msrl-studio.log").read_text()
    assert f"opened {dicom_cmu} (dicom, openslide, 2220x2967" in log
