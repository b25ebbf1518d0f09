r"""Genomics side of MSRL: SNN blocks, the grouped genomics encoder φ_G, the Inductor, pathway scores.

Genes are divided into n functional groups (e.g. the 50 MSigDB Hallmark sets); each group has its own
self-normalising network (Klambauer et al. 2017) as in MCAT / SurvPath, and the case embedding is the
mean of the group embeddings (paper §3.1). The Inductor has the same SNN architecture but maps the
WSI representation h to a "genomics prompt" standing in for the missing expression (paper §3.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from msrl_model.nn.config import MSRLConfig


class SNNBlock(nn.Module):
    r"""Self-normalising block: Linear → ELU → AlphaDropout (MCAT / SurvPath).

    .. math:: y = \mathrm{AlphaDropout}_p\big(\mathrm{ELU}(W x + b)\big)

    Weights are LeCun-normal, :math:`W_{ij} \sim \mathcal N(0, 1/\mathrm{fan\_in})`, biases zero
    (MCAT's ``init_max_weights``).

    Args:
        in_dim: input size.
        out_dim: output size.
        dropout: AlphaDropout rate p.

    Shapes: (*, in_dim) -> (*, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.act = nn.ELU()
        self.dropout = nn.AlphaDropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SELU-style init: W ~ N(0, 1/in_dim), b = 0. Nothing is drawn on the meta device (a shape-only
        build, e.g. a bundle's expected parameter shapes): torch's meta ``normal_`` imports ``torch._dynamo``,
        seconds of the app's time to a ready model."""
        if not self.linear.weight.is_meta:
            nn.init.normal_(self.linear.weight, mean=0.0, std=1.0 / math.sqrt(self.linear.in_features))
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.act(self.linear(x)))


class SNN(nn.Sequential):
    r"""A stack of ``layers`` :class:`SNNBlock` s: in_dim → dim → … → dim.

    .. math:: y = \mathrm{SNNBlock}_L \circ \dots \circ \mathrm{SNNBlock}_1(x)

    Args:
        in_dim: input size.
        dim: width of every block (and the output size).
        layers: number of blocks (>= 1).
        dropout: AlphaDropout rate.

    Shapes: (*, in_dim) -> (*, dim).
    """

    def __init__(self, in_dim: int, dim: int, layers: int = 2, dropout: float = 0.25) -> None:
        if layers < 1:
            raise ValueError(f"SNN needs at least one layer, got {layers}")
        super().__init__(*[SNNBlock(in_dim if i == 0 else dim, dim, dropout) for i in range(layers)])

    def reset_parameters(self) -> None:
        for block in self:
            block.reset_parameters()


class GenomicsEncoder(nn.Module):
    r"""Grouped genomics encoder φ_G: one SNN per gene group, case embedding = mean over groups.

    .. math::
        x_G^{(i)} = \mathrm{SNN}_i\big(v^{(i)}\big) \in \mathbb R^{d}, \quad i = 1..n, \qquad
        g = \frac1n \sum_{i=1}^{n} x_G^{(i)}

    where :math:`v^{(i)}` are the (per-fold z-scored) expression values of group i's genes. Groups may
    overlap (Hallmark sets share genes): the input is the per-group values, not the gene vector.

    Args:
        group_sizes: genes per group (n groups, sizes may differ).
        d: embedding size.
        layers: SNN blocks per group.
        dropout: AlphaDropout rate.

    Shapes:
        forward(groups): either a list of n tensors (B, s_i), or one packed tensor (B, Σ s_i) with the
        groups concatenated in order (see :func:`gather_groups`) ->
        (g (B, d), per_group (B, n, d)).
    """

    def __init__(self, group_sizes: Sequence[int], d: int, layers: int = 2, dropout: float = 0.25) -> None:
        super().__init__()
        if not group_sizes:
            raise ValueError("GenomicsEncoder needs at least one gene group")
        self.group_sizes = tuple(int(s) for s in group_sizes)
        self.d = d
        self.snns = nn.ModuleList([SNN(s, d, layers, dropout) for s in self.group_sizes])
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: MSRLConfig) -> GenomicsEncoder:
        """Build from an :class:`~msrl_model.nn.config.MSRLConfig` (``group_sizes`` must be set)."""
        return cls(cfg.group_sizes, cfg.d, cfg.snn_layers, cfg.snn_dropout)

    @property
    def n_groups(self) -> int:
        return len(self.group_sizes)

    def reset_parameters(self) -> None:
        for snn in self.snns:
            snn.reset_parameters()

    def forward(self, groups: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if isinstance(groups, Tensor):
            if groups.shape[-1] != sum(self.group_sizes):
                raise ValueError(f"packed genomics has {groups.shape[-1]} values, expected {sum(self.group_sizes)}")
            groups = torch.split(groups, self.group_sizes, dim=-1)  # n x (B, s_i)
        if len(groups) != self.n_groups:
            raise ValueError(f"got {len(groups)} gene groups, expected {self.n_groups}")
        per_group = torch.stack([snn(v) for snn, v in zip(self.snns, groups)], dim=1)  # (B, n, d)
        return per_group.mean(dim=1), per_group

    def extra_repr(self) -> str:
        return f"n_groups={self.n_groups}, d={self.d}"


class Inductor(nn.Module):
    r"""Inductor: the genomics prompt from the WSI representation (same SNN architecture as φ_G).

    .. math:: g = \mathrm{SNN}(h)

    Args:
        d: size of h and of the prompt g.
        layers: SNN blocks.
        dropout: AlphaDropout rate.

    Shapes: h (B, d) -> g (B, d).
    """

    def __init__(self, d: int, layers: int = 2, dropout: float = 0.25) -> None:
        super().__init__()
        self.snn = SNN(d, d, layers, dropout)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: MSRLConfig) -> Inductor:
        """Build from an :class:`~msrl_model.nn.config.MSRLConfig`."""
        return cls(cfg.d, cfg.snn_layers, cfg.snn_dropout)

    def reset_parameters(self) -> None:
        self.snn.reset_parameters()

    def forward(self, h: Tensor) -> Tensor:
        return self.snn(h)


class PathwayDecoder(nn.Module):
    r"""Linear read-out of pathway activity scores from a case feature.

    .. math:: \hat a = W z + b \in \mathbb R^{n}

    Trained (e.g. MSE) against :func:`pathway_scores` of the case's authentic expression; at inference
    it gives the "pathway activity reconstructed for this slide" from the fused feature f (2d) or from
    the genomics prompt g (d).

    Args:
        in_dim: input size (2d for f, d for g).
        n_groups: number of pathways / gene groups.

    Shapes: z (B, in_dim) -> (B, n_groups).
    """

    def __init__(self, in_dim: int, n_groups: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, n_groups)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)


