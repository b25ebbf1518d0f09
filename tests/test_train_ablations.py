"""The inference-time ablations no_graph and shuffled_buffer (train/predict.py ``inference_buffer``):
they reuse MSRL's trained network, change its predictions, and no_graph is the query on its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from msrl_model.cohort import load_cohort
from msrl_model.nn.config import MSRLConfig
from msrl_model.progress import drive
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.train.buffer import case_node_features
from msrl_model.train.data import fold_genomics, load_bags, task_targets
from msrl_model.nn.graph import gsl_adjacency_dense
from msrl_model.train.finetune import build_network, finetune_job
from msrl_model.train.graphcheck import DIAGNOSTICS, gradient_shares, graph_diagnostics, pooled_r2
from msrl_model.train.predict import inference_buffer, outputs_from_logits, predict
from msrl_model.train.pretrain import pretrain_job
from msrl_model.train.variants import get_variant

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=30, n_projects=2, patches=(8, 16), feature_dim=16, seed=21)
    cohort = load_cohort(root)
    bags = drive(load_bags(cohort), show=False)
    cfg = MSRLConfig.tiny(patch_dim=16, max_patches_train=12, pretrain_epochs=1, finetune_epochs=2, batch_size=6,
                          readout_skip=True, group_sizes=tuple(len(g) for g in cohort.gene_groups))
    train, test = np.arange(22), np.arange(22, 30)
    fg = fold_genomics(cohort, train)
    pre = drive(pretrain_job(cfg, bags, fg.packed, train, seed=0), show=False)
    tt = task_targets(cohort, "survival", train, cfg.n_bins)
    res = drive(finetune_job(cfg, tt.spec, bags, fg.packed, fg.pathways, tt.y, tt.censorship, train,
                             pretrained=pre, seed=0), show=False)
    return bags, res, test, fg.pathways


def test_ablations_are_registered_on_msrls_network():
    for name, mode in (("no_graph", "none"), ("shuffled_buffer", "shuffled")):
        variant = get_variant(name)
        assert variant.trained_as == "msrl" and variant.buffer_mode == mode and not variant.genomics_at_inference


def test_no_graph_is_the_query_linked_only_to_itself(trained):
    bags, res, test, _ = trained
    net = res.online.eval()
    alone = predict(res, bags, test, buffer_mode="none")
    with torch.no_grad():  # reference: every query a one-node graph with its self-loop (weight 1 after normalising)
        nodes = case_node_features(net, bags, test, None, max_patches=0, chunk=8, device=torch.device("cpu"))
        self_loop = torch.zeros(2, 1, dtype=torch.long), torch.ones(1)
        z = torch.cat([net.gcn(nodes[i:i + 1], *self_loop) for i in range(len(test))])
        reference = outputs_from_logits(net.task, test, net.readout(z, nodes), z)
    np.testing.assert_allclose(alone.z, reference.z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.risk, reference.risk, rtol=1e-5, atol=1e-6)
    # no neighbour is used: any other buffer gives the same predictions
    other = dataclasses.replace(res, buffer=torch.randn_like(res.buffer))
    np.testing.assert_array_equal(predict(other, bags, test, buffer_mode="none").risk, alone.risk)
    full = predict(res, bags, test)
    assert np.abs(full.risk - alone.risk).max() > 1e-4  # the neighbours do change the prediction


def test_shuffled_buffer_permutes_the_genomics_and_changes_predictions(trained):
    bags, res, test, _ = trained
    d = res.online.cfg.d
    shuffled = inference_buffer(res, "shuffled", seed=3)
    assert torch.equal(shuffled[:, d:], res.buffer[:, d:])  # every slide part h stays with its case
    assert not torch.equal(shuffled[:, :d], res.buffer[:, :d])
    rows = [sorted(map(tuple, g.tolist())) for g in (shuffled[:, :d], res.buffer[:, :d])]
    assert rows[0] == rows[1]  # the same genomics rows, other owners
    assert torch.equal(inference_buffer(res, "shuffled", seed=3), shuffled)  # fixed seed, fixed permutation
    full = predict(res, bags, test)
    mixed = predict(res, bags, test, buffer_mode="shuffled", shuffle_seed=3)
    assert np.abs(full.risk - mixed.risk).max() > 1e-5
    np.testing.assert_array_equal(predict(res, bags, test, buffer_mode="shuffled", shuffle_seed=3).risk, mixed.risk)


def test_shuffled_buffer_needs_genomics_nodes(trained):
    _, res, _, _ = trained
    net_h = build_network(res.online.cfg, res.online.task, "msrl_h", None, False, 0)
    with pytest.raises(ValueError, match="MSRL_H"):
        inference_buffer(dataclasses.replace(res, online=net_h), "shuffled")
    with pytest.raises(ValueError, match="unknown buffer mode"):
        inference_buffer(res, "half")  # type: ignore[arg-type]


# graph diagnostics (train/graphcheck.py) ---------------------------------------------------------

def test_graph_diagnostics_match_the_dense_adjacency(trained):
    """Self share, links and the neighbours' pathway estimate of two queries, against the dense
    reference adjacency over [buffer; query]."""
    bags, res, test, pathways = trained
    net = res.online.eval()
    cases = [int(c) for c in test[:2]]
    diag = graph_diagnostics(res, bags, cases, pathways)
    assert set(diag) == set(DIAGNOSTICS) - {"grad_share_gsl", "grad_share_gcn", "grad_share_skip"}
    m = res.buffer.shape[0]
    shares, links, estimates = [], [], []
    with torch.no_grad():
        nodes = case_node_features(net, bags, cases, None, max_patches=0, chunk=8, device=torch.device("cpu"))
        for node in nodes:
            a = gsl_adjacency_dense(net.gsl(torch.cat([res.buffer, node[None]])), net.cfg.k)[-1]  # query's row
            shares.append(float(a[m] / a.sum()))
            links.append(int((a[:m] > 0).sum()))
            estimates.append(((a[:m, None] * pathways[torch.as_tensor(res.buffer_cases)]).sum(0) / a[:m].sum()).numpy())
    assert diag["self_share"] == pytest.approx(np.mean(shares), rel=1e-5) and 0 < diag["self_share"] < 1
    assert diag["linked"] == np.mean(links)
    truth = pathways[cases].numpy().astype(np.float64)
    assert diag["r2_neighbours"] == pytest.approx(pooled_r2(truth, np.stack(estimates).astype(np.float64)), rel=1e-4)


def test_graph_diagnostics_over_the_test_cases(trained):
    bags, res, test, pathways = trained
    diag = graph_diagnostics(res, bags, test, pathways)
    assert 0 < diag["self_share"] < 1 and 1 <= diag["linked"] <= res.online.cfg.k * 2
    assert diag["output_change"] > 0  # the buffer moves the risk of a network trained with it
    assert -1 <= diag["rank_agreement"] <= 1 and -1 <= diag["neighbour_extra"] <= 1
    for name in ("r2_prompt", "r2_graph", "r2_neighbours"):
        assert np.isfinite(diag[name]) and diag[name] <= 1


@pytest.mark.parametrize("truth_is", ["estimate", "column_mean"])
def test_pooled_r2(truth_is):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(6, 3))
    estimate = truth.copy() if truth_is == "estimate" else np.broadcast_to(truth.mean(0), truth.shape)
    assert pooled_r2(truth, estimate) == pytest.approx(1.0 if truth_is == "estimate" else 0.0, abs=1e-12)


def test_fine_tuning_history_records_where_the_gradient_goes(trained):
    _, res, _, _ = trained
    for epoch in res.history:
        parts = [epoch[f"grad_norm/{m}"] for m in ("slide_encoder", "inductor", "gsl", "gcn", "head", "skip")]
        assert all(p >= 0 for p in parts) and epoch["grad_norm/all"] >= max(parts)
        # the parts are disjoint parameter sets of the network: their squares add up to at most the whole
        assert sum(p * p for p in parts) <= epoch["grad_norm/all"] ** 2 * (1 + 1e-6)
    shares = gradient_shares(res.history)
    assert set(shares) == {"grad_share_gsl", "grad_share_gcn", "grad_share_skip"}
    assert all(0 <= v <= 1 for v in shares.values())
    assert gradient_shares([{"grad_norm/all": 2.0, "grad_norm/gsl": 1.0}])["grad_share_gsl"] == 0.5
