"""Predictor on a random bundle: well-formed outputs, links equal to the dense reference, MSRL_multi, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from msrl_model.errors import BundleError, MSRLError
from msrl_model.features.h5io import write_features
from msrl_model.infer.bundle import load_bundle
from msrl_model.infer.random_bundle import make_random_bundle
from msrl_model.infer.engine import DenseReference
from msrl_model.infer.predictor import Predictor, percentile_of, survival_curve
from msrl_model.infer.results import PredictionResult
from msrl_model.nn.heads import survival_from_logits
from msrl_model.nn.msrl import MSRLNet, SlideBatch

N_PATCHES = 30


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("b") / "bundle", n_cases=40, seed=1)


@pytest.fixture(scope="module")
def predictor(bundle_path) -> Predictor:
    return Predictor.from_bundle(bundle_path, device="cpu")


@pytest.fixture(scope="module")
def slide():
    rng = np.random.default_rng(7)
    features = rng.standard_normal((N_PATCHES, 32)).astype(np.float32)
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(5)), -1).reshape(-1, 2)  # (30, 2) (col, row)
    return features, (grid * 512).astype(np.int64), 512


@pytest.fixture(scope="module")
def result(predictor, slide) -> PredictionResult:
    return predictor.predict(*slide, project="TCGA-LUAD", slide_id="s1")


def test_survival_outputs_are_well_formed(result):
    s = result.tasks["survival"].survival
    assert s is not None and result.tasks["survival"].classification is None
    curve = np.array(s.curve.survival)
    assert curve[0] == 1.0 and np.all((curve >= 0) & (curve <= 1)) and np.all(np.diff(curve) <= 0)
    assert s.curve.times[0] == 0.0 and np.all(np.diff(s.curve.times) > 0)
    assert len(s.curve.times) == len(s.bin_edges_months) - 1 and s.bin_edges_months[-1] is None
    assert s.risk == pytest.approx(-sum(s.bin_survival), abs=1e-6)
    assert 0 <= s.percentile <= 100 and 0 <= s.percentile_in_project <= 100 and s.project_cases == 14
    t1, t2 = s.risk_thresholds
    assert s.risk_group == ("low" if s.risk < t1 else "high" if s.risk > t2 else "intermediate")
    below = [t for t, v in zip(s.curve.times[1:], s.curve.survival[1:]) if v <= 0.5]
    assert s.median_survival_months == (below[0] if below else None)
    km = np.array(s.cohort_km.survival)
    assert km[0] == 1.0 and np.all(np.diff(km) <= 0) and np.all(np.diff(s.neighbours_km.survival) <= 0)


def test_classification_probabilities(result):
    c = result.tasks["EGFR_mut"].classification
    assert c.classes == ["wt", "mut"] and sum(c.probabilities) == pytest.approx(1.0, abs=1e-9)
    assert c.predicted == c.classes[int(np.argmax(c.probabilities))]


@pytest.mark.parametrize("task", ["survival", "EGFR_mut"])
def test_linked_cases_equal_dense_reference_edges(bundle_path, slide, result, task):
    b = load_bundle(bundle_path)
    tb = b.tasks[task]
    net = MSRLNet(b.config, tb.spec, tb.variant)
    net.load_state_dict(tb.state_dict)
    net.eval()
    features, coords, size = slide
    with torch.no_grad():
        h, attn = net.encode_slides(SlideBatch.from_bags([torch.from_numpy(features)], [torch.from_numpy(coords)],
                                                         [size]))
        ref = DenseReference(net.gsl, net.gcn, torch.from_numpy(tb.buffer_nodes), b.config.k).predict(
            net.node_features(h))[0]
    linked = result.tasks[task].linked_cases
    weights = [c.weight for c in linked]
    assert linked and all(w > 0 for w in weights) and weights == sorted(weights, reverse=True)
    assert [c.row for c in linked] == ref.linked.tolist()
    np.testing.assert_allclose(weights, ref.linked_weights.numpy(), atol=1e-5)
    rows = [c.row for c in linked]
    assert [c.case["case_id"] for c in linked] == tb.cases.case_id.iloc[rows].tolist()
    np.testing.assert_allclose([c.pathways for c in linked], tb.pathways[rows])
    att = np.array(result.tasks[task].attention)
    np.testing.assert_allclose(att, attn[0].numpy(), atol=1e-6)
    assert len(att) == len(result.coords) == N_PATCHES and att.sum() == pytest.approx(1.0, abs=1e-5)
    p = result.tasks[task].pathways
    w = np.array(weights)
    np.testing.assert_allclose(p.neighbours_mean, w @ tb.pathways[rows] / w.sum(), atol=1e-6)
    assert len(p.reconstructed) == len(p.names) == 4


def test_suggested_project_is_weighted_majority(result):
    t = result.tasks["survival"]
    score: dict[str, float] = {}
    for c in t.linked_cases:
        score[c.case["project"]] = score.get(c.case["project"], 0) + c.weight
    assert t.suggested_project == max(score, key=score.get) == result.suggested_project
    assert result.project == "TCGA-LUAD"


def test_json_round_trip_is_exact(result, tmp_path):
    text = result.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    back = PredictionResult.from_json(text)
    assert back == result and back.to_json() == text
    d = json.loads(text)
    assert d["mode"] == "msrl" and d["synthetic_training_cohort"] is True and "Research use only" in d[
        "research_use_only"]
    assert d["tasks"]["EGFR_mut"]["metrics"]["f1"]["mean"] is None


def test_a_large_buffer_is_screened_in_int8_with_the_same_result(bundle_path, slide, result, monkeypatch):
    """From INT8_SCREEN_ROWS buffer cases the engine screens in int8 (a quarter of the memory): the result is
    the fp32 engine's, bit for bit (here the threshold is lowered to this 40-case buffer)."""
    import msrl_model.infer.task_runtime as task_runtime

    monkeypatch.setattr(task_runtime, "INT8_SCREEN_ROWS", 10)
    large = Predictor.from_bundle(bundle_path, device="cpu")
    assert large.predict(*slide, project="TCGA-LUAD", slide_id="s1") == result
    assert {runtime.engine.screen for runtime in large._tasks.values()} == {"int8"}


