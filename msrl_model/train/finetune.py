r"""Stage 2: per-task fine-tuning with an online and an EMA target branch and a FIFO buffer
(paper §3.3, Algorithm 2). Prediction of held-out cases against the buffer:
:mod:`msrl_model.train.predict`; the buffer, mixup views and EMA: :mod:`msrl_model.train.buffer`.

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
  paper's online branch only ever feeds the head Inductor-prompted nodes, yet MSRL_multi (architecture §4:
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
* **Gradient norms** per epoch in the history (``grad_norm/<module>``, the mean over steps of the
  clipped gradient's L2 norm of φ_H, the Inductor, the GSL, the GCN, the head, the readout skip and
  all parameters): where the task's signal reaches the graph (:mod:`msrl_model.train.graphcheck`).
  On the demo cohort the GSL receives 0.26 % of it. *Decision:* the GSL keeps the common learning
  rate. Measured: the GSL's learning rate ×100 (a separate AdamW group, 5 folds, survival) gave C
  0.6912 against 0.6915, with an unchanged rank agreement with ``no_graph`` (0.97–0.99): a graph
  learner that moves faster does not make the neighbours tell more on that cohort, whose
  prognostic genomic factor no slide shows (:mod:`msrl_model.train.graphcheck`).
* AdamW, linear warm-up for ``cfg.warmup_epochs`` then cosine to ``cfg.finetune_min_lr`` (per step);
  target :math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_o` after every step (``cfg.ema_momentum``).

Variants in the same code path (named in :mod:`msrl_model.train.variants`): ``variant="msrl_h"``
(nodes h, no genomics anywhere), ``graph_mode="knn_cos" | "knn_euc"`` (fixed kNN graphs over the
node features instead of the GSL, :data:`~msrl_model.nn.graph.KNN_GRAPHS`), ``random_gsl=True``
(GSL weights random and frozen), ``buffer_branch="online"`` (buffer filled with online features).

**Several processes** (``torchrun``, :mod:`msrl_model.train.distributed`): ``cfg.batch_size`` is the
*global* batch. Each rank builds the views of its contiguous share of the batch and runs the online
and target slide encoders on it; h and ĥ are gathered in batch order (the online gather is
differentiable), and every rank then computes the same node features, graphs and losses over the
whole batch, averages the gradients, takes the same optimizer step and EMA update, and pushes the
same gathered target rows to its copy of the FIFO buffer (replicated, identical on every rank). The
result equals one process with the same settings, up to float rounding (online slide-encoder
dropout, when ``cfg.slide_dropout > 0``, draws per-rank masks: same distribution, different
weights). Rank 0 alone writes checkpoints.

Checkpoints (``checkpoint_dir``, :mod:`msrl_model.train.checkpoint`): after every epoch the two
branches, the optimizer moments, the buffer and the RNG states. A run started again with the same
arguments resumes after the last finished epoch and ends with the same weights as an uninterrupted
run. No pickle.
"""


from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.graph import GraphMode
from msrl_model.nn.losses import f_align, g_align, sparsity_balanced_bce_sparse
from msrl_model.nn.msrl import MSRLNet, PretrainNet, SlideBatch, TaskSpec, Variant
from msrl_model.progress import Job, Progress, Stage
from msrl_model.train import distributed
from msrl_model.train.buffer import FifoBuffer, compute_buffer_job, ema_update, mixup_view
from msrl_model.train.checkpoint import ResumePoint, fresh_start, load_checkpoint, run_id, save_checkpoint
from msrl_model.train.data import Bags
from msrl_model.train.optim import lr_at, optimizer_step, set_lr, task_loss
from msrl_model.train.settings import TrainSettings


@dataclass
class FinetuneResult:
    """A fine-tuned task network and its shipped buffer."""

    online: MSRLNet  # the network used for prediction
    target: MSRLNet  # the EMA target (computes buffer features)
    buffer: Tensor  # (n_train, node_dim) node features of the training cases (final target, full bags)
    buffer_cases: np.ndarray  # (n_train,) global case index of each buffer row
    graph_mode: GraphMode  # graph used in training and prediction
    buffer_branch: str  # "target" (MSRL) or "online" (ablation)
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean loss terms, grad_norm/<module>


