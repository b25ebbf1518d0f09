r"""Slide encoder φ_H: a transformer over a bag of patch features with a learned [CLS] token.

Patch features (B, N, patch_dim) are projected to d, a fixed 2-D sinusoidal encoding of each patch's
tiling-grid position is added, a learned [CLS] token is prepended and ``layers`` pre-norm blocks using
:func:`torch.nn.functional.scaled_dot_product_attention` are applied. The slide representation h is
the final (layer-normed) CLS token; the last block's CLS→patch attention, averaged over heads, is the
heat-map. Positions are grid cells (row, col) = level-0 coordinates // patch size at level 0, so the
encoding has no size limit and does not depend on patch order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrl_model.nn.config import MSRLConfig


def grid_positions(coords_level0: Tensor | np.ndarray, patch_size_level0: int) -> Tensor:
    """Tiling-grid cells of patches: (row, col) = (y0, x0) // patch_size_level0.

    Args:
        coords_level0: (..., 2) top-left corners (x0, y0) in level-0 pixels (the h5 ``coords``).
        patch_size_level0: patch side in level-0 pixels (h5 attr ``patch_size_level0``).

    Returns:
        (..., 2) long tensor of (row, col).
    """
    c = torch.as_tensor(coords_level0).long()
    return torch.stack([c[..., 1] // patch_size_level0, c[..., 0] // patch_size_level0], dim=-1)


def sincos_2d(pos: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    r"""Fixed 2-D sinusoidal encoding (MAE style): half the channels encode the row, half the column.

    .. math::
        \mathrm{PE}(r, c) = [\sin(r\omega), \cos(r\omega), \sin(c\omega), \cos(c\omega)], \quad
        \omega_i = \mathrm{base}^{-i/(d/4)}, \ i = 0..d/4-1

    Args:
        pos: (..., 2) (row, col), integer or real.
        dim: d, a multiple of 4.

    Returns:
        (..., d) float32.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = base ** (-torch.arange(quarter, dtype=torch.float32, device=pos.device) / quarter)  # (d/4,)
    angles = pos.to(torch.float32).unsqueeze(-1) * omega  # (..., 2, d/4)
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 2, d/2): [sin r, cos r] / [sin c, cos c]
    return enc.flatten(-2)  # (..., d)


class Attention(nn.Module):
    r"""Multi-head self-attention with a key-padding mask (SDPA), optionally returning the CLS row.

    .. math::
        \mathrm{Attn}(X) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{d_h}} + M\Big) V, \quad
        Q, K, V = X W_{qkv}

    The CLS row of the attention over *patch* keys, :math:`\mathrm{softmax}(q_0 K_{1:}^\top/\sqrt{d_h})`
    per head, is computed explicitly (SDPA returns no weights); it is one row, O(N·d). There is no
    attention-weight dropout: on CPU it forces SDPA's materialising path (~6x slower at N = 1024).

    Args:
        dim: d. heads: number of heads (divides d).

    Shapes: x (B, T, d), key_mask (B, T) bool True = valid or None ->
        (out (B, T, d), cls_attn (B, heads, T - 1) or None).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.qkv, self.proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, key_mask: Tensor | None = None,
                cls_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, dh)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T) True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, dh)
        out = self.proj(out.transpose(1, 2).reshape(b, t, d))  # (B, T, d)
        weights = None
        if cls_attn:
            scores = (q[:, :, :1] @ k[:, :, 1:].transpose(-1, -2)).squeeze(2)  # (B, H, T - 1)
            scores = scores / math.sqrt(d // self.heads)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask[:, None, 1:], float("-inf"))
            weights = scores.softmax(dim=-1)
        return out, weights


class Block(nn.Module):
    r"""Pre-norm transformer block.

    .. math:: x \leftarrow x + \mathrm{Drop}(\mathrm{Attn}(\mathrm{LN}(x))), \quad
              x \leftarrow x + \mathrm{Drop}(\mathrm{MLP}(\mathrm{LN}(x))), \quad
              \mathrm{MLP} = W_2\,\mathrm{GELU}(W_1 \cdot)

    Shapes: x (B, T, d) -> (B, T, d), cls_attn (B, H, T-1) or None.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()
        self.attn.reset_parameters()
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, key_mask: Tensor | None = None,
                cls_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        a, weights = self.attn(self.norm1(x), key_mask, cls_attn)
        x = x + self.drop(a)
        x = x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))
        return x, weights