def test_msrl_multi_differs_and_is_labelled(predictor, slide, result):
    g = predictor.bundle.genomics
    expr = pd.Series({gene: 2.0 * i for i, gene in enumerate(g.genes)})
    multi = predictor.predict(*slide, expression=expr)
    assert multi.mode == "msrl_multi" and all(t.mode == "msrl_multi" for t in multi.tasks.values())
    assert result.mode == "msrl" and all(t.mode == "msrl" for t in result.tasks.values())
    assert multi.tasks["survival"].survival.risk != result.tasks["survival"].survival.risk
    assert multi.tasks["EGFR_mut"].classification.probabilities != result.tasks["EGFR_mut"].classification.probabilities
    assert not multi.warnings
    # a dict with missing genes: warned, filled with the training mean
    partial = predictor.predict(*slide, expression={g.genes[0]: 1.0})
    assert any("11 of 12 genes missing" in w for w in partial.warnings)
    with pytest.raises(MSRLError, match="none of the bundle's 12 genes"):
        predictor.predict(*slide, expression={"NOT_A_GENE": 1.0})


def test_expression_scaling(predictor):
    g = predictor.bundle.genomics
    packed, warnings = predictor.expression_input({gene: float(m) for gene, m in zip(g.genes, g.scaler_mean)})
    assert packed.shape == (1, 12) and np.allclose(packed, 0) and not warnings


