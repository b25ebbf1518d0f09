"""Task heads: discrete-time survival and classification.

Survival follows Zadeh & Schmid (2020) as used by MCAT / SurvPath and the MSRL paper (appendix D.1):
the head emits one logit per time bin, hazards are their sigmoids and the survival function is the
cumulative product of the complements.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SurvivalOutput(NamedTuple):
    """Discrete-time survival prediction for a batch of B cases and J bins."""

    hazards: Tensor  # (B, J) h_j = sigma(logit_j): P(event in bin j | alive at its start)
    survival: Tensor  # (B, J) S_j = prod_{k<=j} (1 - h_k): P(alive at the end of bin j)
    risk: Tensor  # (B,) -sum_j S_j: higher = worse prognosis


def survival_from_logits(logits: Tensor) -> SurvivalOutput:
    r"""Hazards, survival function and risk from per-bin logits.

    .. math::
        h_j = \sigma(\hat y_j), \qquad S_j = \prod_{k=1}^{j} (1 - h_k), \qquad
        \mathrm{risk} = -\sum_{j=1}^{J} S_j

    Args:
        logits: (B, J) survival-bin logits.

    Returns:
        :class:`SurvivalOutput` with hazards (B, J), survival (B, J), risk (B,).
    """
    hazards = torch.sigmoid(logits)
    # log(1 - sigma(x)) = logsigmoid(-x): stable where the hazard is close to 1
    survival = torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=-1))
    return SurvivalOutput(hazards=hazards, survival=survival, risk=-survival.sum(dim=-1))


class _LinearHead(nn.Module):
    r""":math:`\hat y = W\,\mathrm{dropout}(z) + b`: z (B, in_dim) -> logits (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(self.dropout(z))


class SurvivalHead(_LinearHead):
    r"""Linear discrete-time survival head.

    .. math:: \hat y = W\,\mathrm{dropout}(z) + b \in \mathbb{R}^{J}

    Args:
        in_dim: input feature size (the GCN output of a case, ``gcn_out``).
        n_bins: number of survival bins J.
        dropout: dropout on the input.

    Shapes:
        forward: z (B, in_dim) -> logits (B, J); :meth:`predict` -> :class:`SurvivalOutput`.
    """

    def __init__(self, in_dim: int, n_bins: int = 4, dropout: float = 0.0) -> None:
        super().__init__(in_dim, n_bins, dropout)
        self.n_bins = n_bins

    def predict(self, z: Tensor) -> SurvivalOutput:
        """Hazards, survival function and risk for features z (B, in_dim)."""
        return survival_from_logits(self(z))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, n_bins={self.n_bins}"


class ClassificationHead(_LinearHead):
    r"""Linear classification head (stage, mutation, receptor status).

    .. math:: \hat y = W\,\mathrm{dropout}(z) + b \in \mathbb{R}^{C}, \qquad p = \mathrm{softmax}(\hat y)

    Args:
        in_dim: input feature size.
        n_classes: number of classes C (>= 2; binary tasks use two logits).
        dropout: dropout on the input.

    Shapes:
        forward: z (B, in_dim) -> logits (B, C); :meth:`predict_proba` -> (B, C) rows summing to 1.
    """

    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.0) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        super().__init__(in_dim, n_classes, dropout)
        self.n_classes = n_classes

    def predict_proba(self, z: Tensor) -> Tensor:
        """Class probabilities (B, C)."""
        return torch.softmax(self(z), dim=-1)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, n_classes={self.n_classes}"


def task_head(kind: str, in_dim: int, n_outputs: int, dropout: float = 0.0) -> nn.Module:
    """The head of a task kind: :class:`SurvivalHead` (``kind="survival"``, one logit per bin) or
    :class:`ClassificationHead` (one logit per class).

    Shapes: z (B, in_dim) -> logits (B, n_outputs).
    """
    if kind == "survival":
        return SurvivalHead(in_dim, n_outputs, dropout)
    return ClassificationHead(in_dim, n_outputs, dropout)


__all__ = ["ClassificationHead", "SurvivalHead", "SurvivalOutput", "survival_from_logits", "task_head"]
