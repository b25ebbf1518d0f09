r"""Training and prediction of the single-modality baselines (:mod:`msrl_model.nn.baselines`) in the
same loop style as MSRL: gated attention-MIL over patch features (WSI only) and an SNN over grouped
genomics (genomics only), trained with the task loss alone.

A :class:`BaselineSpec` says how a baseline network is built and what it reads; the variant registry
(:mod:`msrl_model.train.variants`) names them ``abmil`` and ``snn``. The MSRL ablations are not
separate models: they are options of :func:`~msrl_model.train.finetune.finetune_job`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from msrl_model.nn.baselines import GatedABMIL, SNNBaseline
from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.msrl import TaskSpec
from msrl_model.nn.slide_encoder import set_patch_stats
from msrl_model.progress import Job, Progress, Stage
from msrl_model.train.data import Bags
from msrl_model.train.optim import lr_at, optimizer_step, set_lr, task_loss
from msrl_model.train.predict import Predictions, outputs_from_logits
from msrl_model.train.settings import TrainSettings


@dataclass(frozen=True)
class BaselineSpec:
    """How one baseline network is built and fed."""

    name: str  # e.g. "abmil"
    build: Callable[[MSRLConfig, TaskSpec, TrainSettings], nn.Module]  # (cfg, task, settings) -> network
    reads_slides: bool  # True: padded patch bags (standardiser fitted on the training patches); False: genomics rows


def _gated_abmil(cfg: MSRLConfig, task: TaskSpec, settings: TrainSettings) -> GatedABMIL:
    return GatedABMIL(cfg.patch_dim, cfg.d, settings.abmil_hidden or cfg.d, task, cfg.slide_dropout)


def _snn(cfg: MSRLConfig, task: TaskSpec, settings: TrainSettings) -> SNNBaseline:
    return SNNBaseline(cfg, task)


ABMIL = BaselineSpec("abmil", _gated_abmil, reads_slides=True)
SNN = BaselineSpec("snn", _snn, reads_slides=False)


@dataclass
class BaselineResult:
    """A trained baseline."""

    spec: BaselineSpec  # which baseline
    model: nn.Module  # GatedABMIL | SNNBaseline (eval mode)
    history: list[float]  # mean task loss per epoch


def _forward(spec: BaselineSpec, model: nn.Module, bags: Bags, genomics: Tensor, part: np.ndarray,
             max_patches: int, gen: torch.Generator | None, device: torch.device) -> Tensor:
    """Logits (B, n_outputs) of the cases ``part``: their bags (at most ``max_patches`` patches, 0 =
    all) or their genomics rows, whichever the baseline reads."""
    if spec.reads_slides:
        batch = bags.batch(part, max_patches, gen).to(device)
        return model(batch.x, batch.mask)
    return model(genomics[part].to(device))


def baseline_job(spec: BaselineSpec, cfg: MSRLConfig, task: TaskSpec, bags: Bags, genomics: Tensor, y: np.ndarray,
                 censorship: np.ndarray, train_cases: Sequence[int], *,
                 settings: TrainSettings = TrainSettings(), seed: int = 0,
                 device: torch.device | str = "cpu") -> Job[BaselineResult]:
    """Train the baseline ``spec`` (e.g. :data:`ABMIL`, :data:`SNN`) with the task loss only.

    Same schedule as fine-tuning (AdamW, warm-up + cosine) unless ``settings.baseline_*`` override it.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = spec.build(cfg, task, settings)
    train_cases = np.asarray(train_cases, dtype=np.int64)
    if spec.reads_slides:
        set_patch_stats(model, *bags.patch_stats(train_cases))
    model.to(device)
    samples = train_cases[y[train_cases] >= 0]
    epochs = settings.baseline_epochs or cfg.finetune_epochs
    lr = settings.baseline_lr or cfg.finetune_lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(samples) / cfg.batch_size)
    y_t = torch.tensor(y, dtype=torch.long)
    c_t = torch.tensor(censorship, dtype=torch.long)
    history: list[float] = []
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = samples[torch.randperm(len(samples), generator=gen).numpy()]
        total = 0.0
        for part in np.array_split(perm, steps):
            set_lr(opt, lr_at(step, steps * epochs, steps * cfg.warmup_epochs, lr, cfg.finetune_min_lr))
            logits = _forward(spec, model, bags, genomics, part, cfg.max_patches_train, gen, device)
            loss = task_loss(task, logits, y_t[part].to(device), c_t[part].to(device), cfg.nll_alpha)
            # every process trains the same replicated baseline on the whole batch: nothing to average
            optimizer_step(opt, loss, model.parameters(), settings.grad_clip, average_over_ranks=False)
            total += float(loss.detach())
            step += 1
        history.append(total / steps)
        yield Progress(Stage.BASELINE, epoch + 1, epochs, f"{spec.name} {task.name} loss={history[-1]:.4f}")
    return BaselineResult(spec, model.eval(), history)


@torch.no_grad()
def predict_baseline(result: BaselineResult, bags: Bags, genomics: Tensor, cases: Sequence[int], *,
                     chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
                     device: torch.device | str = "cpu") -> Predictions:
    """Predictions of ``cases`` (full bags for ABMIL, in chunks of at most ``chunk`` bags and
    ``chunk_patches`` padded patches; rows of ``genomics`` indexed by case for SNN, ``chunk`` at a time)."""
    device = torch.device(device)
    cases = np.asarray(cases, dtype=np.int64)
    parts = (bags.chunks(cases, max_patches=0, max_cases=chunk, budget=chunk_patches) if result.spec.reads_slides
             else [cases[i:i + chunk] for i in range(0, len(cases), chunk)])
    logits = torch.cat([_forward(result.spec, result.model, bags, genomics, part, 0, None, device)
                        for part in parts])  # (Q, n_outputs)
    return outputs_from_logits(result.model.task, cases, logits, torch.zeros(len(cases), 0))


__all__ = ["ABMIL", "SNN", "BaselineResult", "BaselineSpec", "baseline_job", "predict_baseline"]