def test_raw_expression_scale_applies_log1p(tmp_path, slide):
    p = Predictor.from_bundle(make_random_bundle(tmp_path / "raw", n_cases=12, seed=2, thumbnails=False,
                                                 expression_scale="raw"), device="cpu")
    g = p.bundle.genomics
    raw = {gene: float(np.expm1(m)) for gene, m in zip(g.genes, g.scaler_mean)}
    packed, _ = p.expression_input(raw)  # demo groups are disjoint and in gene order: columns = genes
    mean, std = np.asarray(g.scaler_mean, np.float64), np.asarray(g.scaler_std, np.float64)
    # log1p(expm1(m)) = m where m >= 0; negative raw values are clipped to 0 before log1p
    want = np.where(mean >= 0, 0.0, (0.0 - mean) / std)
    assert (mean < 0).any() and (mean >= 0).any()
    np.testing.assert_allclose(packed[0], want, atol=1e-5)


def test_wrong_feature_dim_and_encoder_are_refused(predictor, slide, tmp_path):
    features, coords, size = slide
    with pytest.raises(BundleError, match="expects 32-d"):
        predictor.predict(features[:, :16], coords, size)
    path = tmp_path / "s.h5"
    write_features(path, features, coords, {"encoder": "builtin-he", "encoder_version": "0.9",
                                           "patch_size_level0": size, "patch_size": 256, "target_mpp": 0.5})
    with pytest.raises(BundleError, match="re-extract"):
        predictor.predict_features_file(path)
    write_features(path, features, coords, {"encoder": "builtin-he", "encoder_version": "1.0",
                                           "patch_size_level0": size, "patch_size": 256, "target_mpp": 0.5,
                                           "slide_id": "s1"})
    r = predictor.predict_features_file(path, project="TCGA-LUAD")
    assert r.slide_id == "s1" and r.tasks["survival"].survival.risk == pytest.approx(
        predictor.predict(features, coords, size).tasks["survival"].survival.risk)


def test_unknown_project_has_no_project_percentile(predictor, slide):
    r = predictor.predict(*slide, project="TCGA-XXXX")
    assert r.tasks["survival"].survival.percentile_in_project is None
    assert any("TCGA-XXXX" in w for w in r.warnings)


def test_helpers():
    assert percentile_of(2.0, np.array([1.0, 2.0, 3.0, 4.0])) == 37.5
    curve, median = survival_curve((0.0, 5.0, 10.0, float("inf")), np.array([0.9, 0.4, 0.1]))
    assert curve.times == [0.0, 5.0, 10.0] and curve.survival == [1.0, 0.9, 0.4] and median == 10.0
    assert survival_curve((0.0, 5.0, float("inf")), np.array([0.9, 0.1]))[1] is None  # not reached