def build_network(cfg: MSRLConfig, task: TaskSpec, variant: Variant, pretrained: PretrainNet | None,
                  random_gsl: bool, seed: int, pretrained_slide_encoder: bool = True) -> MSRLNet:
    """The online network of a variant: pre-trained encoders/graph learner (φ_H too unless
    ``pretrained_slide_encoder`` is False), optionally a random frozen GSL."""
    if variant == "msrl_h":
        cfg = dataclasses.replace(cfg, group_sizes=())  # no genomics anywhere (no pathway decoder)
    net = MSRLNet(cfg, task, variant)
    if pretrained is not None:
        net.load_pretrained(pretrained, slide_encoder=pretrained_slide_encoder)
    if random_gsl:
        net.gsl.freeze_random_(torch.Generator().manual_seed(seed + 7919))
    return net


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


@dataclass(frozen=True)
class LossWeights:
    """Weights of the optional loss terms (module docstring); 0 = the term is off."""

    pathway: float  # w_pw: pathway reconstruction (0 without a pathway decoder)
    multimodal: float  # w_mm: task loss of the modality-complete pass (0 for MSRL_H)
    distill: float  # w_kd: WSI-only logits toward the modality-complete pass (0 for MSRL_H)

    @classmethod
    def of(cls, net: MSRLNet, settings: TrainSettings) -> LossWeights:
        return cls(settings.pathway_weight if net.pathway_decoder is not None else 0.0,
                   settings.multimodal_weight if net.uses_genomics else 0.0,
                   settings.distill_weight if net.uses_genomics else 0.0)


@dataclass
class _FinetuneRun:
    """What the steps of one fine-tuning run read and update."""

    cfg: MSRLConfig
    task: TaskSpec
    bags: Bags
    genomics: Tensor  # (n_cases, Σ group sizes) packed expression
    pathways: Tensor  # (n_cases, n_groups) authentic pathway scores
    y: Tensor  # (n_cases,) long targets
    censorship: Tensor  # (n_cases,) long, 1 = censored
    graph_mode: GraphMode
    buffer_branch: str  # "target" | "online"
    weights: LossWeights
    settings: TrainSettings
    seed: int
    device: torch.device
    online: MSRLNet
    target: MSRLNet
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]  # the trainable parameters of the online branch
    buffer: FifoBuffer | None = None

    def task_loss(self, logits: Tensor, part: np.ndarray) -> Tensor:
        """Task loss of logits (B, n_outputs) of the batch cases ``part``."""
        idx = torch.as_tensor(part)
        return task_loss(self.task, logits, self.y[idx].to(self.device), self.censorship[idx].to(self.device),
                         self.cfg.nll_alpha)


def _check_cases(task: TaskSpec, y: np.ndarray, train_cases: np.ndarray, buffer_branch: str) -> np.ndarray:
    """The labelled training cases (the samples); ValueError for too few or an unknown branch."""
    samples = train_cases[y[train_cases] >= 0]
    if len(samples) < 2:
        raise ValueError(f"task {task.name}: fewer than 2 labelled training cases")
    if buffer_branch not in ("target", "online"):
        raise ValueError(f"buffer_branch must be 'target' or 'online', got {buffer_branch!r}")
    return samples


def _online_and_target(online: MSRLNet, bags: Bags, train_cases: np.ndarray, fresh_slide_encoder: bool,
                       device: torch.device) -> tuple[MSRLNet, MSRLNet]:
    """(online, target) on ``device``: the target a frozen copy of the online network; a fresh φ_H
    gets its patch standardiser from the training cases."""
    if fresh_slide_encoder:
        online.slide_encoder.set_patch_stats(*bags.patch_stats(train_cases))
    online.to(device)
    distributed.broadcast_module(online)  # same seed, same weights already; this only guards against drift
    target = copy.deepcopy(online).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return online, target


def _initial_buffer(run: _FinetuneRun, resume: ResumePoint, train_cases: np.ndarray, gen: torch.Generator
                    ) -> Job[FifoBuffer]:
    """The checkpointed buffer, or every training case's features (in a random order) from the
    branch that fills the buffer (a job: ``Stage.EMBED`` ticks while it embeds the cases)."""
    capacity = run.cfg.buffer_size or len(train_cases)
    if resume.buffer is not None:
        return FifoBuffer(resume.buffer[0], resume.buffer[1], capacity)
    order = train_cases[torch.randperm(len(train_cases), generator=gen).numpy()]
    init_net = run.online if run.buffer_branch == "online" else run.target
    feats = yield from compute_buffer_job(init_net, run.bags, run.genomics, order, branch=run.buffer_branch,
                                          chunk=run.settings.encode_chunk, chunk_patches=run.settings.chunk_patches,
                                          device=run.device,
                                          message=f"{run.task.name}: initial buffer")
    return FifoBuffer(feats, torch.as_tensor(order), capacity)


