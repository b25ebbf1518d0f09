r"""Dilated attention over packed bags with a global [CLS] token: cost linear in the number of patches.

LongNet (Ding et al. 2023, the slide encoder of Prov-GigaPath) splits a sequence into segments of
length :math:`w_j` and, inside each, keeps every :math:`r_j`-th token (head :math:`h` starts at
offset :math:`h \bmod r_j`); attention runs inside these sparse segments and the branches
:math:`j = 0..J-1` are mixed with weights proportional to their softmax denominators, which is exactly
softmax attention over the union of their key sets. Here the branches form a geometric sequence

.. math::
    w_j = w_0 \rho^j, \qquad r_j = \rho^j, \qquad m = w_j / r_j = w_0 \ \text{keys per query per branch},

and every patch query also attends to its bag's [CLS] token (one more key set of size 1). The [CLS]
query attends densely to its bag (one row, O(N d)), so the slide representation and the heat-map
see every patch. Branch :math:`j \ge 1` is used for a bag only when the bag is longer than
:math:`w_{j-1}` (on shorter bags it would only repeat keys of branch :math:`j-1`), so a bag of at most
:math:`w_0` patches gets exactly dense attention — the encoder's behaviour on the demo cohort's bags
(64–400 patches, 64 per training step) is that of the dense transformer it replaces.

Cost per layer for a bag of N patches, d channels: the linear layers 2N(4 + 2·mlp_ratio)d² FLOP plus
attention 4 N d w_0 J FLOP with :math:`J = 1 + \lceil \log_\rho (N / w_0) \rceil` branches — e.g. at
d = 128, w_0 = 256, ρ = 4, N = 60,000: J = 5, 20 GFLOP of attention, 24 GFLOP of linear layers,
against 1.8 TFLOP for dense attention. Memory: the scores of one chunk of segments at a time.

Bags are *packed*: the valid patches of all bags of a batch form one sequence of T = Σ N_b tokens in
raster order of their grid positions (so a segment is a band of neighbouring rows), and a segment
never crosses a bag; no bag is padded to the largest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Score of the empty slot's key (a bias channel, so padded keys need no masking pass).
EMPTY_KEY = -1e30
# Attention scores held at once, in elements (H × segments × m × m), before a pass is chunked.
SCORE_BUDGET = 1 << 25


@dataclass
class Branch:
    """One dilated branch of a packed batch: which tokens each (head, segment) row attends among."""

    idx: Tensor  # (H, S, m) long packed token index; T (one past the last token) marks an empty slot


@dataclass
class PackedLayout:
    """Where the bags of a batch lie in the packed token sequence (built once, shared by all layers)."""

    n_tokens: int  # T = Σ N_b
    bag_of_token: Tensor  # (T,) long bag index of each packed token
    bag_tokens: Tensor  # (B, N_max) long packed index of each bag's tokens; T = padding
    bag_valid: Tensor  # (B, N_max) bool True = a real token
    branches: list[Branch]  # the dilated branches

    @classmethod
    def build(cls, lengths: list[int], heads: int, segment: int, ratio: int, device: torch.device) -> PackedLayout:
        """The layout of bags of ``lengths`` tokens packed one after another (bag b starts at Σ_{<b} N)."""
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        t = sum(lengths)
        n_max = max(lengths)
        bag_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                               torch.tensor(lengths, device=device))  # (T,)
        cols = torch.arange(n_max, device=device)  # (N_max,)
        bag_valid = cols[None, :] < torch.tensor(lengths, device=device)[:, None]  # (B, N_max)
        bag_tokens = torch.where(bag_valid, torch.tensor(starts, device=device)[:, None] + cols[None, :], t)
        branches = []
        j = 0
        while True:
            w, r = segment * ratio**j, ratio**j
            used = [b for b, n in enumerate(lengths) if j == 0 or n > w // ratio]  # longer than w_{j-1}
            if not used:
                break
            branches.append(_branch(lengths, starts, used, w, r, heads, t, device))
            j += 1
        return cls(t, bag_of_token, bag_tokens, bag_valid, branches)


def _branch(lengths: list[int], starts: list[int], used: list[int], w: int, r: int, heads: int, t: int,
            device: torch.device) -> Branch:
    """Segments of length ``w`` (dilation ``r``, head h at offset h mod r) of the bags ``used``."""
    m = -(-min(w, max(lengths[b] for b in used)) // r)  # keys per row: w / r, or fewer when bags are short
    offsets = (torch.arange(heads, device=device) % r)[:, None] + r * torch.arange(m, device=device)[None]  # (H, m)
    idx = []
    for b in used:
        n_seg = -(-lengths[b] // w)
        pos = torch.arange(n_seg, device=device)[None, :, None] * w + offsets[:, None, :]  # (H, S_b, m) in-bag
        idx.append(torch.where(pos < lengths[b], starts[b] + pos, t))
    return Branch(torch.cat(idx, dim=1))  # (H, S, m)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` (H, S, m) of x (H, T + 1, c) -> (H, S, m, c)."""
    h, s, m = idx.shape
    return x.gather(1, idx.reshape(h, s * m, 1).expand(-1, -1, x.shape[-1])).view(h, s, m, x.shape[-1])


