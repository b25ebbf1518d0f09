r"""MSRL losses (paper eqs. 2–7 and appendix D.1).

Pre-training: :func:`info_nce` (eq. 2), :func:`intra_loss` (eq. 3), :func:`inter_loss` (eq. 4),
:func:`fused_loss` (eq. 5); :math:`\mathcal L_{gsl} = \mathcal L_{intra} + \mathcal L_{inter} + \mathcal L_{fused}`.
Fine-tuning: :func:`f_align` / :func:`g_align` (eq. 6), :func:`sparsity_balanced_bce` (eq. 7, dense) and
:func:`sparsity_balanced_bce_sparse` (the same over edge lists), and a task loss,
:func:`nll_survival_loss` or :func:`classification_loss`.

Reductions: the paper writes eq. 2 as a *sum* over the K cases and eq. 7 as weighted sums over the
entries of the adjacency. Both are implemented as *means* (divided by K, resp. by the number of
entries N²) so that loss scales do not depend on the batch or graph size; the minimiser is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------------------------------
# Contrastive losses (eqs. 2-6)
# ---------------------------------------------------------------------------------------------------
def info_nce(z1: Tensor, z2: Tensor, tau: float = 0.2) -> Tensor:
    r"""InfoNCE between matched rows of two views (eq. 2), averaged over rows.

    .. math::
        \mathcal L_{\mathrm{InfoNCE}}(Z; Z') = -\frac{1}{K}\sum_{k=1}^{K}
            \log \frac{\exp(\mathrm{sim}(z_k, z'_k)/\tau)}{\sum_{i=1}^{K} \exp(\mathrm{sim}(z_k, z'_i)/\tau)},
        \qquad \mathrm{sim}(a, b) = \frac{a^\top b}{\lVert a\rVert\,\lVert b\rVert}

    The paper sums over k; this is the mean (1/K times the paper's value). The loss is asymmetric:
    rows of ``z1`` are the anchors, rows of ``z2`` the candidates.

    Args:
        z1: (K, D) anchor representations.
        z2: (K, D) positives (row k of z2 is the positive of row k of z1), negatives = other rows.
        tau: temperature.

    Returns:
        scalar loss.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"info_nce needs two (K, D) tensors of the same shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    logits = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / tau  # (K, K) cosine / tau
    return F.cross_entropy(logits, torch.arange(z1.shape[0], device=z1.device))


def intra_loss(z_h: Tensor, z_h_aug: Tensor, z_g: Tensor, z_g_aug: Tensor, tau: float = 0.2) -> Tensor:
    r"""Intra-modality GSL loss (eq. 3): each modality against its own augmented-graph view.

    .. math:: \mathcal L_{intra} = \tfrac12\big(\mathcal L_{\mathrm{InfoNCE}}(Z_H; Z_H^{aug})
              + \mathcal L_{\mathrm{InfoNCE}}(Z_G; Z_G^{aug})\big)

    Args: all (K, D) GCN outputs on the learned (Z) and augmented anchor (Z^aug) graphs.
    """
    return 0.5 * (info_nce(z_h, z_h_aug, tau) + info_nce(z_g, z_g_aug, tau))


def inter_loss(z_h: Tensor, z_g: Tensor, tau: float = 0.2) -> Tensor:
    r"""Inter-modality GSL loss (eq. 4): pathology and genomics views of the same case agree.

    .. math:: \mathcal L_{inter} = \tfrac12\big(\mathcal L_{\mathrm{InfoNCE}}(Z_H; Z_G)
              + \mathcal L_{\mathrm{InfoNCE}}(Z_G; Z_H)\big)

    Args: z_h, z_g (K, D).
    """
    return 0.5 * (info_nce(z_h, z_g, tau) + info_nce(z_g, z_h, tau))


def fused_loss(z_f: Tensor, z_h: Tensor, z_g: Tensor, tau: float = 0.2) -> Tensor:
    r"""Fused-modality GSL loss (eq. 5): the fused view keeps each modality's characteristics.

    .. math:: \mathcal L_{fused} = \tfrac12\big(\mathcal L_{\mathrm{InfoNCE}}(Z_F; Z_H)
              + \mathcal L_{\mathrm{InfoNCE}}(Z_F; Z_G)\big)

    Args: z_f, z_h, z_g (K, D) (the three GCNs share the output width).
    """
    return 0.5 * (info_nce(z_f, z_h, tau) + info_nce(z_f, z_g, tau))


def f_align(f: Tensor, f_target: Tensor, tau: float = 0.2) -> Tensor:
    r"""Feature alignment before the graph (eq. 6).

    .. math:: \mathcal L_{f\text{-}align} = \mathcal L_{\mathrm{InfoNCE}}(f, \hat f)

    Args:
        f: (B, 2d) online fused features (WSI + Inductor prompt).
        f_target: (B, 2d) target-branch fused features (WSI + authentic genomics); detached here,
            the target branch is updated only by EMA.
    """
    return info_nce(f, f_target.detach(), tau)


def g_align(z: Tensor, z_target: Tensor, tau: float = 0.2) -> Tensor:
    r"""Graph-embedding alignment after the GCN (eq. 6).

    .. math:: \mathcal L_{g\text{-}align} = \mathcal L_{\mathrm{InfoNCE}}(Z, \hat Z)

    Args:
        z: (B, D) online GCN embeddings of the batch nodes.
        z_target: (B, D) target-branch embeddings of the same nodes (detached here).
    """
    return info_nce(z, z_target.detach(), tau)


# ---------------------------------------------------------------------------------------------------
# Structure alignment (eq. 7)
# ---------------------------------------------------------------------------------------------------
def _bce_terms(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Element-wise BCE -[t log p + (1 - t) log(1 - p)] with p clamped into [eps, 1 - eps]."""
    p = pred.clamp(eps, 1.0 - eps)
    return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p))


def _balanced(sum0: Tensor, c0: int, sum1: Tensor, c1: int) -> Tensor:
    """(alpha0 * sum0 + alpha1 * sum1) / (c0 + c1) = (mean0 + mean1) / 2; a missing class drops out."""
    if c0 == 0 and c1 == 0:
        raise ValueError("sparsity_balanced_bce needs a non-empty adjacency")
    if c0 == 0:
        return sum1 / c1
    if c1 == 0:
        return sum0 / c0
    n = c0 + c1
    alpha0, alpha1 = n / (2 * c0), n / (2 * c1)
    return (alpha0 * sum0 + alpha1 * sum1) / n


def sparsity_balanced_bce(pred_adj: Tensor, target_adj: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Sparsity-balanced BCE between a learned and a target adjacency (eq. 7), dense form.

    .. math::
        \mathcal L_{s\text{-}align} = \frac{1}{c_0 + c_1}\Big(\alpha_0 \sum_{i=1}^{c_0} \mathcal L^0_i
            + \alpha_1 \sum_{j=1}^{c_1} \mathcal L^1_j\Big), \quad
        \alpha_0 = \frac{c_0 + c_1}{2 c_0}, \quad \alpha_1 = \frac{c_0 + c_1}{2 c_1},

    with :math:`\mathcal L = -[t \log p + (1 - t)\log(1 - p)]`, :math:`p` the prediction clamped into
    :math:`[\epsilon, 1-\epsilon]`, :math:`t` the target value, and :math:`c_0` / :math:`c_1` the numbers
    of zero / non-zero target entries. The paper's eq. 7 is the bracket (a sum); dividing by
    :math:`c_0 + c_1` makes it the mean, so it equals ½·mean over zeros + ½·mean over non-zeros.
    Targets are the (normalised, soft) target edge weights, so the minimum is at ``pred == target``.
    The target is detached (it comes from the EMA target branch).

    Args:
        pred_adj: (N, N) (or any shape) predicted adjacency, values in [0, 1].
        target_adj: same shape, values in [0, 1].
        eps: clamp of the prediction.

    Returns:
        scalar loss. If the target has no zeros (or no non-zeros), the mean over the other kind.
    """
    if pred_adj.shape != target_adj.shape:
        raise ValueError(f"adjacency shapes differ: {tuple(pred_adj.shape)} vs {tuple(target_adj.shape)}")
    target = target_adj.detach().to(pred_adj.dtype)
    terms = _bce_terms(pred_adj, target, eps)
    nonzero = target != 0
    c1 = int(nonzero.sum())
    c0 = target.numel() - c1
    return _balanced(terms[~nonzero].sum(), c0, terms[nonzero].sum(), c1)


def _coalesce(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Unique linear keys row * N + col (sorted) and the summed weight of each."""
    key = edge_index[0].long() * num_nodes + edge_index[1].long()
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    summed = torch.zeros(uniq.numel(), dtype=edge_weight.dtype, device=edge_weight.device)
    return uniq, summed.index_add(0, inverse, edge_weight)


def sparsity_balanced_bce_sparse(pred_index: Tensor, pred_weight: Tensor, target_index: Tensor,
                                 target_weight: Tensor, num_nodes: int, eps: float = 1e-6) -> Tensor:
    r"""Eq. 7 over edge lists: equal to :func:`sparsity_balanced_bce` on the densified graphs.

    Entries absent from an edge list are zeros of that adjacency (an absent prediction is
    :math:`p = 0`, clamped to :math:`\epsilon`); :math:`c_0 = N^2 - c_1`. Never materialises N×N:
    cost O(M log M) for M edges. Duplicate edges are summed (coalesced). Explicit zero-weight
    target edges count as zeros.

    Args:
        pred_index: (2, M_p) long, predicted edges (row, col) over nodes 0..N-1.
        pred_weight: (M_p,) predicted weights in [0, 1].
        target_index: (2, M_t) long, target edges.
        target_weight: (M_t,) target weights in [0, 1] (detached here).
        num_nodes: N.
        eps: clamp of the prediction.

    Returns:
        scalar loss.
    """
    p_key, p_w = _coalesce(pred_index, pred_weight, num_nodes)
    t_key, t_w = _coalesce(target_index, target_weight.detach().to(pred_weight.dtype), num_nodes)
    keep = t_w != 0
    t_key, t_w = t_key[keep], t_w[keep]
    c1 = t_key.numel()
    c0 = num_nodes * num_nodes - c1

    # p at each target edge (0 where the prediction has no such edge)
    if p_key.numel():
        pos = torch.searchsorted(p_key, t_key).clamp(max=p_key.numel() - 1)
        p_at_t = torch.where(p_key[pos] == t_key, p_w[pos], torch.zeros_like(t_w))
    else:
        p_at_t = torch.zeros_like(t_w)
    sum1 = _bce_terms(p_at_t, t_w, eps).sum()

    # zeros of the target: predicted edges outside the target set, plus every absent pair (p = 0)
    p_zero = p_w[~torch.isin(p_key, t_key)]
    absent = _bce_terms(torch.zeros(1, dtype=p_w.dtype, device=p_w.device),
                        torch.zeros(1, dtype=p_w.dtype, device=p_w.device), eps)[0]  # -log(1 - eps)
    sum0 = _bce_terms(p_zero, torch.zeros_like(p_zero), eps).sum() + absent * (c0 - p_zero.numel())
    return _balanced(sum0, c0, sum1, c1)


# ---------------------------------------------------------------------------------------------------
# Task losses
# ---------------------------------------------------------------------------------------------------
def nll_survival_loss(logits: Tensor, y_bin: Tensor, censorship: Tensor, alpha: float = 0.0,
                      from_logits: bool = True, eps: float = 1e-7) -> Tensor:
    r"""Discrete-time survival negative log-likelihood (Zadeh & Schmid 2020; paper eqs. 8–10).

    With hazards :math:`h_j`, survival :math:`S_j = \prod_{k \le j}(1 - h_k)`, :math:`S_{-1} = 1`,
    bin :math:`y \in \{0..J-1\}` and censorship :math:`c` (1 = censored, alive at last follow-up):

    .. math::
        \ell_{unc} = -(1 - c)\,\big[\log S_{y-1} + \log h_y\big], \qquad
        \ell_{cen} = -c\,\log S_y, \qquad
        \mathcal L = \mathrm{mean}\big[(1 - \alpha)(\ell_{unc} + \ell_{cen}) + \alpha\,\ell_{unc}\big]

    as in mahmoodlab's ``NLLSurvLoss`` (MCAT / SurvPath). From logits the logs are computed in log
    space (:math:`\log h = \log\sigma(x)`, :math:`\log(1 - h) = \log\sigma(-x)`), which matches the
    clamped formula wherever the clamp is inactive and is stable where it is not. From hazards, the
    probabilities are clamped at ``eps`` before the log, as in MCAT.

    Args:
        logits: (B, J) bin logits, or hazards in (0, 1) when ``from_logits=False``.
        y_bin: (B,) integer bin of the event / censoring time, 0 <= y < J.
        censorship: (B,) 1 = censored, 0 = event observed.
        alpha: weight of the extra uncensored term (0 = plain NLL).
        from_logits: whether ``logits`` are logits (default) or hazards.
        eps: clamp for the hazards path.

    Returns:
        scalar loss (mean over the batch).
    """
    y = y_bin.long().view(-1, 1)  # (B, 1)
    c = censorship.to(logits.dtype).view(-1, 1)  # (B, 1)
    if from_logits:
        log_h = F.logsigmoid(logits)  # (B, J)
        log_s = torch.cumsum(F.logsigmoid(-logits), dim=1)  # (B, J) log S_j
    else:
        log_h = torch.log(logits.clamp(min=eps))
        log_s = torch.log(torch.cumprod(1.0 - logits, dim=1).clamp(min=eps))
    log_s_pad = torch.cat([torch.zeros_like(c), log_s], dim=1)  # (B, J + 1): index j -> log S_{j-1}
    uncensored = -(1.0 - c) * (log_s_pad.gather(1, y) + log_h.gather(1, y))
    censored = -c * log_s_pad.gather(1, y + 1)
    return ((1.0 - alpha) * (uncensored + censored) + alpha * uncensored).mean()


def classification_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                        label_smoothing: float = 0.0) -> Tensor:
    r"""Cross-entropy :math:`-\frac1B\sum_b \log \mathrm{softmax}(\hat y_b)_{t_b}` (optionally class-weighted).

    Args:
        logits: (B, C). target: (B,) class indices. weight: (C,) class weights or None.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
    """
    return F.cross_entropy(logits, target.long(), weight=weight, label_smoothing=label_smoothing)


__all__ = [
    "classification_loss", "f_align", "fused_loss", "g_align", "info_nce", "inter_loss", "intra_loss",
    "nll_survival_loss", "sparsity_balanced_bce", "sparsity_balanced_bce_sparse",
]