@pytest.mark.parametrize("task", ["survival", "EGFR_mut"])
def test_influence_equals_dense_reference_without_the_case(bundle_path, slide, result, task):
    """influence_r = f([buffer; q]) - f([buffer without r; q]) and the graph contribution f([buffer; q]) -
    f([q]), f the risk or the class probabilities, against the dense reference within 1e-6."""
    b = load_bundle(bundle_path)
    tb = b.tasks[task]
    net = MSRLNet(b.config, tb.spec, tb.variant)
    net.load_state_dict(tb.state_dict)
    net.eval()
    features, coords, size = slide
    buffer = torch.from_numpy(tb.buffer_nodes)

    def f(rows: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            h, _ = net.encode_slides(SlideBatch.from_bags([torch.from_numpy(features)], [torch.from_numpy(coords)],
                                                          [size]))
            node = net.node_features(h)
            z = DenseReference(net.gsl, net.gcn, buffer[rows], b.config.k).predict(node)[0].z
            logits = net.readout(z[None], node).double()
        return (survival_from_logits(logits).risk if task == "survival" else torch.softmax(logits, -1)[0]).numpy()

    everyone = torch.arange(len(buffer))
    full = f(everyone)
    t = result.tasks[task]
    assert t.linked_cases
    for c in t.linked_cases:
        want = full - f(everyone[everyone != c.row])
        if task == "survival":
            assert c.influence_probabilities is None
            assert abs(c.influence_risk - float(want[0])) <= 1e-6
        else:
            assert c.influence_risk is None and len(c.influence_probabilities) == 2
            np.testing.assert_allclose(c.influence_probabilities, want, atol=1e-6, rtol=0)
            assert sum(c.influence_probabilities) == pytest.approx(0.0, abs=1e-12)
    alone = f(everyone[:0])
    if task == "survival":
        s = t.survival
        assert abs(s.graph_contribution - float(full[0] - alone[0])) <= 1e-6
        assert s.graph_contribution == pytest.approx(s.risk - s.risk_query_alone, abs=1e-12)
    else:
        c = t.classification
        np.testing.assert_allclose(c.graph_contribution, full - alone, atol=1e-6, rtol=0)
        np.testing.assert_allclose(np.array(c.probabilities) - c.probabilities_query_alone, c.graph_contribution,
                                   atol=1e-12)


def test_what_the_neighbours_say(bundle_path, slide, result):
    s, linked = result.tasks["survival"].survival, result.tasks["survival"].linked_cases
    w = np.array([c.weight for c in linked])
    event = np.array([c.case["censorship"] == 0 for c in linked])
    assert s.neighbours_with_status == len(linked)
    assert s.neighbours_event_rate == pytest.approx(float(w @ event / w.sum()), abs=1e-12)
    below = [t for t, v in zip(s.neighbours_km.times, s.neighbours_km.survival) if v <= 0.5]
    assert s.neighbours_median_survival_months == (below[0] if below else None)
    # the random bundle codes EGFR_mut 0/1 while its classes are wt/mut: no linked case carries a class
    c = result.tasks["EGFR_mut"].classification
    assert c.neighbours_distribution is None and c.neighbours_labelled == 0
    # with the labels spelled as the classes (and a missing one), the edge-weighted shares of the labelled cases
    predictor = Predictor.from_bundle(bundle_path, device="cpu")
    cases = predictor.bundle.tasks["EGFR_mut"].cases
    cases["EGFR_mut"] = pd.Series(np.where(cases["EGFR_mut"].to_numpy() == 1, "mut", "wt"), dtype=object)
    cases.loc[result.tasks["EGFR_mut"].linked_cases[0].row, "EGFR_mut"] = None  # a linked case without a label
    t = predictor.predict(*slide, slide_id="s1").tasks["EGFR_mut"]
    known = [(c.weight, c.case["EGFR_mut"]) for c in t.linked_cases if c.case["EGFR_mut"] is not None]
    assert 0 < len(known) < len(t.linked_cases)
    total = sum(wt for wt, _ in known)
    want = [sum(wt for wt, v in known if v == cls) / total for cls in ("wt", "mut")]
    assert t.classification.neighbours_labelled == len(known)
    np.testing.assert_allclose(t.classification.neighbours_distribution, want, atol=1e-12)


def test_result_csvs_have_unique_columns_and_carry_the_flags(result, tmp_path):
    import csv

    from msrl_model.infer.export import write_results

    _, keys_path, linked_path = write_results(tmp_path / "r.json", result)
    keys = {(r["task"], r["key"]): r["value"] for r in csv.DictReader(keys_path.open())}
    assert keys[("slide", "synthetic_training_cohort")] == str(result.synthetic_training_cohort)
    assert keys[("slide", "research_use_only")] == result.research_use_only
    header = next(csv.reader(linked_path.open()))
    assert len(header) == len(set(header))  # no column twice (the case's slide_id is linked_slide_id)
    assert header[0] == "slide_id" and "linked_slide_id" in header
    rows = list(csv.DictReader(linked_path.open()))
    assert {r["slide_id"] for r in rows} == {"s1"}
    first = result.tasks["survival"].linked_cases[0]
    assert rows[0]["linked_slide_id"] == str(first.case["slide_id"])
    assert {r["research_use_only"] for r in rows} == {result.research_use_only}