def _branch_attention(q: Tensor, k: Tensor, v: Tensor, branch: Branch) -> tuple[Tensor, Tensor]:
    """Attention inside one branch's segments.

    Args:
        q, k: (H, T + 1, dh + 1) packed tokens (q pre-scaled) with a bias channel that is 0 on every
            token's key and -1e30 on the key of the empty slot T (q's is 1), so empty slots get zero
            weight with no masking pass.
        v: (H, T + 1, dh).

    Returns:
        out (H, T, dh) and its log-sum-exp (H, T); -inf (and out 0) for tokens the branch does not cover.
    """
    h, t1, dh = v.shape
    s_total, m = branch.idx.shape[1], branch.idx.shape[2]
    chunk = max(1, SCORE_BUDGET // (h * m * m))
    outs, lses = [], []
    for s0 in range(0, s_total, chunk):
        idx = branch.idx[:, s0:s0 + chunk]  # (H, s, m)
        scores = _gather(q, idx) @ _gather(k, idx).transpose(-1, -2)  # (H, s, m, m)
        top = scores.detach().amax(dim=-1, keepdim=True)  # (H, s, m, 1); a constant: lse does not depend on it
        weights = scores.sub_(top).exp_()  # in place: (H, s, m, m) unnormalised
        total = weights.sum(dim=-1)  # (H, s, m) >= 1
        outs.append((weights @ _gather(v, idx)) / total[..., None])  # (H, s, m, dh)
        lses.append(top.squeeze(-1) + total.log())
    out = torch.cat(outs, dim=1).reshape(h, -1, dh)  # (H, S·m, dh)
    lse = torch.cat(lses, dim=1).reshape(h, -1)  # (H, S·m)
    flat = branch.idx.reshape(h, -1)  # (H, S·m) packed index, T for empty slots (written, then dropped)
    heads = torch.arange(h, device=v.device)[:, None].expand_as(flat)
    out_full = v.new_zeros(h, t1, dh).index_put((heads, flat), out)[:, :-1]  # (H, T, dh)
    lse_full = v.new_full((h, t1), float("-inf")).index_put((heads, flat), lse)[:, :-1]  # (H, T)
    return out_full, lse_full


def dilated_attention(q: Tensor, k: Tensor, v: Tensor, q_cls: Tensor, k_cls: Tensor, v_cls: Tensor,
                      layout: PackedLayout) -> tuple[Tensor, Tensor, Tensor]:
    r"""Packed dilated attention for patch tokens and dense attention for each bag's [CLS].

    A patch query :math:`t` of bag :math:`b` attends to :math:`\{\mathrm{CLS}_b\} \cup \bigcup_j K_j(t)`
    (its segment's keys in every branch): with per-set outputs :math:`o_j` and log-sum-exps
    :math:`\ell_j`, :math:`\mathrm{out} = \sum_j e^{\ell_j} o_j / \sum_j e^{\ell_j}` (online, running max).
    :math:`\mathrm{CLS}_b` attends to itself and every patch of bag b.

    Args:
        q, k, v: (H, T, dh) packed patch tokens per head.
        q_cls, k_cls, v_cls: (B, H, dh) the bags' CLS tokens per head.
        layout: :class:`PackedLayout` of the batch.

    Returns:
        out (H, T, dh) patch outputs, out_cls (B, H, dh), and cls_attn (B, H, N_max): the CLS row's
        softmax over the bag's patch keys only (the heat-map; rows sum to 1, 0 on padding).
    """
    h, t, dh = q.shape
    scale = 1.0 / math.sqrt(dh)
    q_bias = torch.cat([q * scale, q.new_ones(h, t, 1)], dim=-1)  # (H, T, dh + 1)
    k_bias = torch.cat([k, k.new_zeros(h, t, 1)], dim=-1)  # (H, T, dh + 1)
    empty_q = q.new_zeros(h, 1, dh + 1)
    empty_k = torch.cat([k.new_zeros(h, 1, dh), k.new_full((h, 1, 1), EMPTY_KEY)], dim=-1)
    qp, kp = torch.cat([q_bias, empty_q], dim=1), torch.cat([k_bias, empty_k], dim=1)  # (H, T + 1, dh + 1)
    vp = torch.cat([v, v.new_zeros(h, 1, dh)], dim=1)  # (H, T + 1, dh)
    bag = layout.bag_of_token
    # the CLS key of the token's own bag: one key set of size one (always present, finite)
    run_max = (q * k_cls[bag].transpose(0, 1)).sum(-1) * scale  # (H, T)
    acc = v_cls[bag].transpose(0, 1).clone()  # (H, T, dh)
    den = torch.ones_like(run_max)  # (H, T)
    for branch in layout.branches:
        out_j, lse_j = _branch_attention(qp, kp, vp, branch)
        new_max = torch.maximum(run_max, lse_j)
        keep, add = torch.exp(run_max - new_max), torch.exp(lse_j - new_max)  # (H, T)
        acc = acc * keep[..., None] + out_j * add[..., None]
        den = den * keep + add
        run_max = new_max
    out = acc / den[..., None]  # (H, T, dh)

    keys = kp[:, layout.bag_tokens, :dh].permute(1, 0, 2, 3)  # (B, H, N_max, dh)
    vals = vp[:, layout.bag_tokens].permute(1, 0, 2, 3)  # (B, H, N_max, dh)
    patch_scores = (keys @ q_cls[..., None]).squeeze(-1) * scale  # (B, H, N_max)
    patch_scores = patch_scores.masked_fill(~layout.bag_valid[:, None], float("-inf"))
    self_score = (q_cls * k_cls).sum(-1, keepdim=True) * scale  # (B, H, 1)
    weights = torch.cat([self_score, patch_scores], dim=-1).softmax(dim=-1)  # (B, H, 1 + N_max)
    out_cls = weights[..., :1] * v_cls + (weights[..., None, 1:] @ vals).squeeze(-2)  # (B, H, dh)
    return out, out_cls, patch_scores.softmax(dim=-1)


__all__ = ["PackedLayout", "dilated_attention"]
