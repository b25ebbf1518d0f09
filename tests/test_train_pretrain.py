"""Stage-1 pre-training: anchors, augmentation, loss decrease, mini-batches, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from msrl_model.nn.config import MSRLConfig
from msrl_model.progress import drive
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.cohort import load_cohort
from msrl_model.train.data import fold_genomics, load_bags
from msrl_model.train.settings import TrainSettings
from msrl_model.train.pretrain import AnchorGraph, augment_edges, pretrain_job

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=32, n_projects=2, patches=(8, 16), feature_dim=16, seed=3)
    cohort = load_cohort(root)
    bags = drive(load_bags(cohort), show=False)
    cfg = MSRLConfig.tiny(patch_dim=16, max_patches_train=16, group_sizes=tuple(len(g) for g in cohort.gene_groups))
    return cohort, bags, cfg


def _pretrain(tiny, **kw):
    cohort, bags, cfg = tiny
    train = np.arange(cohort.n_cases)
    fg = fold_genomics(cohort, train)
    cfg = dataclasses.replace(cfg, pretrain_epochs=kw.pop("epochs", 3))
    settings = kw.pop("settings", TrainSettings(anchor_every=1))
    return drive(pretrain_job(cfg, bags, fg.packed, train, settings=settings, **kw), show=False)


def test_loss_decreases(tiny):
    net = _pretrain(tiny, epochs=8, seed=0)
    h = net.loss_history
    assert len(h) == 8 and all(np.isfinite(h))
    assert np.mean(h[-2:]) < np.mean(h[:2]) - 0.05


def test_same_seed_same_weights_and_minibatches(tiny):
    a = _pretrain(tiny, seed=1, settings=TrainSettings(pretrain_graph_cases=12, anchor_every=1))
    b = _pretrain(tiny, seed=1, settings=TrainSettings(pretrain_graph_cases=12, anchor_every=1))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    c = _pretrain(tiny, seed=2, settings=TrainSettings(pretrain_graph_cases=12, anchor_every=1))
    assert not torch.equal(a.gsl_h.weights[0], c.gsl_h.weights[0])


def test_sparse_anchor_path_matches_dense(tiny):
    dense = _pretrain(tiny, seed=4, settings=TrainSettings(anchor_every=1))
    sparse = _pretrain(tiny, seed=4, settings=TrainSettings(anchor_every=1, dense_anchor_max=4))
    for va, vb in zip(dense.state_dict().values(), sparse.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-5)


def test_anchor_graph_dense_sparse_bootstrap():
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    d, s = AnchorGraph.knn(x, 3, dense=True), AnchorGraph.knn(x, 3, dense=False)
    assert torch.allclose(d.adj, s.adj.to_dense())
    assert torch.allclose(d.adj, d.adj.T)
    learned = AnchorGraph(torch.eye(20))
    before = d.adj.clone()
    d.bootstrap(learned, 0.9)
    s.bootstrap(AnchorGraph(torch.eye(20).to_sparse()), 0.9)
    assert torch.allclose(d.adj, 0.9 * before + 0.1 * torch.eye(20))
    assert torch.allclose(d.adj, s.adj.to_dense())
    idx = torch.tensor([0, 5, 7])
    ei, ew = d.edges(idx)
    sub = torch.zeros(3, 3)
    sub[ei[0], ei[1]] = ew
    assert torch.allclose(sub, d.adj[idx][:, idx])


def test_augment_edges_symmetric_drop_and_add():
    n = 30
    full = torch.ones(n, n) - torch.eye(n)
    ring = torch.zeros(n, n)
    ring[torch.arange(n), (torch.arange(n) + 1) % n] = 1
    ring = ring + ring.T + torch.eye(n)
    ei = torch.nonzero(ring).T
    gen = torch.Generator().manual_seed(0)
    ai, aw = augment_edges(ei, torch.ones(ei.shape[1]), n, drop=0.0, add=0.0, generator=gen)
    assert ai.shape[1] == ei.shape[1]
    ai, aw = augment_edges(ei, torch.ones(ei.shape[1]), n, drop=1.0, add=0.0, generator=gen)
    assert ai.shape[1] == 0
    ai, aw = augment_edges(ei, torch.ones(ei.shape[1]), n, drop=0.5, add=0.5, generator=gen)
    a = torch.zeros(n, n)
    a[ai[0], ai[1]] = aw
    assert torch.allclose(a, a.T)
    assert (a * (full - ring).clamp(min=0)).sum() > 0  # some random edges were added
    assert (a * ring).count_nonzero() < ring.count_nonzero()  # some anchor edges were dropped


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_cached_slide_embedding_gives_the_direct_gradient(tiny, dropout):
    """Gradient caching: h without φ_H's graph, then a chunk-by-chunk recomputation with the same
    dropout masks, backpropagates exactly what the direct pass does."""
    from msrl_model.nn.slide_encoder import SlideEncoder
    from msrl_model.progress import exhaust
    from msrl_model.train.pretrain import CachedSlideEmbedding, embed_shared_job

    _, bags, cfg = tiny
    cases = np.arange(0, 32, 3)
    args = dict(max_patches=12, chunk=32, chunk_patches=40, device=torch.device("cpu"), key=(5, 0, 1),
                dropout_key=(5, 1, 0), message="test")
    weight = torch.randn(cfg.d, generator=torch.Generator().manual_seed(0))
    grads = []
    for cached in (False, True):
        torch.manual_seed(0)
        enc = SlideEncoder(cfg.patch_dim, cfg.d, layers=2, heads=2, dropout=dropout).train()
        if cached:
            emb = exhaust(CachedSlideEmbedding.job(enc, bags, cases, **args))
            (emb.h.tanh() @ weight).sum().backward()
            assert all(p.grad is None for p in enc.parameters())  # nothing of φ_H kept yet
            exhaust(emb.backward_job())
        else:
            h = exhaust(embed_shared_job(enc, bags, cases, **args))
            (h.tanh() @ weight).sum().backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert len(bags.chunks(cases, max_patches=12, max_cases=32, budget=40)) > 2  # several chunks replayed
    for direct, cached in zip(*grads):
        assert torch.allclose(direct, cached, atol=1e-6, rtol=1e-5)


def test_pretraining_with_cached_embeddings_matches_the_direct_pass(tiny):
    """A step over more patches than ``chunk_patches`` takes the cached path; with no dropout (whose
    masks depend on the chunking) it trains the same weights."""
    direct = _pretrain(tiny, seed=6, epochs=2, settings=TrainSettings(anchor_every=1))
    cached = _pretrain(tiny, seed=6, epochs=2, settings=TrainSettings(anchor_every=1, chunk_patches=48))
    assert np.allclose(direct.loss_history, cached.loss_history, rtol=1e-5)
    for (name, a), b in zip(direct.state_dict().items(), cached.state_dict().values()):
        if name.endswith("attn.qkv.bias"):  # its key third has a zero gradient (softmax ignores it): Adam
            continue                         # turns float noise there into full-size steps either way
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    _, bags, cfg = tiny
    batch = bags.batch(np.arange(8), 0)
    with torch.no_grad():
        h_direct = direct.slide_encoder(batch.x.float(), batch.pos, batch.mask)[0]
        h_cached = cached.slide_encoder(batch.x.float(), batch.pos, batch.mask)[0]
    assert torch.allclose(h_direct, h_cached, atol=1e-5)
