"""``bench app``: the app's log read for its model-ready and Analyze times, and one real launch (no timing
assertions: the figures are checked for consistency, not for speed)."""

from __future__ import annotations

import json
from datetime import datetime

from msrl_model.bench.__main__ import main
from msrl_model.bench.app import log_times

LOG = """2026-12-07 11:54:09,359 INFO msrl_app: MSRL Studio 0.1.0 starting
2026-12-07 11:54:09,900 INFO msrl_app.main: window shown
2026-12-07 11:54:10,336 INFO msrl_app.state: analyze /s.svs with /b (device cpu, project None)
2026-12-07 11:54:17,097 INFO msrl_app.state: model bundle /b (4 tasks · SYNTHETIC training cohort)
2026-12-07 11:54:20,154 INFO msrl_app.state: analysis done: {'survival': {}}
2026-12-07 11:54:21,000 INFO msrl_app.state: model bundle /other (1 tasks)
"""


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_log_times_takes_each_first_mark_to_the_millisecond():
    marks = log_times(LOG)
    assert marks == {"starting": _epoch("2026-12-07 11:54:09,359"), "window": _epoch("2026-12-07 11:54:09,900"),
                     "analyze": _epoch("2026-12-07 11:54:10,336"),
                     "ready": _epoch("2026-12-07 11:54:17,097"), "done": _epoch("2026-12-07 11:54:20,154")}
    assert log_times("no stamps here\nmodel bundle x") == {}


def test_one_launch_reports_consistent_times(tmp_path, capsys):
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle
    from msrl_model.synth.slides import make_slide

    enc = build_encoder("builtin-he")
    bundle = make_random_bundle(tmp_path / "tiny", patch_dim=enc.dim,
                                encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})
    slide = make_slide(tmp_path / "s.svs", 1024, 768, seed=3)
    assert main(["app", "--slide", str(slide), "--bundle", str(bundle), "--runs", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["runs"] == 1 and len(record["model_ready_s_all"]) == 1
    assert 0 < record["startup_s_median"] < record["window_s_median"] < record["model_ready_s_median"]
    assert record["model_ready_s_median"] < record["process_s_median"]
    assert 0 < record["analyze_s_median"] < record["process_s_median"]
    assert record["model_ready_met"] == (record["model_ready_s_median"] <= record["model_ready_target_s"])
