r"""Single-modality baselines trained in the same loop style as MSRL: gated attention-MIL over patch
features (WSI only) and an SNN over grouped genomics (genomics only).

The MSRL ablations (KNN-cosine / KNN-euclidean graphs, random frozen GSL, online-branch buffer,
MSRL_H, MSRL_multi) are not separate models: they are arguments of
:func:`msrl_model.train.finetune.finetune_job` / :func:`~msrl_model.train.finetune.predict`, mapped
from variant names by :func:`variant_options`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.genomics import GenomicsEncoder
from msrl_model.nn.heads import ClassificationHead, SurvivalHead
from msrl_model.nn.msrl import TaskSpec
from msrl_model.nn.slide_encoder import set_patch_stats
from msrl_model.progress import Job, Progress, Stage
from msrl_model.train.data import Bags
from msrl_model.train.finetune import Predictions, lr_at, outputs_from_logits, task_loss
from msrl_model.train.presets import TrainSettings

# variant -> options of finetune_job (None: a baseline, not an MSRL network)
_MSRL_VARIANTS = {
    "msrl": dict(variant="msrl", graph_mode="gsl", random_gsl=False, buffer_branch="target"),
    "msrl_h": dict(variant="msrl_h", graph_mode="gsl", random_gsl=False, buffer_branch="target"),
    "knn_cos": dict(variant="msrl", graph_mode="knn_cos", random_gsl=False, buffer_branch="target"),
    "knn_euc": dict(variant="msrl", graph_mode="knn_euc", random_gsl=False, buffer_branch="target"),
    "random_gsl": dict(variant="msrl", graph_mode="gsl", random_gsl=True, buffer_branch="target"),
    "online_buffer": dict(variant="msrl", graph_mode="gsl", random_gsl=False, buffer_branch="online"),
}


def variant_options(name: str) -> dict | None:
    """finetune_job keyword arguments of an MSRL-family variant; None for abmil/snn/msrl_multi."""
    return dict(_MSRL_VARIANTS[name]) if name in _MSRL_VARIANTS else None


class GatedABMIL(nn.Module):
    r"""Gated attention MIL (Ilse et al. 2018) over a bag of patch features, then a task head.

    Patch features are standardised first, :math:`x_i \leftarrow (x_i - \mu) \oslash \sigma` (buffers
    ``patch_mean`` / ``patch_std`` fitted on the training patches, as in the slide encoder).

    .. math::
        e_i = \mathrm{ReLU}(W_e x_i), \quad
        a_i = \mathrm{softmax}_i\big(w^\top (\tanh(V e_i) \odot \sigma(U e_i))\big), \quad
        m = \textstyle\sum_i a_i e_i, \quad \hat y = \mathrm{head}(m)

    Shapes: x (B, N, patch_dim), mask (B, N) bool True = a real patch -> logits (B, n_outputs).
    """

    def __init__(self, patch_dim: int, dim: int, hidden: int, task: TaskSpec, dropout: float = 0.0) -> None:
        super().__init__()
        self.task = task
        self.embed = nn.Sequential(nn.Linear(patch_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.att_v = nn.Linear(dim, hidden)
        self.att_u = nn.Linear(dim, hidden)
        self.att_w = nn.Linear(hidden, 1)
        self.head: nn.Module = (SurvivalHead(dim, task.n_outputs) if task.kind == "survival"
                                else ClassificationHead(dim, task.n_outputs))
        self.register_buffer("patch_mean", torch.zeros(patch_dim))  # (patch_dim,) standardiser mean
        self.register_buffer("patch_std", torch.ones(patch_dim))  # (patch_dim,) standardiser std

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        e = self.embed((x - self.patch_mean) / self.patch_std)  # (B, N, dim)
        score = self.att_w(torch.tanh(self.att_v(e)) * torch.sigmoid(self.att_u(e))).squeeze(-1)  # (B, N)
        a = score.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # (B, N)
        return self.head((a.unsqueeze(-1) * e).sum(1))  # (B, dim) -> logits


class SNNBaseline(nn.Module):
    """Genomics-only model: grouped SNN encoder φ_G (mean over groups) -> task head.

    Shapes: packed genomics (B, Σ group sizes) -> logits (B, n_outputs).
    """

    def __init__(self, cfg: MSRLConfig, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.encoder = GenomicsEncoder.from_config(cfg)
        self.head: nn.Module = (SurvivalHead(cfg.d, task.n_outputs) if task.kind == "survival"
                                else ClassificationHead(cfg.d, task.n_outputs))

    def forward(self, genomics: Tensor) -> Tensor:
        return self.head(self.encoder(genomics)[0])


@dataclass
class BaselineResult:
    """A trained baseline."""

    kind: str  # "abmil" | "snn"
    model: nn.Module  # GatedABMIL | SNNBaseline (eval mode)
    history: list[float]  # mean task loss per epoch


def _forward(kind: str, model: nn.Module, bags: Bags, genomics: Tensor, part: np.ndarray, max_patches: int,
             gen: torch.Generator | None, device: torch.device) -> Tensor:
    if kind == "abmil":
        batch = bags.batch(part, max_patches, gen).to(device)
        return model(batch.x, batch.mask)
    return model(genomics[part].to(device))


def baseline_job(kind: str, cfg: MSRLConfig, task: TaskSpec, bags: Bags, genomics: Tensor, y: np.ndarray,
                 censorship: np.ndarray, train_cases: Sequence[int], *,
                 settings: TrainSettings = TrainSettings(), seed: int = 0,
                 device: torch.device | str = "cpu") -> Job[BaselineResult]:
    """Train an ABMIL (``kind="abmil"``) or SNN (``kind="snn"``) baseline with the task loss only.

    Same schedule as fine-tuning (AdamW, warm-up + cosine) unless ``settings.baseline_*`` override it.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if kind == "abmil":
        model: nn.Module = GatedABMIL(cfg.patch_dim, cfg.d, settings.abmil_hidden or cfg.d, task,
                                      cfg.slide_dropout)
    elif kind == "snn":
        model = SNNBaseline(cfg, task)
    else:
        raise ValueError(f"unknown baseline {kind!r}; use 'abmil' or 'snn'")
    train_cases = np.asarray(train_cases, dtype=np.int64)
    if kind == "abmil":
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
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps * epochs, steps * cfg.warmup_epochs, lr, cfg.finetune_min_lr)
            logits = _forward(kind, model, bags, genomics, part, cfg.max_patches_train, gen, device)
            loss = task_loss(task, logits, y_t[part].to(device), c_t[part].to(device), cfg.nll_alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            total += float(loss.detach())
            step += 1
        history.append(total / steps)
        yield Progress(Stage.BASELINE, epoch + 1, epochs, f"{kind} {task.name} loss={history[-1]:.4f}")
    return BaselineResult(kind, model.eval(), history)


@torch.no_grad()
def predict_baseline(result: BaselineResult, bags: Bags, genomics: Tensor, cases: Sequence[int], *,
                     chunk: int = 32, device: torch.device | str = "cpu") -> Predictions:
    """Predictions of ``cases`` (full bags for ABMIL; rows of ``genomics`` indexed by case for SNN)."""
    device = torch.device(device)
    cases = np.asarray(cases, dtype=np.int64)
    logits = torch.cat([_forward(result.kind, result.model, bags, genomics, cases[i:i + chunk], 0, None, device)
                        for i in range(0, len(cases), chunk)])
    return outputs_from_logits(result.model.task, cases, logits, torch.zeros(len(cases), 0))


__all__ = ["BaselineResult", "GatedABMIL", "SNNBaseline", "baseline_job", "predict_baseline", "variant_options"]
