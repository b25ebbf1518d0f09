r"""Stage 2: per-task fine-tuning with an online and an EMA target branch and a FIFO buffer
(paper §3.3, Algorithm 2), and prediction of held-out cases against the buffer.

One step over a batch of B training cases (global case indices ``idx``):

.. math::
    h = φ_H(X^{aug,1}),\ f = [\mathrm{Inductor}(h); h] \quad(\text{online}),\qquad
    \hat h = \hat φ_H(X^{aug,2}),\ \hat f = [\hat φ_G(X_G); \hat h] \quad(\text{target, no grad})

    \mathcal B' = \mathcal B \setminus \{\text{entries of the batch cases}\},\qquad
    (Z, A^r) = \mathrm{GF}(f, \mathcal B'),\qquad (\hat Z, \hat A^r) = \widehat{\mathrm{GF}}(\hat f, \mathcal B')

    \mathcal L = \mathcal L_{f\text{-}align}(f, \hat f) + \mathcal L_{g\text{-}align}(Z, \hat Z)
      + \mathcal L_{s\text{-}align}(A^r, \hat A^r) + \mathcal L_{task}(\mathrm{head}(Z), y)
      + w_{pw}\,\lVert \mathrm{dec}(Z) - a \rVert^2
      + w_{mm}\,\mathcal L_{task}(\mathrm{head}(Z^{G}), y)
      + w_{kd}\,\lVert \mathrm{head}(Z) - \mathrm{sg}[\mathrm{head}(Z^{G})] \rVert^2,\qquad
    Z^{G} = \mathrm{GF}([φ_G(X_G); h], \mathcal B')

(the head and the pathway decoder read :meth:`~msrl_model.nn.msrl.MSRLNet.embedding` ``(Z, f)``: Z
plus the readout skip when ``cfg.readout_skip``; sg = stop-gradient).

* **Modality-complete pass** (our decision, ``settings.multimodal_weight`` = :math:`w_{mm}`): the
  paper's online branch only ever feeds the head Inductor-prompted nodes, yet MSRL_multi (DESIGN:
  "real genomics at inference") runs the same network on :math:`[φ_G(X_G); h]`, a node distribution
  the head never saw. Each step therefore also builds the batch's nodes from the *real* genomics with
  the online φ_G over the same :math:`\mathcal B'` and adds their task loss, so one set of weights
  serves MSRL (WSI only) and MSRL_multi. Off for MSRL_H (no genomics) and when the weight is 0.

* **Distillation from the modality-complete pass** (our decision, ``settings.distill_weight`` =
  :math:`w_{kd}`): the WSI-only logits regress onto the (detached) logits of the same network fed the
  case's real genomics. This is how the paper's "target branch guides the online branch in learning
  the missing genomics information" reaches the prediction itself: the real-genomics pass scores a
  training case from its expression, which is a far less noisy target than one censored survival
  time, and the best a slide can do under squared loss is that score's expectation given the
  slide. Genomics that no slide shows averages out; genomics the slide shows subtly is learned from
  every case, not only from the events. Measured on the demo cohort (5 folds, survival C-index,
  fresh φ_H): 0.689 without, 0.694 with :math:`w_{kd} = 1`.

* **Stage-1 slide encoder** (``settings.pretrained_slide_encoder``): by default every pre-trained
  module starts fine-tuning; with False, φ_H starts fresh (standardiser from the training cases)
  while φ_G, the GSL and the GCN still come from stage 1. The paper's φ_H is a slide foundation model;
  ours is trained by stage 1's instance-discriminating InfoNCE, which on a few hundred cases rewards
  whatever tells slides apart (stain, hue) — on the demo cohort fine-tuning from it measured C 0.663
  against 0.694 from a fresh φ_H (5 folds, survival), so the demo preset turns it off.

* **Own entry masked**: a batch case's buffer rows are removed from its graph (otherwise it would
  link to its own authentic genomics, which a test case never has).
* **Mixup views (RankMix-style)**: each view of case i is a random subset of its bag (at most
  ``cfg.max_patches_train`` patches) of which a share :math:`\lambda' = \max(\lambda, 1 - \lambda)`,
  :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)`, comes from case i and the rest from another case
  of the batch (a random pairing per view). The pairing is drawn from ``(seed, epoch, view, first
  case of the batch)``, λ and the patch subsets from ``(seed, epoch, view, case)``: a case's view
  does not depend on which process builds it. *Choice:* the label stays with case i, which always
  provides the majority of the patches (:math:`\lambda' \ge 1/2`); we do not mix labels, because
  survival targets (bin + censorship) cannot be interpolated meaningfully.
* **Buffer**: FIFO of *target* node features, initialised from all training cases with the
  pre-trained target; after each step the batch's :math:`\hat f` are appended and the oldest rows
  dropped (length ``cfg.buffer_size`` or the number of training cases). At the end the buffer is
  recomputed with the final target for every training case (full bags): the buffer that ships.
* **Pathway reconstruction** (our addition for the app, not in the paper): ``pathway_decoder(Z)``
  regresses the case's authentic pathway scores (mean z-scored expression per gene group), so the
  app can show reconstructed pathway activity next to the neighbours' authentic scores.
* **s-align** compares the online and target adjacencies over the same node set [𝓑'; batch] with
  :func:`~msrl_model.nn.losses.sparsity_balanced_bce_sparse` (never N×N).
* AdamW, linear warm-up for ``cfg.warmup_epochs`` then cosine to ``cfg.finetune_min_lr`` (per step);
  target :math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_o` after every step (``cfg.ema_momentum``).

Variants in the same code path: ``variant="msrl_h"`` (nodes h, no genomics anywhere),
``graph_mode="knn_cos" | "knn_euc"`` (fixed kNN graphs over the node features instead of the GSL),
``random_gsl=True`` (GSL weights random and frozen), ``buffer_branch="online"`` (buffer filled with
online features).

**Several processes** (``torchrun``, :mod:`msrl_model.train.distributed`): ``cfg.batch_size`` is the
*global* batch. Each rank builds the views of its contiguous share of the batch and runs the online
and target slide encoders on it; h and ĥ are gathered in batch order (the online gather is
differentiable), and every rank then computes the same node features, graphs and losses over the
whole batch, averages the gradients, takes the same optimizer step and EMA update, and pushes the
same gathered target rows to its copy of the FIFO buffer (replicated, identical on every rank). The
result equals one process with the same settings, up to float rounding (online slide-encoder
dropout, when ``cfg.slide_dropout > 0``, draws per-rank masks: same distribution, different
weights). Rank 0 alone writes checkpoints.

Checkpoints (``checkpoint_dir``): after every epoch ``online.safetensors``, ``target.safetensors``,
``state.safetensors`` (optimizer moments, buffer, RNG states) and ``state.json`` (epoch, step,
optimizer scalars, run identity). A run started again with the same arguments resumes after the
last finished epoch and ends with the same weights as an uninterrupted run. No pickle.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.graph import gsl_adjacency_sparse
from msrl_model.nn.heads import survival_from_logits
from msrl_model.nn.losses import (classification_loss, f_align, g_align, nll_survival_loss,
                                  sparsity_balanced_bce_sparse)
from msrl_model.nn.msrl import MSRLNet, PretrainNet, SlideBatch, TaskSpec
from msrl_model.nn.slide_encoder import pad_bags
from msrl_model.progress import Job, Progress, Stage
from msrl_model.train import distributed
from msrl_model.train.data import Bags
from msrl_model.train.pretrain import embed_shared
from msrl_model.train.presets import TrainSettings

GraphMode = Literal["gsl", "knn_cos", "knn_euc"]


# ---------------------------------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------------------------------
def euclidean_knn_adjacency(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""Fixed euclidean kNN graph: row i keeps itself and its k nearest rows (ties: lower index),
    weights :math:`w_{ij} = \exp(-\lVert x_i - x_j\rVert^2 / \bar d^2)` (:math:`\bar d^2` the mean kept
    squared distance), symmetrised :math:`(W + W^\top)/2` and :math:`D^{-1/2} W D^{-1/2}` normalised.

    Args: x (N, D). Returns: edge_index (2, M), edge_weight (M,). Dense N×N distances (buffers here
    are at most a few thousand rows).
    """
    n = x.shape[0]
    k1 = min(k, n - 1) + 1
    d2 = torch.cdist(x, x).pow(2)  # (N, N)
    d2.fill_diagonal_(-1.0)  # self first
    order = torch.sort(d2, dim=1, stable=True).indices[:, :k1]  # (N, k1) ascending distance, ties lower index
    rows = torch.arange(n, device=x.device).repeat_interleave(k1)
    cols = order.reshape(-1)
    dist = d2[rows, cols].clamp(min=0.0)
    scale = dist[rows != cols].mean().clamp(min=1e-12) if n > 1 else torch.ones((), device=x.device)
    w = torch.exp(-dist / scale) / 2
    adj = torch.sparse_coo_tensor(torch.cat([torch.stack([rows, cols]), torch.stack([cols, rows])], 1),
                                  torch.cat([w, w]), (n, n), check_invariants=False).coalesce()
    ei, ew = adj.indices(), adj.values()
    deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, ei[0], ew)
    dinv = deg.rsqrt()
    return ei, dinv[ei[0]] * ew * dinv[ei[1]]