def _modality_complete_terms(run: _FinetuneRun, part: np.ndarray, h: Tensor, mem: Tensor, logits: Tensor
                             ) -> dict[str, Tensor]:
    """The weighted task loss of the real-genomics pass and the distillation toward it."""
    f_g = run.online.node_features(h, run.genomics[part].to(run.device))  # (B, node_dim) real genomics
    z_g = run.online.graph_forward(f_g, mem, run.graph_mode)[0]
    logits_g = run.online.readout(z_g, f_g)  # (B, n_outputs)
    terms: dict[str, Tensor] = {}
    if run.weights.multimodal:
        terms["task_multi"] = run.weights.multimodal * run.task_loss(logits_g, part)
    if run.weights.distill:  # the modality-complete pass teaches the WSI-only pass
        terms["distill"] = run.weights.distill * F.mse_loss(logits, logits_g.detach())
    return terms


def _step_terms(run: _FinetuneRun, part: np.ndarray, h: Tensor, f: Tensor, f_t: Tensor, mem: Tensor
                ) -> dict[str, Tensor]:
    """Every loss term of one step; h (B, d), f and f_t (B, node_dim), mem (M', node_dim)."""
    z, ei, ew = run.online.graph_forward(f, mem, run.graph_mode)
    with torch.no_grad():
        z_t, ei_t, ew_t = run.target.graph_forward(f_t, mem, run.graph_mode)
    n_nodes = mem.shape[0] + len(part)
    terms = {
        "f_align": f_align(f, f_t, run.cfg.tau),
        "g_align": g_align(z, z_t, run.cfg.tau),
        "s_align": sparsity_balanced_bce_sparse(ei, ew, ei_t, ew_t, n_nodes),
    }
    logits = run.online.readout(z, f)  # (B, n_outputs) WSI only
    terms["task"] = run.task_loss(logits, part)
    if run.weights.multimodal or run.weights.distill:
        terms.update(_modality_complete_terms(run, part, h, mem, logits))
    if run.weights.pathway:
        terms["pathway"] = run.weights.pathway * F.mse_loss(run.online.pathways(z, f),
                                                            run.pathways[part].to(run.device))
    return terms


GRAD_GROUPS = ("slide_encoder", "inductor", "gsl", "gcn", "head", "skip")
"""Modules of the online network whose gradient norms the history records (``grad_norm/<name>``)."""


