r"""Slide encoder φ_H: a transformer over a bag of patch features with a learned [CLS] token.

Patch features (B, N, patch_dim) are projected to d, a fixed 2-D sinusoidal encoding of each patch's
tiling-grid position is added, a learned [CLS] token is prepended and ``layers`` pre-norm blocks of
dilated attention (:mod:`msrl_model.nn.dilated_attention`, linear in N) are applied. The slide
representation h is the final (layer-normed) CLS token; the last block's CLS→patch attention,
averaged over heads, is the heat-map. Positions are grid cells (row, col) = level-0 coordinates // patch size at level 0, so the
encoding has no size limit and does not depend on patch order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.dilated_attention import PackedLayout, dilated_attention

# Dilated attention: keys per query per branch (w_0) and growth of segment and dilation per branch (ρ).
# w_0 = 512: every bag of the demo cohort (64-400 patches; 64 per training step) gets exactly dense
# attention, so the shipped model is the dense transformer it was. ρ = 16 (LongNet uses 2; GigaPath's
# slide encoder segments grow by ~5.7): three branches reach 131,072-patch segments, so a 10k- and a
# 60k-patch slide use the same three branches and time grows as N (measured: bench encoder).
SEGMENT = 512
DILATION_RATIO = 16


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
    r"""Multi-head dilated self-attention over packed bags with a [CLS] token per bag.

    .. math::
        Q, K, V = X W_{qkv}, \qquad \mathrm{out} = \mathrm{DilatedAttn}(Q, K, V)\, W_o

    (:func:`~msrl_model.nn.dilated_attention.dilated_attention`: each patch attends to its bag's CLS
    and to its segment in every dilated branch; CLS attends densely to its bag). There is no
    attention-weight dropout.

    Args:
        dim: d. heads: number of heads (divides d).

    Shapes: tokens (T, d) packed patches, cls (B, d), layout -> (tokens (T, d), cls (B, d),
        cls_attn (B, heads, N_max): the CLS row over the bag's patches).
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

    def forward(self, tokens: Tensor, cls: Tensor, layout: PackedLayout) -> tuple[Tensor, Tensor, Tensor]:
        t, d = tokens.shape
        b = cls.shape[0]
        dh = d // self.heads
        q, k, v = self.qkv(tokens).view(t, 3, self.heads, dh).permute(1, 2, 0, 3)  # 3 x (H, T, dh)
        q_c, k_c, v_c = self.qkv(cls).view(b, 3, self.heads, dh).unbind(1)  # 3 x (B, H, dh)
        out, out_cls, weights = dilated_attention(q, k, v, q_c, k_c, v_c, layout)
        out = self.proj(out.transpose(0, 1).reshape(t, d))  # (T, d)
        return out, self.proj(out_cls.reshape(b, d)), weights


class Block(nn.Module):
    r"""Pre-norm transformer block over packed patch tokens and the bags' CLS tokens.

    .. math:: x \leftarrow x + \mathrm{Drop}(\mathrm{Attn}(\mathrm{LN}(x))), \quad
              x \leftarrow x + \mathrm{Drop}(\mathrm{MLP}(\mathrm{LN}(x))), \quad
              \mathrm{MLP} = W_2\,\mathrm{GELU}(W_1 \cdot)

    Shapes: tokens (T, d), cls (B, d) -> tokens (T, d), cls (B, d), cls_attn (B, H, N_max).
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

    def _mlp(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))

    def forward(self, tokens: Tensor, cls: Tensor, layout: PackedLayout) -> tuple[Tensor, Tensor, Tensor]:
        a, a_cls, weights = self.attn(self.norm1(tokens), self.norm1(cls), layout)
        tokens, cls = tokens + self.drop(a), cls + self.drop(a_cls)
        return tokens + self._mlp(tokens), cls + self._mlp(cls), weights


class SlideEncoder(nn.Module):
    r"""WSI encoder φ_H (paper §3.1): [CLS] transformer with dilated attention over patch features.

    .. math::
        \tilde X_I = (X_I - \mu) \oslash \sigma, \qquad
        X^{(0)} = [\,c;\ \tilde X_I W_p + b_p + \mathrm{PE}(r, c)\,], \qquad
        X^{(l)} = \mathrm{Block}_l(X^{(l-1)}), \qquad
        h = \mathrm{LN}(X^{(L)}_0)

    The paper's φ_H is GigaPath's LongNet; the blocks here use LongNet-style dilated attention
    (:mod:`msrl_model.nn.dilated_attention`: segments of ``segment`` · ratio^j patches keeping every
    ratio^j-th, plus a dense [CLS] row), so the cost is linear in the number of patches, and a bag of at
    most ``segment`` patches gets exactly dense attention (the transformer this encoder replaced,
    same weights). Patches are put in raster order of their grid positions (row, then column) inside
    the encoder, so the result does not depend on the order they come in. Bags of a batch are packed
    (no padding to the largest bag): padding in the input tensor is dropped before any computation.

    :math:`\mu, \sigma` (buffers ``patch_mean``, ``patch_std``, (patch_dim,)) standardise every
    feature dimension with statistics of the training patches (:meth:`set_patch_stats`; identity
    until set). Encoders such as builtin-he mix dimensions whose scales differ by 1000x; without this
    the few large dimensions dominate the projection. They are buffers, so they travel in the state
    dict (and the bundle's weights) with the network; a state dict without them loads as identity.
    Features may come in any float precision (fp16 from TRIDENT files); they are standardised in float32.

    Heat-map: :math:`a = \frac1H \sum_{heads} \mathrm{softmax}_{valid\ patches}(q_0 K_{1:}^\top / \sqrt{d_h})`
    of the last block, so each row sums to 1 over the valid patches and is 0 on padding.

    Args:
        patch_dim: input patch-feature size.
        d: model dim (multiple of 4 and of ``heads``).
        layers: transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden size / d.
        dropout: dropout on patch embeddings, residual branches and the MLP hidden layer.
        segment: w_0, the first branch's segment length (keys per query per branch).
        dilation_ratio: ρ, the growth of segment length and dilation from one branch to the next.

    Shapes:
        forward(x (B, N, patch_dim), pos (B, N, 2) grid (row, col), mask (B, N) bool True = valid or None)
        -> (h (B, d), attn (B, N)).
    """

    def __init__(self, patch_dim: int, d: int, layers: int = 2, heads: int = 8, mlp_ratio: float = 4.0,
                 dropout: float = 0.1, segment: int = SEGMENT, dilation_ratio: int = DILATION_RATIO) -> None:
        super().__init__()
        if d % 4 or layers < 1:
            raise ValueError(f"SlideEncoder needs d divisible by 4 and layers >= 1, got d={d}, layers={layers}")
        if segment < 1 or dilation_ratio < 2:
            raise ValueError(f"SlideEncoder needs segment >= 1 and dilation_ratio >= 2, got {segment}, "
                             f"{dilation_ratio}")
        self.patch_dim, self.d = patch_dim, d
        self.heads, self.segment, self.dilation_ratio = heads, segment, dilation_ratio
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
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        lengths = mask.sum(dim=1)  # (B,)
        if not bool((lengths > 0).all()):
            raise ValueError("every bag needs at least one valid patch (mask row all False)")
        order = raster_order(pos, mask)  # (T,) flat index into (B·N) of the valid patches, bag by bag
        feats = x.reshape(b * n, -1)[order].to(self.patch_mean.dtype)  # (T, patch_dim)
        feats = (feats - self.patch_mean) / self.patch_std  # standardised
        tokens = self.patch_embed(feats) + sincos_2d(pos.reshape(b * n, 2)[order], self.d)  # (T, d)
        tokens = self.embed_drop(tokens)
        cls = self.embed_drop(self.cls_token.reshape(1, self.d).expand(b, -1))  # (B, d)
        layout = PackedLayout.build(lengths.tolist(), self.heads, self.segment, self.dilation_ratio, x.device)
        weights = None
        for block in self.blocks:
            tokens, cls, weights = block(tokens, cls, layout)
        h = self.norm(cls)  # (B, d)
        heat = weights.mean(dim=1)  # (B, N_max) in packed (raster) order per bag
        attn = heat.new_zeros(b * n).index_put((order,), heat[layout.bag_valid])  # back to input slots
        return h, attn.view(b, n)


def raster_order(pos: Tensor, mask: Tensor) -> Tensor:
    """Flat indices into (B·N) of the valid patches, bag by bag, each bag in raster order (row, column).

    Args:
        pos: (B, N, 2) grid (row, col). mask: (B, N) bool True = valid.

    Returns:
        (T,) long, T = mask.sum(); ties (equal positions) keep the input order.
    """
    b, n = mask.shape
    p = pos.long()
    p = torch.where(mask[..., None], p, p.new_tensor(0))  # padding may hold anything
    p = p - p.amin(dim=(0, 1))  # (B, N, 2) non-negative
    width = int(p[..., 1].max()) + 1
    key = p[..., 0] * width + p[..., 1]  # (B, N) raster key within a bag
    big = int(key.max()) + 1
    key = key + torch.arange(b, device=pos.device)[:, None] * big  # (B, N) bags apart, in bag order
    order = torch.sort(key.reshape(-1), stable=True).indices  # (B·N,)
    return order[mask.reshape(-1)[order]]  # padding dropped


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