def adjacency(net: MSRLNet, x: Tensor, mode: GraphMode) -> tuple[Tensor, Tensor]:
    """Normalised sparse adjacency over node features x (N, node_dim) for a graph mode."""
    if mode == "gsl":
        return net.gsl.adjacency(x)
    if mode == "knn_cos":
        return gsl_adjacency_sparse(F.normalize(x.detach(), dim=-1), net.cfg.k)
    if mode == "knn_euc":
        return euclidean_knn_adjacency(x.detach(), net.cfg.k)
    raise ValueError(f"unknown graph mode {mode!r}")


def graph_forward(net: MSRLNet, nodes: Tensor, buffer: Tensor, mode: GraphMode = "gsl"
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 2.I over [buffer; nodes] with the graph of ``mode``: (z of the nodes, edge_index, edge_weight)."""
    if mode == "gsl":
        return net.graph_forward(nodes, buffer)
    x = torch.cat([buffer, nodes], dim=0)  # (M + B, node_dim)
    ei, ew = adjacency(net, x, mode)
    return net.gcn(x, ei, ew)[buffer.shape[0]:], ei, ew


# ---------------------------------------------------------------------------------------------------
# buffer, mixup, EMA, schedule
# ---------------------------------------------------------------------------------------------------
class FifoBuffer:
    """First-in-first-out buffer of node features with the case that produced each row.

    Row 0 is the oldest. :meth:`push` appends rows at the end and drops the oldest so that at most
    ``capacity`` rows remain.
    """

    def __init__(self, feats: Tensor, owners: Tensor, capacity: int) -> None:
        self.feats = feats.detach()  # (M, node_dim)
        self.owners = owners.long().cpu()  # (M,) global case index of each row
        self.capacity = capacity
        self._trim()

    def _trim(self) -> None:
        extra = self.feats.shape[0] - self.capacity
        if extra > 0:
            self.feats, self.owners = self.feats[extra:], self.owners[extra:]

    def push(self, feats: Tensor, owners: Tensor) -> None:
        self.feats = torch.cat([self.feats, feats.detach()])
        self.owners = torch.cat([self.owners, owners.long().cpu()])
        self._trim()

    def without(self, cases: Tensor) -> Tensor:
        """Rows whose owner is not in ``cases`` (the graph of a batch never holds its own entries)."""
        keep = ~torch.isin(self.owners, cases.long().cpu())
        return self.feats[keep.to(self.feats.device)]


def mixup_view(bags: Bags, idx: Sequence[int], max_patches: int, alpha: float, key: tuple[int, ...],
               rows: Sequence[int] | None = None) -> SlideBatch:
    """One RankMix-style view of the bags of ``idx`` (module docstring: the share and label choice).

    Args:
        idx: the cases of the (global) batch; partners are drawn among all of them.
        key: ``(seed, epoch, view)``; the pairing comes from ``(*key, 0, idx[0])``, each case's λ and
            patch subsets from ``(*key, 1, case)``.
        rows: positions in ``idx`` of the cases to build views of (this process's share); None = all.
    """
    idx = [int(i) for i in idx]
    b = len(idx)
    partner = np.random.default_rng(distributed.key_seed(*key, 0, idx[0])).permutation(b) if b > 1 else [0]
    feats, pos = [], []
    for i in range(b) if rows is None else rows:
        case, other = idx[i], idx[partner[i]]
        rng = np.random.default_rng(distributed.key_seed(*key, 1, case))
        lam = rng.beta(alpha, alpha) if alpha > 0 else 1.0
        n_own = bags.features[case].shape[0]
        m = min(n_own, max_patches) if max_patches > 0 else n_own
        share = max(lam, 1.0 - lam) if other != case else 1.0
        k_own = max(1, int(round(share * m)))
        k_other = min(m - k_own, bags.features[other].shape[0])
        sel = torch.from_numpy(rng.permutation(n_own)[:k_own])
        f, p = [bags.features[case][sel]], [bags.positions[case][sel]]
        if k_other > 0:
            sel_o = torch.from_numpy(rng.permutation(bags.features[other].shape[0])[:k_other])
            f.append(bags.features[other][sel_o])
            p.append(bags.positions[other][sel_o])
        feats.append(torch.cat(f))
        pos.append(torch.cat(p))
    x, p, mask = pad_bags(feats, pos)
    return SlideBatch(x, p, mask, [int(t.shape[0]) for t in feats])


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    r""":math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_o` for every parameter; buffers copied."""
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps to ``peak``, then cosine to ``floor`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


def task_loss(spec: TaskSpec, logits: Tensor, y: Tensor, censorship: Tensor, nll_alpha: float) -> Tensor:
    """NLL survival loss (with α) or cross-entropy."""
    if spec.kind == "survival":
        return nll_survival_loss(logits, y, censorship, alpha=nll_alpha)
    return classification_loss(logits, y)


# ---------------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """A fine-tuned task network and its shipped buffer."""

    online: MSRLNet  # the network used for prediction
    target: MSRLNet  # the EMA target (computes buffer features)
    buffer: Tensor  # (n_train, node_dim) node features of the training cases (final target, full bags)
    buffer_cases: np.ndarray  # (n_train,) global case index of each buffer row
    graph_mode: GraphMode  # graph used in training and prediction
    buffer_branch: str  # "target" (MSRL) or "online" (ablation)
    history: list[dict[str, float]] = field(default_factory=list)  # mean loss terms per epoch


def _node_features(net: MSRLNet, bags: Bags, cases: Sequence[int], genomics: Tensor | None, *,
                   max_patches: int, chunk: int, device: torch.device) -> Tensor:
    """Node features (len(cases), node_dim); real genomics when ``genomics`` is given (rows = cases).
    Every process encodes its share of the cases (:func:`embed_shared`); patch subsets (``max_patches``)
    from the global RNG."""
    h = embed_shared(net.slide_encoder, bags, cases, max_patches=max_patches, chunk=chunk, device=device)
    return net.node_features(h, None if genomics is None else genomics.to(device))


def _encode_share(net: MSRLNet, view: SlideBatch | None, dropout_key: tuple[int, ...] | None) -> Tensor:
    """h of every case of the global batch (B, d) from this process's view of its share (None = an
    empty share), gathered in batch order; the slide-encoder dropout on a forked RNG (``dropout_key``)."""
    if view is None:  # more processes than cases in the batch: an empty share still joins the gather
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in net.slide_encoder.parameters())
        h = torch.zeros(0, net.cfg.d, device=next(net.parameters()).device, requires_grad=trainable)
    elif dropout_key is None:
        h = net.encode_slides(view)[0]
    else:
        with distributed.forked_rng(*dropout_key, distributed.rank(), device=view.x.device):
            h = net.encode_slides(view)[0]  # (b_rank, d)
    return distributed.all_gather_rows(h)


@torch.no_grad()
def compute_buffer(net: MSRLNet, bags: Bags, genomics: Tensor, cases: Sequence[int], *, branch: str,
                   chunk: int, device: torch.device) -> Tensor:
    """Buffer rows of ``cases`` (full bags, eval mode): target features [φ_G(X_G); h] (or [Inductor(h); h]
    for ``branch="online"``; h for MSRL_H)."""
    was = net.training
    net.eval()
    cases = np.asarray(cases, dtype=np.int64)
    gen = None if branch == "online" or not net.uses_genomics else genomics[cases]
    out = _node_features(net, bags, cases, gen, max_patches=0, chunk=chunk, device=device)
    net.train(was)
    return out


def _run_id(cfg: MSRLConfig, task: TaskSpec, variant: str, mode: str, random_gsl: bool, branch: str,
            seed: int, cases: np.ndarray, settings: TrainSettings) -> str:
    blob = json.dumps([cfg.to_dict(), task.to_dict(), variant, mode, random_gsl, branch, seed,
                       cases.tolist(), settings.to_dict()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, run_id: str, epoch: int, step: int, online: nn.Module, target: nn.Module,
                     opt: torch.optim.Optimizer, buffer: FifoBuffer, gen: torch.Generator,
                     history: list[dict[str, float]]) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"opt.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors["buffer.feats"] = buffer.feats.cpu().contiguous()
    tensors["buffer.owners"] = buffer.owners.contiguous()
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = path / "tmp"
    tmp.mkdir(exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in online.state_dict().items()}, tmp / "online.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in target.state_dict().items()}, tmp / "target.safetensors")
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps({
        "run_id": run_id, "epoch": epoch, "step": step, "param_groups": sd["param_groups"],
        "opt_scalars": scalars, "history": history}, indent=1))
    for name in ("online.safetensors", "target.safetensors", "state.safetensors", "state.json"):
        (tmp / name).replace(path / name)  # state.json last: it marks the checkpoint complete
    tmp.rmdir()


def _load_checkpoint(path: Path, run_id: str, online: nn.Module, target: nn.Module,
                     opt: torch.optim.Optimizer, gen: torch.Generator, device: torch.device
                     ) -> tuple[int, int, tuple[Tensor, Tensor] | None, list[dict[str, float]]]:
    """(epochs done, steps done, (buffer rows, owners), history) from ``path`` if it holds this run's
    checkpoint; (0, 0, None, []) otherwise."""
    from safetensors.torch import load_file

    meta_path = path / "state.json"
    if not meta_path.exists():
        return 0, 0, None, []
    meta = json.loads(meta_path.read_text())
    if meta.get("run_id") != run_id:
        return 0, 0, None, []
    online.load_state_dict(load_file(path / "online.safetensors", device=str(device)))
    target.load_state_dict(load_file(path / "target.safetensors", device=str(device)))
    tensors = load_file(path / "state.safetensors")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["opt_scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    buffer = (tensors["buffer.feats"].to(device), tensors["buffer.owners"])
    return int(meta["epoch"]), int(meta["step"]), buffer, list(meta["history"])


def build_network(cfg: MSRLConfig, task: TaskSpec, variant: str, pretrained: PretrainNet | None,
                  random_gsl: bool, seed: int, pretrained_slide_encoder: bool = True) -> MSRLNet:
    """The online network of a variant: pre-trained encoders/graph learner (φ_H too unless
    ``pretrained_slide_encoder`` is False), optionally a random frozen GSL."""
    if variant == "msrl_h":
        cfg = dataclasses.replace(cfg, group_sizes=())  # no genomics anywhere (no pathway decoder)
    net = MSRLNet(cfg, task, variant)
    if pretrained is not None:
        net.load_pretrained(pretrained, slide_encoder=pretrained_slide_encoder)
    if random_gsl:
        g = torch.Generator().manual_seed(seed + 7919)
        for w in net.gsl.weights:
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=g))
            w.requires_grad_(False)
    return net