def _index_list(groups: Sequence[Sequence[int] | Tensor]) -> list[Tensor]:
    out = [torch.as_tensor(g, dtype=torch.long).reshape(-1) for g in groups]
    if not out or any(g.numel() == 0 for g in out):
        raise ValueError("every gene group needs at least one gene index")
    return out


def gather_groups(expression: Tensor, groups: Sequence[Sequence[int] | Tensor]) -> Tensor:
    """Pack per-group expression for :class:`GenomicsEncoder`.

    Args:
        expression: (B, G) expression values over the cohort's gene list.
        groups: n index lists into the G genes (groups may overlap).

    Returns:
        (B, Σ s_i) the groups' values concatenated in order (overlapping genes repeated).
    """
    index = torch.cat(_index_list(groups)).to(expression.device)
    return expression.index_select(-1, index)


def pathway_scores(expression_z: Tensor, groups: Sequence[Sequence[int] | Tensor]) -> Tensor:
    r"""Pathway activity = mean z-scored expression of the group's genes.

    .. math:: a_i = \frac{1}{|G_i|} \sum_{j \in G_i} v^{z}_j

    Args:
        expression_z: (B, G) z-scored expression (per gene, over the training cohort).
        groups: n index lists into the G genes.

    Returns:
        (B, n) pathway scores.
    """
    idx = _index_list(groups)
    n_genes = expression_z.shape[-1]
    if max(int(g.max()) for g in idx) >= n_genes or min(int(g.min()) for g in idx) < 0:
        raise ValueError(f"gene index out of range for {n_genes} genes")
    membership = torch.zeros(n_genes, len(idx), dtype=expression_z.dtype, device=expression_z.device)  # (G, n)
    for i, g in enumerate(idx):
        membership[g.to(expression_z.device), i] = 1.0 / g.unique().numel()
    return expression_z @ membership


__all__ = ["GenomicsEncoder", "Inductor", "PathwayDecoder", "SNN", "SNNBlock", "gather_groups", "pathway_scores"]
