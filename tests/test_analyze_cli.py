"""``msrl analyze`` end to end on real slide files with a random bundle at the builtin-he dimension."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from msrl_model.encoders import build_encoder
from msrl_model.infer.cli import register
from msrl_model.infer.random_bundle import make_random_bundle
from msrl_model.infer.results import PredictionResult


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="msrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    enc = build_encoder("builtin-he")
    return make_random_bundle(tmp_path_factory.mktemp("b") / "he.msrl", patch_dim=enc.dim, n_cases=40, seed=5,
                              encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # shared feature cache: each slide is extracted once


def test_analyze_cmu_slide_writes_full_result_and_resumes(cmu_slide, bundle, cache, tmp_path, capsys):
    out = tmp_path / "out"
    common = [str(cmu_slide), "--bundle", str(bundle), "--out", str(out), "--cache", str(cache), "--device", "cpu",
              "--workers", "2", "--project", "TCGA-LUAD", "--json", "--quiet"]
    assert run(common) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["status"] == "ok" and line["slide_id"] == "cmu_small_region"
    assert set(line["summary"]) == {"survival", "EGFR_mut"} and 0 <= line["summary"]["survival"]["percentile"] <= 100
    result_path = out / "cmu_small_region.json"
    assert line["output"] == str(result_path)
    r = PredictionResult.from_json(result_path.read_text())
    assert r.slide_sha256_head and r.bundle_sha256 and r.mode == "msrl" and r.project == "TCGA-LUAD"
    assert r.encoder["name"] == "builtin-he" and r.patch_size_level0 == 257 and len(r.coords) > 10
    for t in r.tasks.values():
        assert len(t.attention) == len(r.coords) and t.linked_cases and t.pathways is not None
    s = r.tasks["survival"].survival
    assert s.curve.survival[0] == 1.0 and s.risk_group in ("low", "intermediate", "high")
    assert r.tasks["EGFR_mut"].classification.predicted in ("wt", "mut")
    report = json.loads((out / "analyze_report.json").read_text())
    assert report["counts"] == {"ok": 1, "skipped": 0, "error": 0}
    # same slide, same bundle: skipped, result untouched
    mtime = result_path.stat().st_mtime_ns
    assert run(common) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"
    assert result_path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("cached", [False, True])
def test_a_first_compile_of_the_encoder_is_a_note(cmu_slide, bundle, cache, tmp_path, capsys, monkeypatch, cached):
    """Before numba has compiled builtin-he's CPU kernel on this installation, msrl analyze says so (one
    "note:" line on stderr, not with --quiet) before the wait; once compiled it says nothing."""
    from msrl_model.encoders import builtin_he, builtin_he_cpu

    monkeypatch.setattr(builtin_he_cpu, "cached_on_disk", lambda: cached)
    argv = [str(cmu_slide), "--bundle", str(bundle), "--out", str(tmp_path / "out"), "--cache", str(cache),
            "--device", "cpu", "--json"]
    assert run(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: Preparing")]
    assert notes == ([] if cached else [f"note: {builtin_he.COMPILE_NOTICE}"])
    assert run([*argv, "--quiet", "--out", str(tmp_path / "again")]) == 0
    assert "note: Preparing" not in capsys.readouterr().err


def test_tampered_bundle_exits_2_with_one_line(cmu_slide, bundle, tmp_path, capsys):
    bad = tmp_path / "bad"
    import zipfile

    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(bad)
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (bad / "weights.safetensors").write_bytes(bytes(data))
    code = run([str(cmu_slide), "--bundle", str(bad), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("error: ") and "weights.safetensors" in err
    assert not (tmp_path / "out").exists()


def test_directory_with_good_and_bad_slide_exits_3(cmu_slide, bundle, cache, tmp_path, capsys):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_slide, slides / cmu_slide.name)
    (slides / "broken.svs").write_bytes(b"this is not a slide" * 100)
    out = tmp_path / "out"
    code = run([str(slides), "--bundle", str(bundle), "--out", str(out), "--cache", str(cache), "--device", "cpu",
                "--workers", "2", "--json", "--quiet"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 3
    status = {x["slide_id"]: x["status"] for x in lines}
    assert status == {"broken": "error", "cmu_small_region": "ok"}
    assert (out / "cmu_small_region.json").is_file() and not (out / "broken.json").exists()
    report = json.loads((out / "analyze_report.json").read_text())
    broken = next(s for s in report["slides"] if s["slide_id"] == "broken")
    assert broken["message"] and "\n" not in broken["message"]
    assert report["counts"] == {"ok": 1, "skipped": 0, "error": 1}


def test_expression_csv_runs_msrl_multi_for_matching_slide(cmu_slide, bundle, cache, tmp_path):
    from msrl_model.infer.bundle import load_bundle

    genes = load_bundle(bundle).genomics.genes
    csv = tmp_path / "expression.csv"
    csv.write_text("case_id," + ",".join(genes) + "\ncmu_small," + ",".join(str(i) for i in range(len(genes))) + "\n")
    out = tmp_path / "out"
    assert run([str(cmu_slide), "--bundle", str(bundle), "--out", str(out), "--cache", str(cache),
                "--device", "cpu", "--workers", "2", "--expression", str(csv), "--quiet"]) == 0
    r = PredictionResult.from_json((out / "cmu_small_region.json").read_text())
    assert r.mode == "msrl_multi" and all(t.mode == "msrl_multi" for t in r.tasks.values())
    assert run([str(cmu_slide), "--bundle", str(bundle), "--out", str(out), "--expression",
                str(tmp_path / "missing.csv"), "--quiet"]) == 2


def test_usage_errors_exit_2(bundle, tmp_path, capsys):
    assert run([str(tmp_path / "nope.svs"), "--bundle", str(bundle), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run(["--bundle", str(bundle)])
    assert exc.value.code == 2


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        run(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "3  some slides failed" in text and "analyze_report.json" in text


def test_synthetic_tissue_and_blank_slides(bundle, cache, tmp_path, capsys):
    from msrl_model.synth.slides import make_slide

    slides = tmp_path / "synth"
    slides.mkdir()
    make_slide(slides / "tissue.svs", 1024, 1024, seed=2)
    make_slide(slides / "blank.svs", 768, 768, seed=3, kind="blank")
    out = tmp_path / "out"
    code = run([str(slides), "--bundle", str(bundle), "--out", str(out), "--cache", str(cache), "--device", "cpu",
                "--workers", "2", "--json", "--quiet"])
    lines = {x["slide_id"]: x for x in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert code == 3 and lines["tissue"]["status"] == "ok" and lines["blank"]["status"] == "error"
    assert "tissue" in lines["blank"]["message"].lower()
    r = PredictionResult.from_json((out / "tissue.json").read_text())
    assert r.patch_size_level0 == 256 and len(r.coords) == len(r.tasks["survival"].attention) > 0