def finetune_job(cfg: MSRLConfig, task: TaskSpec, bags: Bags, genomics: Tensor, pathways: Tensor,
                 y: np.ndarray, censorship: np.ndarray, train_cases: Sequence[int], *,
                 pretrained: PretrainNet | None, variant: str = "msrl", graph_mode: GraphMode = "gsl",
                 random_gsl: bool = False, buffer_branch: str = "target",
                 settings: TrainSettings = TrainSettings(), seed: int = 0,
                 device: torch.device | str = "cpu", checkpoint_dir: str | Path | None = None
                 ) -> Job[FinetuneResult]:
    """Fine-tune one task network (a generator of Progress; returns :class:`FinetuneResult`).

    Args:
        cfg: model configuration.
        task: the task.
        bags: patch bags of the cohort.
        genomics: (n_cases, Σ group sizes) packed z-scored expression (fold scaler).
        pathways: (n_cases, n_groups) authentic pathway scores (fold scaler).
        y: (n_cases,) survival bin / class index, -1 = no label (not a training sample, still a buffer row).
        censorship: (n_cases,) 1 = censored (survival).
        train_cases: the training cases (buffer rows); those with ``y >= 0`` are the samples.
        pretrained: stage-1 network (None: random initialisation).
        variant, graph_mode, random_gsl, buffer_branch: see the module docstring.
        settings: training-program settings.
        seed: same seed, same weights (with any number of processes; module docstring).
        device: torch device.
        checkpoint_dir: where to checkpoint after every epoch and resume from (rank 0 writes).
    """
    device = torch.device(device)
    train_cases = np.asarray(train_cases, dtype=np.int64)
    samples = train_cases[y[train_cases] >= 0]
    if len(samples) < 2:
        raise ValueError(f"task {task.name}: fewer than 2 labelled training cases")
    if buffer_branch not in ("target", "online"):
        raise ValueError(f"buffer_branch must be 'target' or 'online', got {buffer_branch!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    online = build_network(cfg, task, variant, pretrained, random_gsl, seed, settings.pretrained_slide_encoder)
    if pretrained is None or not settings.pretrained_slide_encoder:
        online.slide_encoder.set_patch_stats(*bags.patch_stats(train_cases))
    online.to(device)
    distributed.broadcast_module(online)  # same seed, same weights already; this only guards against drift
    target = copy.deepcopy(online).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    params = [p for p in online.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)
    capacity = cfg.buffer_size or len(train_cases)
    y_t = torch.tensor(y, dtype=torch.long)
    c_t = torch.tensor(censorship, dtype=torch.long)
    steps_per_epoch = math.ceil(len(samples) / cfg.batch_size)
    total = steps_per_epoch * cfg.finetune_epochs
    warmup = steps_per_epoch * cfg.warmup_epochs
    pw = settings.pathway_weight if online.pathway_decoder is not None else 0.0
    mm = settings.multimodal_weight if online.uses_genomics else 0.0
    dw = settings.distill_weight if online.uses_genomics else 0.0

    run_id = _run_id(cfg, task, variant, graph_mode, random_gsl, buffer_branch, seed, train_cases, settings)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_epoch, step, saved, history = (0, 0, None, [])
    if ckpt is not None:
        start_epoch, step, saved, history = _load_checkpoint(ckpt, run_id, online, target, opt, gen, device)
    if saved is not None:
        buffer = FifoBuffer(saved[0], saved[1], capacity)
    else:
        order = train_cases[torch.randperm(len(train_cases), generator=gen).numpy()]
        init_net = online if buffer_branch == "online" else target
        buffer = FifoBuffer(compute_buffer(init_net, bags, genomics, order, branch=buffer_branch,
                                           chunk=settings.encode_chunk, device=device),
                            torch.as_tensor(order), capacity)
    yield Progress(Stage.FINETUNE, start_epoch, cfg.finetune_epochs, f"{task.name} {variant}")
    for epoch in range(start_epoch, cfg.finetune_epochs):
        online.train()
        perm = samples[torch.randperm(len(samples), generator=gen).numpy()]
        sums: dict[str, float] = {}
        for part in np.array_split(perm, steps_per_epoch):
            idx = torch.as_tensor(part)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, cfg.finetune_lr, cfg.finetune_min_lr)
            rows = distributed.local_part(np.arange(len(part)))  # positions of this process's share
            views = [mixup_view(bags, part, cfg.max_patches_train, cfg.mixup_alpha, (seed, epoch, v), rows).to(device)
                     if len(rows) else None for v in (1, 2)]
            h = _encode_share(online, views[0], (seed, epoch, step))  # (B, d) whole batch, batch order
            f = online.node_features(h)  # (B, node_dim) online: Inductor prompt
            with torch.no_grad():
                h_t = _encode_share(target, views[1], None)  # eval mode: no dropout
                f_t = target.node_features(h_t, genomics[part].to(device) if target.uses_genomics else None)
            mem = buffer.without(idx)  # (M', node_dim) the batch's own entries removed
            z, ei, ew = graph_forward(online, f, mem, graph_mode)
            with torch.no_grad():
                z_t, ei_t, ew_t = graph_forward(target, f_t, mem, graph_mode)
            n_nodes = mem.shape[0] + len(part)
            terms = {
                "f_align": f_align(f, f_t, cfg.tau),
                "g_align": g_align(z, z_t, cfg.tau),
                "s_align": sparsity_balanced_bce_sparse(ei, ew, ei_t, ew_t, n_nodes),
            }
            logits = online.readout(z, f)  # (B, n_outputs) WSI only
            terms["task"] = task_loss(task, logits, y_t[idx].to(device), c_t[idx].to(device), cfg.nll_alpha)
            if mm or dw:
                f_g = online.node_features(h, genomics[part].to(device))  # (B, node_dim) real genomics
                z_g = graph_forward(online, f_g, mem, graph_mode)[0]
                logits_g = online.readout(z_g, f_g)  # (B, n_outputs)
                if mm:
                    terms["task_multi"] = mm * task_loss(task, logits_g, y_t[idx].to(device), c_t[idx].to(device),
                                                         cfg.nll_alpha)
                if dw:  # the modality-complete pass teaches the WSI-only pass
                    terms["distill"] = dw * F.mse_loss(logits, logits_g.detach())
            if pw:
                terms["pathway"] = pw * F.mse_loss(online.pathways(z, f), pathways[part].to(device))
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(params)
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            opt.step()
            ema_update(target, online, cfg.ema_momentum)
            buffer.push(f.detach() if buffer_branch == "online" else f_t, idx)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            step += 1
        history.append({name: value / steps_per_epoch for name, value in sums.items()})
        if ckpt is not None:
            if distributed.is_main():
                _save_checkpoint(ckpt, run_id, epoch + 1, step, online, target, opt, buffer, gen, history)
            distributed.barrier()
        yield Progress(Stage.FINETUNE, epoch + 1, cfg.finetune_epochs,
                       f"{task.name} {variant} loss={sum(history[-1].values()):.4f}")
    online.eval()
    final_net = online if buffer_branch == "online" else target
    ship = compute_buffer(final_net, bags, genomics, train_cases, branch=buffer_branch,
                          chunk=settings.encode_chunk, device=device)
    return FinetuneResult(online, target, ship, train_cases, graph_mode, buffer_branch, history)