class SlideEncoder(nn.Module):
    r"""WSI encoder φ_H (paper §3.1): [CLS] transformer over patch features with 2-D positions.

    .. math::
        \tilde X_I = (X_I - \mu) \oslash \sigma, \qquad
        X^{(0)} = [\,c;\ \tilde X_I W_p + b_p + \mathrm{PE}(r, c)\,], \qquad
        X^{(l)} = \mathrm{Block}_l(X^{(l-1)}), \qquad
        h = \mathrm{LN}(X^{(L)}_0)

    :math:`\mu, \sigma` (buffers ``patch_mean``, ``patch_std``, (patch_dim,)) standardise every
    feature dimension with statistics of the training patches (:meth:`set_patch_stats`; identity
    until set). Encoders such as builtin-he mix dimensions whose scales differ by 1000x; without this
    the few large dimensions dominate the projection. They are buffers, so they travel in the state
    dict (and the bundle's weights) with the network; a state dict without them loads as identity.

    Heat-map: :math:`a = \frac1H \sum_{heads} \mathrm{softmax}_{valid\ patches}(q_0 K_{1:}^\top / \sqrt{d_h})`
    of the last block, so each row sums to 1 over the valid patches and is 0 on padding.

    Args:
        patch_dim: input patch-feature size.
        d: model dim (multiple of 4 and of ``heads``).
        layers: transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden size / d.
        dropout: dropout on patch embeddings, residual branches and the MLP hidden layer.

    Shapes:
        forward(x (B, N, patch_dim), pos (B, N, 2) grid (row, col), mask (B, N) bool True = valid or None)
        -> (h (B, d), attn (B, N)).
    """

    def __init__(self, patch_dim: int, d: int, layers: int = 2, heads: int = 8, mlp_ratio: float = 4.0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if d % 4 or layers < 1:
            raise ValueError(f"SlideEncoder needs d divisible by 4 and layers >= 1, got d={d}, layers={layers}")
        self.patch_dim, self.d = patch_dim, d
        self.patch_embed = nn.Linear(patch_dim, d)
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.register_buffer("patch_mean", torch.zeros(patch_dim))  # (patch_dim,) standardiser mean
        self.register_buffer("patch_std", torch.ones(patch_dim))  # (patch_dim,) standardiser std
        self.reset_parameters()

    def set_patch_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the per-dimension standardiser (mean, std: (patch_dim,)); std is floored at 1e-6."""
        set_patch_stats(self, mean, std)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        fill_patch_stats(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_config(cls, cfg: MSRLConfig) -> SlideEncoder:
        """Build from an :class:`~msrl_model.nn.config.MSRLConfig`."""
        return cls(cfg.patch_dim, cfg.d, cfg.slide_layers, cfg.slide_heads, cfg.slide_mlp_ratio, cfg.slide_dropout)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, n, _ = x.shape
        x = (x - self.patch_mean) / self.patch_std  # (B, N, patch_dim) standardised (padding stays masked)
        tokens = self.patch_embed(x) + sincos_2d(pos, self.d).to(x.dtype)  # (B, N, d)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)  # (B, N + 1, d)
        tokens = self.embed_drop(tokens)
        key_mask = None
        if mask is not None and not bool(mask.any(dim=1).all()):
            raise ValueError("every bag needs at least one valid patch (mask row all False)")
        if mask is not None and not bool(mask.all()):
            key_mask = torch.cat([mask.new_ones(b, 1), mask.bool()], dim=1)  # (B, N + 1), CLS always valid
        weights = None
        for i, block in enumerate(self.blocks):
            tokens, weights = block(tokens, key_mask, cls_attn=i == len(self.blocks) - 1)
        h = self.norm(tokens[:, 0])  # (B, d)
        return h, weights.mean(dim=1)  # attn (B, N), mean over heads


def set_patch_stats(module: nn.Module, mean: Tensor, std: Tensor) -> None:
    """Copy a patch standardiser into ``module.patch_mean`` / ``module.patch_std`` (std floored at 1e-6)."""
    with torch.no_grad():
        module.patch_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        module.patch_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))


def fill_patch_stats(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """State dicts written before the standardiser existed: load it as the identity (mean 0, std 1)."""
    for name, fill in (("patch_mean", torch.zeros_like), ("patch_std", torch.ones_like)):
        if prefix + name not in state_dict:
            state_dict[prefix + name] = fill(getattr(module, name))


def pad_bags(features: Sequence[Tensor], positions: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Collate bags of different lengths for :class:`SlideEncoder`.

    Args:
        features: B tensors (N_i, patch_dim).
        positions: B tensors (N_i, 2) grid positions.

    Returns:
        x (B, N_max, patch_dim) zero-padded, pos (B, N_max, 2) zero-padded, mask (B, N_max) True = valid.
    """
    if len(features) != len(positions) or not features:
        raise ValueError("pad_bags needs the same, non-zero number of feature and position tensors")
    n_max = max(f.shape[0] for f in features)
    x = features[0].new_zeros(len(features), n_max, features[0].shape[1])
    pos = positions[0].new_zeros(len(features), n_max, 2)
    mask = torch.zeros(len(features), n_max, dtype=torch.bool, device=features[0].device)
    for i, (f, p) in enumerate(zip(features, positions)):
        x[i, : f.shape[0]], pos[i, : f.shape[0]], mask[i, : f.shape[0]] = f, p, True
    return x, pos, mask


def subsample_patches(n: int, max_patches: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of a random subset of at most ``max_patches`` of n patches (sorted); all if max_patches is 0.

    Used in training to bound the cost of a bag (``MSRLConfig.max_patches_train``); positions travel
    with the features, so the subset keeps its geometry.
    """
    if max_patches <= 0 or n <= max_patches:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:max_patches].sort().values


__all__ = ["SlideEncoder", "fill_patch_stats", "grid_positions", "pad_bags", "set_patch_stats", "sincos_2d",
           "subsample_patches"]
