r"""Stage 1: pan-cancer self-supervised graph structure learning (paper §3.2, SUBLIME-style).

On the training cases (no labels):

.. math::
    h = φ_H(X_I),\quad g = φ_G(X_G),\quad f = [g; h]; \qquad
    A^r_H = \mathrm{GSL}_H(H),\ Z_H = \mathrm{GCN}_H(A^r_H, H),\
    Z^{aug}_H = \mathrm{GCN}_H(A^{aug}_H, H) \ (\text{same for } G), \qquad
    Z_F = \mathrm{GCN}_F(\mathrm{GSL}_F(F), F)

    \mathcal L_{gsl} = \mathcal L_{intra}(Z_H, Z_H^{aug}, Z_G, Z_G^{aug}) + \mathcal L_{inter}(Z_H, Z_G)
        + \mathcal L_{fused}(Z_F, Z_H, Z_G)

**Anchor graphs** (SUBLIME): :math:`A_H, A_G` start as the cosine kNN graph (top-(k+1) with self,
ReLU, symmetrised, :math:`D^{-1/2} \cdot D^{-1/2}` normalised) of the *initial* embeddings of the
training cases, and every ``anchor_every`` epochs are bootstrapped toward the learned graph over all
training cases: :math:`A \leftarrow m A + (1 - m) A^r` (``cfg.anchor_momentum``). They are dense
K×K matrices up to ``settings.dense_anchor_max`` cases and sparse COO tensors above.
:math:`A^{aug}` = each (undirected) anchor edge dropped with probability ``cfg.edge_drop``, plus
``cfg.edge_add`` × #edges random undirected edges with the mean anchor weight.
The paper also names a fused anchor :math:`A_F`; no loss term reads it (eq. 5 uses the learned
fused graph), so it is not built.

**Mini-batches**: when the training set is larger than ``settings.pretrain_graph_cases``, each epoch
splits a random permutation of the cases into equal parts; each part forms the graph of one step
(learned graphs over the part, anchors restricted to it).

**Several processes** (``torchrun``, :mod:`msrl_model.train.distributed`): each rank encodes its
contiguous share of a step's cases (:func:`embed_shared`), the embeddings are gathered in case order,
and every rank computes the same graphs and losses over the whole part; gradients are averaged. The
result equals one process with the same settings (the number of cases per step does not depend on
the number of processes): patch subsets are drawn per case from ``(seed, epoch, case)``, slide-encoder
dropout runs on a forked RNG keyed by ``(seed, epoch, step, rank)`` — with ``slide_dropout > 0`` the
masks, and so the weights, depend on the rank split; everything else is identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.graph import cosine_knn_adjacency
from msrl_model.nn.losses import fused_loss, inter_loss, intra_loss
from msrl_model.nn.msrl import PretrainNet
from msrl_model.nn.slide_encoder import SlideEncoder
from msrl_model.progress import Job, Progress, Stage, exhaust
from msrl_model.train import distributed
from msrl_model.train.data import Bags
from msrl_model.train.optim import apply_gradients, optimizer_step
from msrl_model.train.settings import TrainSettings


def embed_slides_job(encoder: SlideEncoder, bags: Bags, cases: Sequence[int], *, max_patches: int = 0,
                     chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
                     device: torch.device | str = "cpu", key: tuple[int, ...] | None = None,
                     message: str = "") -> Job[Tensor]:
    """h (len(cases), d) of ``cases`` in chunks of bags; grads flow when enabled by the caller.

    A chunk is at most ``chunk`` bags and ``chunk_patches`` padded patches (:meth:`Bags.chunks`), so
    its memory is bounded however large the bags. A job: one ``Stage.EMBED`` tick before the first
    chunk and one after every chunk (``message`` names the pass). Patch subsets (``max_patches``) per
    case from ``(*key, case)`` (:meth:`Bags.batch`).
    """
    out = []
    cases = np.asarray(cases, dtype=np.int64)
    done = 0
    yield Progress(Stage.EMBED, 0, len(cases), message)
    for part in bags.chunks(cases, max_patches=max_patches, max_cases=chunk, budget=chunk_patches):
        batch = bags.batch(part, max_patches, key=key).to(device)
        out.append(encoder(batch.x, batch.pos, batch.mask)[0])  # (b, d)
        done += len(part)
        yield Progress(Stage.EMBED, done, len(cases), message)
    return torch.cat(out)


def embed_slides(encoder: SlideEncoder, bags: Bags, cases: Sequence[int], *, max_patches: int = 0,
                 chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
                 device: torch.device | str = "cpu", key: tuple[int, ...] | None = None) -> Tensor:
    """:func:`embed_slides_job` without its ticks."""
    return exhaust(embed_slides_job(encoder, bags, cases, max_patches=max_patches, chunk=chunk,
                                    chunk_patches=chunk_patches, device=device, key=key))


def embed_shared_job(encoder: SlideEncoder, bags: Bags, cases: Sequence[int], *, max_patches: int = 0,
                     chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
                     device: torch.device | str = "cpu", key: tuple[int, ...] | None = None,
                     dropout_key: tuple[int, ...] | None = None, message: str = "") -> Job[Tensor]:
    """h (len(cases), d) of ``cases``, every process encoding its share (rank order = case order).

    Args:
        chunk, chunk_patches: bags and padded patches per encoder forward (:func:`embed_slides_job`).
        key: per-case patch subsets from ``(*key, case)`` (needed with ``max_patches``; None = all patches).
        dropout_key: run the encoder on a global RNG forked and seeded by ``(*dropout_key, rank)``
            (training mode: dropout must not advance the stream that the replicated rest of the step
            draws from); None = the current RNG (eval mode).
        message: names the pass in the ``Stage.EMBED`` ticks (per chunk of this process's share).

    Differentiable (the gather sums the ranks' gradients, see :mod:`msrl_model.train.distributed`);
    one process: :func:`embed_slides_job` of all ``cases``.
    """
    mine = distributed.local_part(np.asarray(cases, dtype=np.int64))
    device = torch.device(device)
    if len(mine) == 0:  # more processes than cases: an empty share still joins the gather
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        return distributed.all_gather_rows(torch.zeros(0, encoder.d, device=device, requires_grad=trainable))
    fork = nullcontext() if dropout_key is None else distributed.forked_rng(*dropout_key, distributed.rank(),
                                                                           device=device)
    with fork:
        h = yield from embed_slides_job(encoder, bags, mine, max_patches=max_patches, chunk=chunk,
                                        chunk_patches=chunk_patches, device=device, key=key, message=message)
    return distributed.all_gather_rows(h)  # (len(cases), d)


def embed_shared(encoder: SlideEncoder, bags: Bags, cases: Sequence[int], *, max_patches: int = 0,
                 chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
                 device: torch.device | str = "cpu", key: tuple[int, ...] | None = None,
                 dropout_key: tuple[int, ...] | None = None) -> Tensor:
    """:func:`embed_shared_job` without its ticks."""
    return exhaust(embed_shared_job(encoder, bags, cases, max_patches=max_patches, chunk=chunk,
                                    chunk_patches=chunk_patches, device=device, key=key, dropout_key=dropout_key))


class CachedSlideEmbedding:
    r"""h of one step's cases without φ_H's activations, and the backward pass that restores them.

    Gradient caching (Gao et al. 2021, "Scaling deep contrastive learning batch size under memory
    limited setup"): a pre-training step's graph holds up to ``pretrain_graph_cases`` cases, and
    keeping φ_H's activations for all of them grows with the cohort (~20 MB a case at 512 patches,
    d = 128). So h is computed with no graph and handed to the losses as a leaf; after
    ``loss.backward()`` has filled ``h.grad``, :meth:`backward_job` recomputes φ_H chunk by chunk on
    the same patch subsets with the same dropout masks (the RNG state before each chunk is replayed)
    and backpropagates the matching rows of ``h.grad``. The gradient is the one of the direct pass
    (tested); memory is one chunk's activations; the cost is one extra no-grad forward.

    With several processes each rank recomputes its own share; its rows' gradient is scaled by the
    world size, as the differentiable gather sums the ranks' (identical) losses' gradients, so that
    :func:`~msrl_model.train.distributed.average_gradients` gives the single-process gradient.
    """

    def __init__(self, encoder: SlideEncoder, bags: Bags, parts: list[np.ndarray], rows: list[np.ndarray],
                 states: list[list[Tensor]], h: Tensor, max_patches: int, key: tuple[int, ...],
                 device: torch.device, message: str) -> None:
        self.encoder, self.bags, self.parts, self.rows, self.states = encoder, bags, parts, rows, states
        self.h, self.max_patches, self.key, self.device, self.message = h, max_patches, key, device, message

    @classmethod
    def job(cls, encoder: SlideEncoder, bags: Bags, cases: np.ndarray, *, max_patches: int, chunk: int,
            chunk_patches: int, device: torch.device, key: tuple[int, ...], dropout_key: tuple[int, ...],
            message: str) -> Job[CachedSlideEmbedding]:
        """The no-grad pass over ``cases`` (ticks per chunk); ``.h`` is (len(cases), d), a leaf."""
        share = distributed.local_part(np.arange(len(cases)))  # this rank's rows of ``cases``
        parts = bags.chunks(cases[share], max_patches=max_patches, max_cases=chunk, budget=chunk_patches)
        bounds = np.cumsum([0] + [len(p) for p in parts])
        rows = [share[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        states, out = [], [torch.zeros(0, encoder.d, device=device)]
        yield Progress(Stage.EMBED, 0, len(share), message)
        with distributed.forked_rng(*dropout_key, distributed.rank(), device=device), torch.no_grad():
            for part, done in zip(parts, bounds[1:]):
                states.append(_rng_state(device))
                batch = bags.batch(part, max_patches, key=key).to(device)
                out.append(encoder(batch.x, batch.pos, batch.mask)[0])  # (b, d)
                yield Progress(Stage.EMBED, int(done), len(share), message)
        h = distributed.all_gather_rows(torch.cat(out)).requires_grad_(True)  # (len(cases), d) leaf
        return cls(encoder, bags, parts, rows, states, h, max_patches, key, device, message)

    def backward_job(self) -> Job[None]:
        """Backpropagate ``self.h.grad`` through φ_H, chunk by chunk (ticks per chunk)."""
        grad = self.h.grad * distributed.world_size()  # (len(cases), d)
        total = sum(len(r) for r in self.rows)
        done = 0
        for part, rows, state in zip(self.parts, self.rows, self.states):
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                _set_rng_state(state, self.device)
                batch = self.bags.batch(part, self.max_patches, key=self.key).to(self.device)
                h = self.encoder(batch.x, batch.pos, batch.mask)[0]  # (b, d) with its graph
            h.backward(grad[torch.as_tensor(rows, device=grad.device)])
            done += len(rows)
            yield Progress(Stage.EMBED, done, total, f"{self.message} (backward)")


def _rng_state(device: torch.device) -> list[Tensor]:
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def _set_rng_state(state: list[Tensor], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


class AnchorGraph:
    """A normalised symmetric anchor adjacency over K cases, dense or sparse COO.

    Args:
        adj: (K, K) dense tensor or sparse COO tensor.
    """

    def __init__(self, adj: Tensor) -> None:
        self.adj = adj.coalesce() if adj.is_sparse else adj

    @classmethod
    def from_edges(cls, edge_index: Tensor, edge_weight: Tensor, n: int, dense: bool) -> AnchorGraph:
        sparse = torch.sparse_coo_tensor(edge_index, edge_weight, (n, n), check_invariants=False).coalesce()
        return cls(sparse.to_dense() if dense else sparse)

    @classmethod
    def knn(cls, x: Tensor, k: int, dense: bool) -> AnchorGraph:
        """Cosine kNN graph of x (K, D), post-processed like the GSL output (no learnable weights)."""
        with torch.no_grad():
            ei, ew = cosine_knn_adjacency(x, k)
        return cls.from_edges(ei, ew, x.shape[0], dense)

    @property
    def n(self) -> int:
        return int(self.adj.shape[0])

    def bootstrap(self, learned: AnchorGraph, momentum: float) -> None:
        """:math:`A \\leftarrow m A + (1 - m) A^r` (SUBLIME's slow update toward the learned graph)."""
        self.adj = momentum * self.adj + (1.0 - momentum) * learned.adj
        if self.adj.is_sparse:
            self.adj = self.adj.coalesce()

    def edges(self, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(edge_index (2, M), edge_weight (M,)) of the graph restricted to nodes ``idx`` (renumbered)."""
        a = self.adj
        if idx is not None:
            a = a.index_select(0, idx).index_select(1, idx)  # (b, b)
        if a.is_sparse:
            a = a.coalesce()
            keep = a.values() != 0
            return a.indices()[:, keep], a.values()[keep]
        ei = torch.nonzero(a).T  # (2, M)
        return ei, a[ei[0], ei[1]]


def augment_edges(edge_index: Tensor, edge_weight: Tensor, n: int, drop: float, add: float,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Edge dropout + random edge addition on an undirected graph, kept symmetric.

    Each undirected edge {i, j} (self loops included) is kept with probability ``1 - drop``;
    ``round(add · #undirected edges)`` random pairs {i, j}, i != j, are added with the mean edge weight.

    Returns:
        edge_index (2, M'), edge_weight (M',) with both directions of every off-diagonal edge.
    """
    upper = edge_index[0] <= edge_index[1]
    ei, ew = edge_index[:, upper], edge_weight[upper]  # one direction per undirected edge
    keep = torch.rand(ew.shape[0], generator=generator) >= drop
    mean_w = ew.mean() if ew.numel() else torch.tensor(1.0)
    n_add = int(round(add * ew.shape[0])) if n > 1 else 0
    r = torch.randint(0, n, (n_add,), generator=generator)
    c = (r + torch.randint(1, max(n, 2), (n_add,), generator=generator)) % n  # c != r
    ei = torch.cat([ei[:, keep.to(ei.device)], torch.stack([r, c]).to(ei.device)], dim=1)
    ew = torch.cat([ew[keep.to(ew.device)], mean_w.to(ew).expand(n_add)])
    off = ei[0] != ei[1]
    full_i = torch.cat([ei, ei[:, off].flip(0)], dim=1)  # (2, M') both directions
    full_w = torch.cat([ew, ew[off]])
    # duplicates (an added pair that already existed) are summed by the coalesce
    a = torch.sparse_coo_tensor(full_i, full_w, (n, n), check_invariants=False).coalesce()
    return a.indices(), a.values()


def pretrain_losses(net: PretrainNet, h: Tensor, g: Tensor, aug_h: tuple[Tensor, Tensor],
                    aug_g: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """The three loss terms of one step over a graph of the cases in (h, g), each (b, d)."""
    tau = net.cfg.tau
    f = torch.cat([g, h], dim=-1)  # (b, 2d) f = concatenate(g, h)
    z = {}
    for name, x, gsl, gcn in (("h", h, net.gsl_h, net.gcn_h), ("g", g, net.gsl_g, net.gcn_g),
                              ("f", f, net.gsl_f, net.gcn_f)):
        ei, ew = gsl.adjacency(x)
        z[name] = gcn(x, ei, ew)  # (b, gcn_out)
    z_h_aug = net.gcn_h(h, *aug_h)
    z_g_aug = net.gcn_g(g, *aug_g)
    return {"intra": intra_loss(z["h"], z_h_aug, z["g"], z_g_aug, tau),
            "inter": inter_loss(z["h"], z["g"], tau),
            "fused": fused_loss(z["f"], z["h"], z["g"], tau)}


def _learned_graphs(net: PretrainNet, bags: Bags, genomics: Tensor, cases: np.ndarray,
                    settings: TrainSettings, device: torch.device, dense: bool,
                    key: tuple[int, ...], message: str = "") -> Job[tuple[Tensor, Tensor, AnchorGraph, AnchorGraph]]:
    """h, g of all training cases (no grad, eval mode; patch subsets from ``(*key, case)``) and the
    learned graphs over them (a job: ``Stage.EMBED`` ticks per chunk of cases)."""
    was = net.training
    net.eval()
    with torch.no_grad():
        h = yield from embed_shared_job(net.slide_encoder, bags, cases, max_patches=net.cfg.max_patches_train,
                                        chunk=settings.encode_chunk, chunk_patches=settings.chunk_patches,
                                        device=device, key=key, message=message)
        g = net.genomics_encoder(genomics[cases].to(device))[0]
        graphs = [AnchorGraph.from_edges(*gsl.adjacency(x), len(cases), dense)
                  for gsl, x in ((net.gsl_h, h), (net.gsl_g, g))]
    net.train(was)
    return h, g, graphs[0], graphs[1]


def pretrain_job(cfg: MSRLConfig, bags: Bags, genomics: Tensor, cases: Sequence[int], *,
                 settings: TrainSettings = TrainSettings(), seed: int = 0,
                 device: torch.device | str = "cpu") -> Job[PretrainNet]:
    """Pre-train φ_H, φ_G and the three GSL/GCN pairs on ``cases`` (a generator of Progress).

    Args:
        cfg: model configuration (``group_sizes`` set).
        bags: patch bags of the cohort.
        genomics: (n_cases, Σ group sizes) packed z-scored expression (scaler fitted on the training cases).
        cases: the training cases (rows of the cohort); nothing else is looked at.
        settings: mini-batch size, bootstrapping interval, dense/sparse threshold.
        seed: same seed, same weights (with any number of processes; module docstring).
        device: torch device.

    Returns (generator return value): the trained :class:`PretrainNet` (in eval mode), with
    ``loss_history`` (one mean :math:`\\mathcal L_{gsl}` per epoch).
    """
    device = torch.device(device)
    cases = np.asarray(cases, dtype=np.int64)
    n = len(cases)
    if n < 3:
        raise ValueError(f"pre-training needs at least 3 cases, got {n}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = PretrainNet(cfg)
    net.slide_encoder.set_patch_stats(*bags.patch_stats(cases))
    net.to(device)
    distributed.broadcast_module(net)  # same seed, same weights already; this only guards against drift
    opt = torch.optim.Adam(net.parameters(), lr=cfg.pretrain_lr)
    dense = n <= settings.dense_anchor_max
    h0, g0, _, _ = yield from _learned_graphs(net, bags, genomics, cases, settings, device, dense, (seed, 1, 0),
                                              "pre-train: anchor graphs")
    anchor_h = AnchorGraph.knn(h0, cfg.k, dense)
    anchor_g = AnchorGraph.knn(g0, cfg.k, dense)
    steps = math.ceil(n / min(n, settings.pretrain_graph_cases))
    history: list[float] = []
    yield Progress(Stage.PRETRAIN, 0, cfg.pretrain_epochs, f"{n} cases, {steps} step(s)/epoch")
    for epoch in range(cfg.pretrain_epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for step, part in enumerate(torch.tensor_split(perm, steps)):
            part = part.sort().values  # local indices into ``cases``
            idx = cases[part.numpy()]
            embed = dict(max_patches=cfg.max_patches_train, chunk=settings.encode_chunk,
                         chunk_patches=settings.chunk_patches, device=device, key=(seed, 0, epoch),
                         dropout_key=(seed, epoch, step),
                         message=f"pre-train epoch {epoch + 1} step {step + 1}/{steps}")
            cached = None
            if bags.patch_count(idx, cfg.max_patches_train) > settings.chunk_patches:  # activations too many to keep
                cached = yield from CachedSlideEmbedding.job(net.slide_encoder, bags, idx, **embed)
                h = cached.h  # (b, d) leaf
            else:
                h = yield from embed_shared_job(net.slide_encoder, bags, idx, **embed)  # (b, d)
            g = net.genomics_encoder(genomics[idx].to(device))[0]  # (b, d)
            sub = part.to(anchor_h.adj.device)
            aug_h = augment_edges(*anchor_h.edges(sub), len(idx), cfg.edge_drop, cfg.edge_add, gen)
            aug_g = augment_edges(*anchor_g.edges(sub), len(idx), cfg.edge_drop, cfg.edge_add, gen)
            terms = pretrain_losses(net, h, g, aug_h, aug_g)
            loss = terms["intra"] + terms["inter"] + terms["fused"]
            if cached is None:
                optimizer_step(opt, loss, net.parameters(), settings.grad_clip)
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                yield from cached.backward_job()
                apply_gradients(opt, net.parameters(), settings.grad_clip)
            total += float(loss.detach())
        history.append(total / steps)
        if (epoch + 1) % settings.anchor_every == 0 and epoch + 1 < cfg.pretrain_epochs:
            _, _, learned_h, learned_g = yield from _learned_graphs(
                net, bags, genomics, cases, settings, device, dense, (seed, 1, epoch + 1),
                f"pre-train epoch {epoch + 1}: learned graphs")
            anchor_h.bootstrap(learned_h, cfg.anchor_momentum)
            anchor_g.bootstrap(learned_g, cfg.anchor_momentum)
        yield Progress(Stage.PRETRAIN, epoch + 1, cfg.pretrain_epochs, f"loss={history[-1]:.4f}")
    net.eval()
    net.loss_history = history
    return net


__all__ = ["AnchorGraph", "augment_edges", "embed_shared", "embed_shared_job", "embed_slides", "embed_slides_job",
           "pretrain_job", "pretrain_losses"]
