r"""Single-modality baseline networks: gated attention-MIL over patch features (WSI only) and an SNN
over grouped genomics (genomics only). Their training loop is :mod:`msrl_model.train.baselines`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.genomics import GenomicsEncoder
from msrl_model.nn.heads import task_head
from msrl_model.nn.msrl import TaskSpec


class GatedABMIL(nn.Module):
    r"""Gated attention MIL (Ilse et al. 2018) over a bag of patch features, then a task head.

    Patch features are standardised first, :math:`x_i \leftarrow (x_i - \mu) \oslash \sigma` (buffers
    ``patch_mean`` / ``patch_std`` fitted on the training patches, as in the slide encoder).

    .. math::
        e_i = \mathrm{ReLU}(W_e x_i), \quad
        a_i = \mathrm{softmax}_i\big(w^\top (\tanh(V e_i) \odot \sigma(U e_i))\big), \quad
        m = \textstyle\sum_i a_i e_i, \quad \hat y = \mathrm{head}(m)

    Args:
        patch_dim: patch feature dimension P.
        dim: embedding width of :math:`e_i` and m.
        hidden: width of the gated attention (V, U).
        task: what the head predicts.
        dropout: dropout on :math:`e_i` (training only).

    Shapes:
        x (B, N, patch_dim), mask (B, N) bool True = a real patch -> logits (B, n_outputs).
    """

    def __init__(self, patch_dim: int, dim: int, hidden: int, task: TaskSpec, dropout: float = 0.0) -> None:
        super().__init__()
        self.task = task
        self.embed = nn.Sequential(nn.Linear(patch_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.att_v = nn.Linear(dim, hidden)
        self.att_u = nn.Linear(dim, hidden)
        self.att_w = nn.Linear(hidden, 1)
        self.head = task_head(task.kind, dim, task.n_outputs)
        self.register_buffer("patch_mean", torch.zeros(patch_dim))  # (patch_dim,) standardiser mean
        self.register_buffer("patch_std", torch.ones(patch_dim))  # (patch_dim,) standardiser std

    def reset_parameters(self) -> None:
        """Re-initialise every linear layer and the head (the standardiser buffers stay)."""
        for layer in (self.embed[0], self.att_v, self.att_u, self.att_w, self.head):
            layer.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        e = self.embed((x - self.patch_mean) / self.patch_std)  # (B, N, dim)
        score = self.att_w(torch.tanh(self.att_v(e)) * torch.sigmoid(self.att_u(e))).squeeze(-1)  # (B, N)
        a = score.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # (B, N)
        return self.head((a.unsqueeze(-1) * e).sum(1))  # (B, dim) -> logits


class SNNBaseline(nn.Module):
    r"""Genomics-only model: grouped SNN encoder φ_G, mean over the gene groups, then a task head.

    .. math:: \hat y = \mathrm{head}\big(\tfrac1{|\mathcal G|} \textstyle\sum_{p \in \mathcal G} φ_G(X_G)_p\big)

    Args:
        cfg: model configuration (``group_sizes`` set; φ_G as in MSRL).
        task: what the head predicts.

    Shapes:
        packed genomics (B, Σ group sizes) -> logits (B, n_outputs).
    """

    def __init__(self, cfg: MSRLConfig, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.encoder = GenomicsEncoder.from_config(cfg)
        self.head = task_head(task.kind, cfg.d, task.n_outputs)

    def reset_parameters(self) -> None:
        """Re-initialise φ_G and the head."""
        self.encoder.reset_parameters()
        self.head.reset_parameters()

    def forward(self, genomics: Tensor) -> Tensor:
        return self.head(self.encoder(genomics)[0])  # (B, d) group mean -> logits


__all__ = ["GatedABMIL", "SNNBaseline"]
