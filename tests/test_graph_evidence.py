"""Whether the linked cases earned their place, as the bundle's cross-validation measured it
(msrl_model/infer/graph_evidence.py), and how the app and the PDF say it."""

from __future__ import annotations

import math

import pytest

from msrl_model.infer.graph_evidence import ablation_key, ablation_metrics, graph_evidence


def _metrics(msrl: float, no_graph: float | None, p_none: float, shuffled: float | None = None,
             p_shuffled: float = math.nan) -> dict:
    m = {"c_index": {"mean": msrl, "std": 0.01, "n_folds": 15}}
    if no_graph is not None:
        m[ablation_key("c_index", "no_graph")] = {"mean": no_graph, "std": 0.01, "n_folds": 15, "p": p_none}
    if shuffled is not None:
        m[ablation_key("c_index", "shuffled_buffer")] = {"mean": shuffled, "std": 0.01, "n_folds": 15,
                                                          "p": p_shuffled}
    return m


@pytest.mark.parametrize("metrics, expected", [
    (_metrics(0.72, 0.69, 0.01, 0.70, 0.03), True),  # better than both, significantly
    (_metrics(0.72, 0.69, 0.01, 0.70, 0.20), False),  # one ablation not significantly worse
    (_metrics(0.69, 0.70, 0.01), False),  # significantly different, the wrong way
    (_metrics(0.72, 0.69, math.nan), False),  # undefined p: not shown to help
    (_metrics(0.72, None, math.nan), None),  # an older bundle: nothing recorded, nothing claimed
])
def test_graph_earns_its_place_only_when_it_beats_every_ablation_significantly(metrics, expected):
    earned, note = graph_evidence("survival", metrics)
    assert earned is expected
    if expected is None:
        assert note == ""
    else:
        assert "C-index 0.720" in note or "C-index 0.690" in note
        assert ("did not measurably improve" in note) is (expected is False)
        assert "linked to nothing" in note


def test_ablation_metrics_take_the_p_value_of_their_own_row():
    summaries = {"no_graph": {"c_index": {"mean": 0.69, "std": 0.02, "n_folds": 5}},
                 "abmil": {"c_index": {"mean": 0.6, "std": 0.02, "n_folds": 5}}}
    sig = [{"task": "survival", "method": "no_graph", "metric": "c_index", "p": 0.4},
           {"task": "stage", "method": "no_graph", "metric": "c_index", "p": 0.01}]
    out = ablation_metrics(summaries, sig, "survival")
    assert out == {"c_index@no_graph": {"mean": 0.69, "std": 0.02, "n_folds": 5, "p": 0.4}}  # abmil is no ablation
