"""Stage-2 fine-tuning: own-entry masking, EMA, FIFO, schedule, determinism, resume, prediction paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from msrl_model.cohort import load_cohort
from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.graph import euclidean_knn_adjacency
from msrl_model.nn.msrl import MSRLNet
from msrl_model.progress import drive
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.train import buffer as buf_mod
from msrl_model.train import finetune as ft
from msrl_model.train.data import fold_genomics, load_bags, task_targets
from msrl_model.train.optim import lr_at
from msrl_model.train.predict import predict
from msrl_model.train.pretrain import pretrain_job
from msrl_model.train.settings import TrainSettings

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=30, n_projects=2, patches=(8, 16), feature_dim=16, seed=5)
    cohort = load_cohort(root)
    bags = drive(load_bags(cohort), show=False)
    cfg = MSRLConfig.tiny(patch_dim=16, max_patches_train=12, pretrain_epochs=1, finetune_epochs=2,
                          batch_size=6, group_sizes=tuple(len(g) for g in cohort.gene_groups))
    train = np.arange(24)
    fg = fold_genomics(cohort, train)
    pre = drive(pretrain_job(cfg, bags, fg.packed, train, seed=0), show=False)
    return cohort, bags, cfg, train, fg, pre


def _job(setup, task="survival", **kw):
    cohort, bags, cfg, train, fg, pre = setup
    cfg = dataclasses.replace(cfg, **kw.pop("cfg", {}))
    tt = task_targets(cohort, task, train, cfg.n_bins)
    return ft.finetune_job(cfg, tt.spec, bags, fg.packed, fg.pathways, tt.y, tt.censorship, train,
                           pretrained=pre, **kw)


def test_batch_cases_own_buffer_rows_are_masked(setup, monkeypatch):
    seen = []
    original_without = buf_mod.FifoBuffer.without

    def spy_without(self, cases):
        kept = self.owners[~torch.isin(self.owners, cases)]
        rows = original_without(self, cases)
        seen.append((cases.clone(), kept.clone(), rows.shape[0], self.owners.shape[0]))
        return rows

    graph_sizes = []
    original_forward = MSRLNet.graph_forward

    def spy_forward(net, nodes, buffer, mode="gsl"):
        graph_sizes.append((buffer.shape[0], nodes.shape[0]))
        return original_forward(net, nodes, buffer, mode)

    monkeypatch.setattr(buf_mod.FifoBuffer, "without", spy_without)
    monkeypatch.setattr(MSRLNet, "graph_forward", spy_forward)
    drive(_job(setup, seed=0), show=False)
    assert seen
    for cases, kept, n_rows, total in seen:
        assert not set(kept.tolist()) & set(cases.tolist())  # no own entry in the graph
        assert n_rows == len(kept) < total  # the batch's rows really were removed
    # every graph (online, target, online with real genomics) was built on the masked buffer plus the batch
    masked = [n for _, _, n, _ in seen]
    per_step = len(graph_sizes) // len(seen)
    assert per_step == 3 and len(graph_sizes) == 3 * len(seen)
    for j in range(per_step):
        assert [m for m, _ in graph_sizes[j::per_step]] == masked


def test_ema_update_math():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in target.parameters()]
    buf_mod.ema_update(target, online, 0.9)
    for p_t, p0, p_o in zip(target.parameters(), t0, online.parameters()):
        assert torch.allclose(p_t, 0.9 * p0 + 0.1 * p_o)
    buf_mod.ema_update(target, online, 0.0)
    for p_t, p_o in zip(target.parameters(), online.parameters()):
        assert torch.equal(p_t, p_o)


def test_fifo_buffer_order():
    buf = buf_mod.FifoBuffer(torch.arange(4.0)[:, None], torch.tensor([10, 11, 12, 13]), capacity=4)
    buf.push(torch.tensor([[4.0], [5.0]]), torch.tensor([10, 14]))
    assert buf.owners.tolist() == [12, 13, 10, 14]  # the two oldest left, new rows at the end
    assert buf.feats[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert buf.without(torch.tensor([10, 13]))[:, 0].tolist() == [2.0, 5.0]


def test_lr_schedule():
    lrs = [lr_at(s, 10, 2, 1.0, 0.1) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lr_at(10, 10, 2, 1.0, 0.1) == pytest.approx(0.1)


def test_same_seed_same_weights(setup):
    a = drive(_job(setup, seed=3), show=False)
    b = drive(_job(setup, seed=3), show=False)
    c = drive(_job(setup, seed=4), show=False)
    for (k, va), vb in zip(a.online.state_dict().items(), b.online.state_dict().values()):
        assert torch.equal(va, vb), k
    assert torch.equal(a.buffer, b.buffer)
    assert not torch.equal(a.online.head.linear.weight, c.online.head.linear.weight)
    assert a.buffer.shape == (24, a.online.node_dim) and a.buffer_cases.tolist() == list(range(24))


def test_resume_after_interrupt_gives_same_weights(setup, tmp_path):
    full = drive(_job(setup, seed=5, cfg={"finetune_epochs": 3}), show=False)
    job = _job(setup, seed=5, cfg={"finetune_epochs": 3}, checkpoint_dir=tmp_path)
    for event in job:  # stop after the second epoch's checkpoint
        if event.done == 2:
            job.close()
            break
    assert (tmp_path / "state.json").exists()
    resumed_events = []
    resumed = drive(_job(setup, seed=5, cfg={"finetune_epochs": 3}, checkpoint_dir=tmp_path), show=False,
                    on_event=resumed_events.append)
    assert resumed_events[0].done == 2  # started after the checkpointed epochs
    for (k, va), vb in zip(full.online.state_dict().items(), resumed.online.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert torch.allclose(full.buffer, resumed.buffer, atol=1e-6)


@pytest.mark.parametrize("task", ["survival", "stage"])
def test_exact_engine_matches_dense_graph_forward(setup, task):
    cohort, bags, *_ = setup
    res = drive(_job(setup, task=task, seed=0), show=False)
    test = np.arange(24, 30)
    exact = predict(res, bags, test, engine="exact")
    dense = predict(res, bags, test, engine="dense")
    assert np.allclose(exact.logits, dense.logits, atol=1e-4)
    if task == "survival":
        assert exact.risk.shape == (6,) and np.all(np.isfinite(exact.risk))
    else:
        assert np.allclose(exact.probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("options", [dict(graph_mode="knn_cos"), dict(graph_mode="knn_euc"),
                                     dict(random_gsl=True), dict(buffer_branch="online"), dict(variant="msrl_h")])
def test_variants_train_and_predict(setup, options):
    cohort, bags, cfg, train, fg, pre = setup
    res = drive(_job(setup, seed=0, cfg={"finetune_epochs": 1}, settings=TrainSettings(), **options), show=False)
    pred = predict(res, bags, np.arange(24, 30))
    assert np.all(np.isfinite(pred.risk))
    if options.get("random_gsl"):
        assert not any(w.requires_grad for w in res.online.gsl.weights)
        assert not torch.allclose(res.online.gsl.weights[0], pre.gsl_f.weights[0])
    if options.get("variant") == "msrl_h":
        assert res.buffer.shape[1] == cfg.d and res.online.pathway_decoder is None


def test_euclidean_knn_adjacency_is_symmetric_normalised():
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    ei, ew = euclidean_knn_adjacency(x, 3)
    a = torch.zeros(12, 12)
    a[ei[0], ei[1]] = ew
    assert torch.allclose(a, a.T)
    assert (a.diagonal() > 0).all()
    nearest = torch.cdist(x, x).fill_diagonal_(float("inf")).argmin(1)
    assert (a[torch.arange(12), nearest] > 0).all()


def test_modality_complete_pass_trains_the_real_genomics_path(setup):
    on = drive(_job(setup, seed=0), show=False)
    off = drive(_job(setup, seed=0, settings=TrainSettings(multimodal_weight=0.0)), show=False)
    assert all("task_multi" in h for h in on.history) and not any("task_multi" in h for h in off.history)
    # the extra loss moves the shared weights
    assert not torch.allclose(on.online.head.linear.weight, off.online.head.linear.weight)


def test_distillation_pulls_wsi_only_logits_toward_the_real_genomics_pass(setup):
    cohort, bags, cfg, train, fg, pre = setup

    def gap(res):
        """Mean |WSI-only − real-genomics| logit difference on the training cases."""
        wsi = predict(res, bags, train, engine="dense").logits
        multi = predict(res, bags, train, fg.packed[train], engine="dense").logits
        return float(np.abs(wsi - multi).mean())

    job_cfg = {"finetune_epochs": 4, "readout_skip": True}
    off = drive(_job(setup, seed=0, cfg=job_cfg, settings=TrainSettings(distill_weight=0.0)), show=False)
    on = drive(_job(setup, seed=0, cfg=job_cfg, settings=TrainSettings(distill_weight=50.0)), show=False)
    assert all("distill" in h for h in on.history) and not any("distill" in h for h in off.history)
    assert on.history[-1]["distill"] < on.history[0]["distill"]
    assert gap(on) < 0.75 * gap(off)  # measured: about 0.56


def test_readout_skip_network_predicts_with_its_node_features(setup):
    cohort, bags, cfg, train, fg, pre = setup
    res = drive(_job(setup, seed=0, cfg={"readout_skip": True}), show=False)
    assert res.online.skip is not None
    test = np.arange(24, 30)
    pred = predict(res, bags, test, engine="dense")
    nodes = buf_mod.case_node_features(res.online.eval(), bags, test, None, max_patches=0, chunk=8,
                                       device=torch.device("cpu"))
    with torch.no_grad():
        z = torch.from_numpy(pred.z)
        assert np.allclose(pred.logits, res.online.readout(z, nodes).numpy(), atol=1e-5)
        assert not np.allclose(pred.logits, res.online.head(z).numpy(), atol=1e-3)
