"""The worklist without Qt: scanning a folder / list file, the statuses and findings of Analyze all with the
real engine (tiny random bundle, the CMU slide, a blank slide, a picture), worklist.json, resume, cancel."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from msrl_app.state import AppState
from msrl_app.worklist_model import WorklistModel
from msrl_model.infer.worklist import SlideStatus, Worklist, WorklistEntry, scan_source


def case_folder(folder: Path, cmu_slide: Path) -> Path:
    """A good slide, a blank slide, a picture that is no slide, and files that are no worklist entries."""
    from PIL import Image

    from msrl_model.synth.slides import make_slide

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(cmu_slide, folder / "cmu.svs")
    make_slide(folder / "blank.svs", 768, 768, seed=3, kind="blank")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / "photo.png")
    (folder / "notes.txt").write_text("not listed\n")
    (folder / ".hidden.svs").write_text("not listed\n")
    return folder


def test_scan_folder_list_file_and_dicom_series(tmp_path):
    for name in ("b.svs", "a.TIF", "scan.jpg", "readme.md"):
        (tmp_path / name).write_bytes(b"x")
    series = tmp_path / "dicom-case.1"  # a series is named by its whole folder name
    series.mkdir()
    (series / "level-0.dcm").write_bytes(b"x")
    (tmp_path / "empty-folder").mkdir()
    assert [p.name for p in scan_source(tmp_path)] == ["a.TIF", "b.svs", "dicom-case.1", "scan.jpg"]
    assert scan_source(series) == [series]  # a folder of .dcm files is one slide
    assert [e.slide_id for e in Worklist.open(tmp_path, tmp_path / "out").entries] == ["a", "b", "dicom-case.1", "scan"]
    listing = tmp_path / "cases.txt"
    listing.write_text(f"# my cases\nb.svs\n\n{series / 'level-0.dcm'}\n")
    assert scan_source(listing) == [tmp_path / "b.svs", series]  # a listed .dcm file stands for its series


def test_analyze_all_statuses_findings_resume(tmp_path, cmu_slide, builtin_he_bundle, monkeypatch):
    monkeypatch.setenv("MSRL_STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    folder = case_folder(tmp_path / "cases", cmu_slide)
    state = AppState()
    state.device = "cpu"
    state.set_bundle(builtin_he_bundle)  # InlineJob: loaded here
    model = WorklistModel(state)
    seen: list[tuple[int, str]] = []
    model.events.entry.connect(lambda i: seen.append((i, model.entries[i].status)))
    assert model.open(folder)
    assert [e.name for e in model.entries] == ["blank.svs", "cmu.svs", "photo.png"]
    assert all(e.status == SlideStatus.NOT_ANALYSED for e in model.entries)
    assert set(model.thumbnails) == {0, 1}  # the picture is no slide: no thumbnail
    assert model.thumbnails[1].shape[2] == 3 and max(model.thumbnails[1].shape[:2]) == 96

    finished: list[str] = []
    model.events.finished.connect(finished.append)
    assert model.analyze_all()
    assert finished == ["done"]
    blank, cmu, photo = model.entries
    assert (cmu.status, blank.status, photo.status) == ("done", "failed", "failed")
    assert blank.message.startswith("no tissue found on blank.svs")
    assert "photo.png is a plain PNG image, not a whole-slide image" in photo.message
    # each slide went queued -> running -> done/failed, in order
    assert [s for i, s in seen if i == 1] == ["queued", "running", "done"]
    # the findings are the result's: risk group of the survival task, the most probable class of each other task
    result = json.loads(Path(cmu.result).read_text())
    survival = result["tasks"]["survival"]["survival"]
    assert cmu.risk_group == survival["risk_group"] and cmu.risk_percentile == survival["percentile"]
    assert [f.task for f in cmu.findings] == [n for n, t in result["tasks"].items() if t["kind"] == "classification"]
    for f in cmu.findings:
        c = result["tasks"][f.task]["classification"]
        assert f.probability == max(c["probabilities"])
    # the same files as `msrl analyze --out`, and the list beside them
    out = Path(model.worklist.out_dir)
    assert out == folder / "msrl-results" and (out / "cmu.csv").is_file() and (out / "cmu-linked-cases.csv").is_file()
    saved = json.loads((out / "worklist.json").read_text())
    assert [e["status"] for e in saved["entries"]] == ["failed", "done", "failed"]
    assert saved["bundle_sha256"] == state.predictors.current().bundle.fingerprint

    # reopening reads the saved statuses; a second run skips the done slide (no extraction) and keeps its result
    stamp = Path(cmu.result).stat().st_mtime_ns
    again = WorklistModel(state)
    assert again.open(folder) and [e.status for e in again.entries] == ["failed", "done", "failed"]
    stages: list[str] = []
    again.events.progress.connect(lambda tick: stages.append(tick.message))
    assert again.analyze_all()
    assert Path(again.entries[1].result).stat().st_mtime_ns == stamp
    assert not any("read+encode" in m or "cached" in m for m in stages if m.startswith("cmu.svs"))
    assert again.entries[1].status == "done" and again.entries[1].findings == cmu.findings

    # opening the done entry shows its result with the cohort risks
    assert again.open_entry(1)
    assert state.slide == folder / "cmu.svs" and state.result.slide_id == "cmu"
    assert set(state.cohort_risks) == {"survival"} and len(state.cohort_risks["survival"]) > 0

    # another model loaded: the done rows say they are that model's until Analyze all renews them
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle

    assert not again.other_model
    enc = build_encoder("builtin-he")
    state.set_bundle(make_random_bundle(tmp_path / "other", patch_dim=enc.dim, seed=7,
                                        encoder={"name": enc.name, "version": enc.version, "dim": enc.dim}))
    assert again.other_model


def test_cancel_keeps_finished_slides_and_resumes(tmp_path, cmu_slide, builtin_he_bundle, monkeypatch):
    monkeypatch.setenv("MSRL_STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    folder = case_folder(tmp_path / "cases", cmu_slide)
    state = AppState()
    state.device = "cpu"
    state.set_bundle(builtin_he_bundle)
    model = WorklistModel(state)
    assert model.open(folder)

    def stop_inside_cmu(tick) -> None:  # cancel once the CMU slide has encoded its first batch
        if tick.message.startswith("cmu.svs: read+encode") and not tick.message.startswith("cmu.svs: read+encode 0/"):
            model.cancel()

    model.events.progress.connect(stop_inside_cmu)
    finished: list[str] = []
    model.events.finished.connect(finished.append)
    assert model.analyze_all()
    assert finished == ["cancelled"]
    assert [e.status for e in model.entries] == ["failed", "not analysed", "not analysed"]
    assert model.entries[1].message.startswith("cancelled")
    partial = list((tmp_path / "cache" / "features").glob("cmu.partial.h5"))
    assert partial, "the encoded tiles of the cancelled slide are kept"
    saved = Worklist.open(folder, model.worklist.out_dir)
    assert [e.status for e in saved.entries] == ["failed", "not analysed", "not analysed"]

    model.events.progress.disconnect(stop_inside_cmu)
    messages: list[str] = []
    model.events.progress.connect(lambda tick: messages.append(tick.message))
    assert model.analyze_all() and finished[-1] == "done"
    assert [e.status for e in model.entries] == ["failed", "done", "failed"]
    first = next(m for m in messages if m.startswith("cmu.svs: read+encode"))
    assert not first.startswith("cmu.svs: read+encode 0/"), first  # resumed where the cancel stopped


def test_reopened_entries_left_running_read_not_analysed(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "b.svs").write_bytes(b"x")
    out = tmp_path / "out"
    Worklist(str(tmp_path), str(out), [
        WorklistEntry(str(tmp_path / "a.svs"), "a", SlideStatus.RUNNING),
        WorklistEntry(str(tmp_path / "b.svs"), "b", SlideStatus.DONE, result=str(out / "gone.json"))]).save()
    reopened = Worklist.open(tmp_path, out)
    assert [e.status for e in reopened.entries] == ["not analysed", "not analysed"]
    assert reopened.entries[0].message.startswith("interrupted") and reopened.entries[1].message == ""



def test_analyze_all_uses_the_regions_saved_for_a_slide(tmp_path, cmu_slide, builtin_he_bundle, monkeypatch):
    import shapely

    monkeypatch.setenv("MSRL_STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cases"
    folder.mkdir()
    slide = Path(shutil.copy(cmu_slide, folder / "cmu.svs"))
    state = AppState()
    state.device = "cpu"
    state.set_bundle(builtin_he_bundle)
    assert state.open_slide(slide) is not None
    assert state.regions.add(shapely.box(0, 0, 1100, 1500), "include")  # the top-left quarter, saved for the slide
    state.close_slide()
    model = WorklistModel(state)
    assert model.open(folder) and model.analyze_all()
    entry = model.entries[0]
    assert entry.status == "done"
    coords = np.asarray(json.loads(Path(entry.result).read_text())["coords"])
    assert len(coords) > 0 and (coords[:, 0] < 1100).all() and (coords[:, 1] < 1500).all()


@pytest.mark.parametrize("flagged", [True, False])
def test_a_slide_unlike_the_training_cohort_says_so_in_its_row(flagged):
    """The applicability check's verdict reaches the row (and worklist.json), as the result's banner shows it."""
    from types import SimpleNamespace

    from msrl_app.worklist import UNLIKE_TRAINING, findings_text
    from msrl_model.infer.batch import SlideAnalysis, SlideOutcome
    from msrl_model.infer.worklist import WorklistEntry, entry_after

    survival = SimpleNamespace(risk_group="low", percentile=12.0)
    result = SimpleNamespace(tasks={"survival": SimpleNamespace(survival=survival, classification=None)},
                             warnings=[], applicability=SimpleNamespace(flagged=flagged))
    entry = entry_after(WorklistEntry(path="/s/a.svs", slide_id="a"),
                        SlideAnalysis(SlideOutcome("/s/a.svs", "a", "ok", output="/o/a.json"), result))
    assert entry.unlike_training is flagged
    assert findings_text(entry).startswith(UNLIKE_TRAINING) is flagged
    assert "Low risk, percentile 12" in findings_text(entry)
    assert WorklistEntry.from_dict(json.loads(json.dumps(asdict(entry)))) == entry  # survives worklist.json