def _gradient_norms(net: MSRLNet) -> dict[str, float]:
    """L2 norm of the (clipped) gradient of each of :data:`GRAD_GROUPS` present and of all parameters."""
    def norm(module: torch.nn.Module) -> float | None:
        grads = [torch.linalg.vector_norm(p.grad) for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else None

    groups = {name: getattr(net, name, None) for name in GRAD_GROUPS}
    norms = {f"grad_norm/{name}": norm(module) for name, module in {**groups, "all": net}.items()
             if module is not None}
    return {name: value for name, value in norms.items() if value is not None}


def _train_step(run: _FinetuneRun, part: np.ndarray, epoch: int, step: int
                ) -> tuple[dict[str, Tensor], dict[str, float]]:
    """One optimizer step on the batch ``part`` (global case indices), the EMA update and the buffer
    push; returns the loss terms and the gradient norms (:func:`_gradient_norms`)."""
    cfg, device = run.cfg, run.device
    idx = torch.as_tensor(part)
    rows = distributed.local_part(np.arange(len(part)))  # positions of this process's share
    views = [mixup_view(run.bags, part, cfg.max_patches_train, cfg.mixup_alpha, (run.seed, epoch, v), rows).to(device)
             if len(rows) else None for v in (1, 2)]
    h = _encode_share(run.online, views[0], (run.seed, epoch, step))  # (B, d) whole batch, batch order
    f = run.online.node_features(h)  # (B, node_dim) online: Inductor prompt
    with torch.no_grad():
        h_t = _encode_share(run.target, views[1], None)  # eval mode: no dropout
        f_t = run.target.node_features(h_t, run.genomics[part].to(device) if run.target.uses_genomics else None)
    mem = run.buffer.without(idx)  # (M', node_dim) the batch's own entries removed
    terms = _step_terms(run, part, h, f, f_t, mem)
    optimizer_step(run.opt, sum(terms.values()), run.params, run.settings.grad_clip)
    grads = _gradient_norms(run.online)
    ema_update(run.target, run.online, cfg.ema_momentum)
    run.buffer.push(f.detach() if run.buffer_branch == "online" else f_t, idx)
    return terms, grads


def _train_epoch(run: _FinetuneRun, samples: np.ndarray, gen: torch.Generator, epoch: int, step: int
                 ) -> tuple[dict[str, float], int]:
    """One epoch over the samples in a random order: (mean loss terms and gradient norms, steps done
    after it)."""
    cfg = run.cfg
    steps_per_epoch = math.ceil(len(samples) / cfg.batch_size)
    total, warmup = steps_per_epoch * cfg.finetune_epochs, steps_per_epoch * cfg.warmup_epochs
    run.online.train()
    perm = samples[torch.randperm(len(samples), generator=gen).numpy()]
    sums: dict[str, float] = {}
    for part in np.array_split(perm, steps_per_epoch):
        set_lr(run.opt, lr_at(step, total, warmup, cfg.finetune_lr, cfg.finetune_min_lr))
        terms, grads = _train_step(run, part, epoch, step)
        for name, value in [*((n, float(v.detach())) for n, v in terms.items()), *grads.items()]:
            sums[name] = sums.get(name, 0.0) + value
        step += 1
    return {name: value / steps_per_epoch for name, value in sums.items()}, step



def _checkpoint(path: Path, identity: str, epoch: int, step: int, run: _FinetuneRun, gen: torch.Generator,
                history: list[dict[str, float]]) -> None:
    """Rank 0 writes the checkpoint after ``epoch`` epochs; every rank waits for it."""
    if distributed.is_main():
        save_checkpoint(path, identity, epoch, step, run.online, run.target, run.opt, run.buffer, gen, history)
    distributed.barrier()


def finetune_job(cfg: MSRLConfig, task: TaskSpec, bags: Bags, genomics: Tensor, pathways: Tensor,
                 y: np.ndarray, censorship: np.ndarray, train_cases: Sequence[int], *,
                 pretrained: PretrainNet | None, variant: Variant = "msrl", graph_mode: GraphMode = "gsl",
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
    samples = _check_cases(task, y, train_cases, buffer_branch)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build_network(cfg, task, variant, pretrained, random_gsl, seed, settings.pretrained_slide_encoder)
    fresh_slide_encoder = pretrained is None or not settings.pretrained_slide_encoder
    online, target = _online_and_target(net, bags, train_cases, fresh_slide_encoder, device)
    params = [p for p in online.parameters() if p.requires_grad]
    run = _FinetuneRun(
        cfg=cfg, task=task, bags=bags, genomics=genomics, pathways=pathways,
        y=torch.tensor(y, dtype=torch.long), censorship=torch.tensor(censorship, dtype=torch.long),
        graph_mode=graph_mode, buffer_branch=buffer_branch, weights=LossWeights.of(online, settings),
        settings=settings, seed=seed, device=device, online=online, target=target,
        opt=torch.optim.AdamW(params, lr=cfg.finetune_lr, weight_decay=cfg.weight_decay), params=params)
    identity = run_id(cfg.to_dict(), task.to_dict(), variant, graph_mode, random_gsl, buffer_branch, seed,
                      train_cases.tolist(), settings.identity())
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resume = fresh_start() if ckpt is None else load_checkpoint(ckpt, identity, online, target, run.opt, gen, device)
    run.buffer = yield from _initial_buffer(run, resume, train_cases, gen)
    step, history = resume.step, resume.history
    yield Progress(Stage.FINETUNE, resume.epoch, cfg.finetune_epochs, f"{task.name} {variant}")
    for epoch in range(resume.epoch, cfg.finetune_epochs):
        means, step = _train_epoch(run, samples, gen, epoch, step)
        history.append(means)
        if ckpt is not None:
            _checkpoint(ckpt, identity, epoch + 1, step, run, gen, history)
        loss = sum(v for k, v in means.items() if not k.startswith("grad_norm/"))
        yield Progress(Stage.FINETUNE, epoch + 1, cfg.finetune_epochs, f"{task.name} {variant} loss={loss:.4f}")
    online.eval()
    final_net = online if buffer_branch == "online" else target
    ship = yield from compute_buffer_job(final_net, bags, genomics, train_cases, branch=buffer_branch,
                                         chunk=settings.encode_chunk, chunk_patches=settings.chunk_patches,
                                         device=device,
                                         message=f"{task.name}: final buffer")
    return FinetuneResult(online, target, ship, train_cases, graph_mode, buffer_branch, history)


__all__ = ["FinetuneResult", "LossWeights", "build_network", "finetune_job"]