# ---------------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Per-case predictions of held-out cases."""

    cases: np.ndarray  # (Q,) global case indices
    logits: np.ndarray  # (Q, n_outputs)
    risk: np.ndarray | None  # (Q,) survival risk -Σ S_j (survival tasks)
    probs: np.ndarray | None  # (Q, C) class probabilities (classification tasks)
    z: np.ndarray  # (Q, gcn_out) GCN output of each query


def outputs_from_logits(spec: TaskSpec, cases: np.ndarray, logits: Tensor, z: Tensor) -> Predictions:
    logits = logits.detach().cpu()
    if spec.kind == "survival":
        return Predictions(cases, logits.numpy(), survival_from_logits(logits).risk.numpy(), None,
                           z.detach().cpu().numpy())
    return Predictions(cases, logits.numpy(), None, torch.softmax(logits, -1).numpy(), z.detach().cpu().numpy())


@torch.no_grad()
def predict(result: FinetuneResult, bags: Bags, cases: Sequence[int], genomics: Tensor | None = None, *,
            chunk: int = 32, device: torch.device | str = "cpu", engine: str = "exact") -> Predictions:
    """Predict held-out ``cases`` one at a time on the graph [buffer; case] (paper Algorithm 2.III).

    Args:
        result: the fine-tuned network and its buffer.
        bags: patch bags (full bags are used).
        cases: global case indices.
        genomics: packed genomics of *these* cases (rows = cases) for MSRL_multi; None = WSI only.
        engine: "exact" (:class:`~msrl_model.infer.engine.ExactEngine`, GSL graphs only) or "dense"
            (:func:`graph_forward` per case); both give the same numbers.
    """
    device = torch.device(device)
    net = result.online.eval()
    cases = np.asarray(cases, dtype=np.int64)
    nodes = _node_features(net, bags, cases, genomics, max_patches=0, chunk=chunk, device=device)  # (Q, node_dim)
    buffer = result.buffer.to(device)
    if engine == "exact" and result.graph_mode == "gsl":
        from msrl_model.infer.engine import ExactEngine

        eng = ExactEngine(net.gsl, net.gcn, buffer, net.cfg.k)
        z = torch.stack([r.z for r in eng.predict(nodes)])  # (Q, gcn_out)
    else:
        z = torch.cat([graph_forward(net, nodes[i:i + 1], buffer, result.graph_mode)[0] for i in range(len(cases))])
    return outputs_from_logits(net.task, cases, net.readout(z, nodes), z)


__all__ = [
    "FifoBuffer", "FinetuneResult", "GraphMode", "Predictions", "adjacency", "build_network",
    "compute_buffer", "ema_update", "euclidean_knn_adjacency", "finetune_job", "graph_forward",
    "lr_at", "mixup_view", "outputs_from_logits", "predict", "task_loss",
]
