"""``msrl analyze`` and the app's File ▸ Export results write the same files, byte for byte.

Both go through :func:`msrl_model.infer.export.write_results`; this test runs the two programs
end to end (the app through ``msrl-app SLIDE --analyze --export OUT.json --quit``) on the same slide
and bundle and compares the JSON and both CSVs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys

import pytest

from msrl_model.infer.cli import register
from msrl_model.infer.export import result_paths


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle

    enc = build_encoder("builtin-he")
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "parity", patch_dim=enc.dim, n_cases=30, seed=3,
                              encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from msrl_model.synth.slides import make_slide

    return make_slide(tmp_path_factory.mktemp("slides") / "parity-slide.svs", 1536, 1024, seed=4)


def test_cli_and_app_write_identical_results(tmp_path, bundle, slide):
    cli_out, app_out = tmp_path / "cli", tmp_path / "app"
    parser = argparse.ArgumentParser(prog="msrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", str(slide), "--bundle", str(bundle), "--out", str(cli_out), "--device",
                              "cpu", "--project", "TCGA-LUAD", "--quiet"])
    assert args.func(args) == 0

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MSRL_STUDIO_LOG_DIR=str(tmp_path / "logs"),
               MSRL_STUDIO_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    app_json = app_out / f"{slide.stem}.json"
    app_out.mkdir()
    run = subprocess.run([sys.executable, "-m", "msrl_app", str(slide), "--bundle", str(bundle), "--device", "cpu",
                          "--project", "TCGA-LUAD", "--analyze", "--export", str(app_json), "--quit"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr

    cli_files, app_files = result_paths(cli_out / f"{slide.stem}.json"), result_paths(app_json)
    for cli_file, app_file in zip(cli_files, app_files):
        assert cli_file.is_file() and app_file.is_file(), (cli_file, app_file)
        assert cli_file.read_text(encoding="utf-8") == app_file.read_text(encoding="utf-8"), cli_file.name
    result = json.loads(cli_files[0].read_text(encoding="utf-8"))
    assert result["project"] == "TCGA-LUAD" and result["tasks"]  # a real result, not two empty files
    assert cli_files[1].read_text(encoding="utf-8").count("\n") > len(result["tasks"])

    # the influences and graph contributions of the JSON are the CSVs' (one writer, no rounding)
    keys = {(r["task"], r["key"]): r["value"] for r in csv.DictReader(io.StringIO(cli_files[1].read_text("utf-8")))}
    linked = list(csv.DictReader(io.StringIO(cli_files[2].read_text(encoding="utf-8"))))
    assert len(linked) == sum(len(t["linked_cases"]) for t in result["tasks"].values())
    for name, task in result["tasks"].items():
        rows = [r for r in linked if r["task"] == name]
        assert [int(r["buffer_row"]) for r in rows] == [c["row"] for c in task["linked_cases"]]
        if task["kind"] == "survival":
            s = task["survival"]
            assert float(keys[(name, "graph_contribution")]) == s["graph_contribution"]
            assert float(keys[(name, "graph_contribution")]) == pytest.approx(s["risk"] - s["risk_query_alone"])
            assert [float(r["influence_risk"]) for r in rows] == [c["influence_risk"] for c in task["linked_cases"]]
            assert all(v == "" for r in rows for k, v in r.items() if k.startswith("influence_p("))
        else:
            c = task["classification"]
            for i, cls in enumerate(c["classes"]):
                assert float(keys[(name, f"graph_contribution({cls})")]) == c["graph_contribution"][i]
                assert [float(r[f"influence_p({cls})"]) for r in rows] == [
                    case["influence_probabilities"][i] for case in task["linked_cases"]]
            assert all(r["influence_risk"] == "" for r in rows)
