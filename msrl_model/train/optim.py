r"""Optimisation pieces shared by pre-training, fine-tuning and the baselines: the learning-rate
schedule, the task loss and one optimizer step.

Schedule (per step s of T, warm-up W, peak :math:`\eta`, floor :math:`\eta_{min}`):

.. math::
    \eta_s = \eta\,\frac{s + 1}{W}\ (s < W), \qquad
    \eta_s = \eta_{min} + \tfrac12(\eta - \eta_{min})\big(1 + \cos(\pi \min(1, \tfrac{s - W}{\max(1, T - W)}))\big)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from msrl_model.nn.losses import classification_loss, nll_survival_loss
from msrl_model.nn.msrl import TaskSpec
from msrl_model.train import distributed


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps to ``peak``, then cosine to ``floor`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group of ``opt`` to learning rate ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr


def task_loss(spec: TaskSpec, logits: Tensor, y: Tensor, censorship: Tensor, nll_alpha: float) -> Tensor:
    """NLL survival loss (with α) or cross-entropy; logits (B, n_outputs), y and censorship (B,)."""
    if spec.kind == "survival":
        return nll_survival_loss(logits, y, censorship, alpha=nll_alpha)
    return classification_loss(logits, y)


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, params: Iterable[nn.Parameter], grad_clip: float,
                   *, average_over_ranks: bool = True) -> None:
    """Backward pass of ``loss``, then :func:`apply_gradients`."""
    params = list(params)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    apply_gradients(opt, params, grad_clip, average_over_ranks=average_over_ranks)


def apply_gradients(opt: torch.optim.Optimizer, params: Iterable[nn.Parameter], grad_clip: float,
                    *, average_over_ranks: bool = True) -> None:
    """Gradients averaged over the processes (when ``average_over_ranks``; a no-op in one process),
    clipped to norm ``grad_clip`` (0 = no clipping), then ``opt.step()``."""
    params = list(params)
    if average_over_ranks:
        distributed.average_gradients(params)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


__all__ = ["apply_gradients", "lr_at", "optimizer_step", "set_lr", "task_loss"]
