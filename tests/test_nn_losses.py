"""Losses against loop-based transcriptions of the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch

from msrl_model.nn.losses import (
    classification_loss, f_align, fused_loss, g_align, info_nce, inter_loss, intra_loss, nll_survival_loss,
    sparsity_balanced_bce, sparsity_balanced_bce_sparse,
)


def loop_info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Eq. 2 written out, divided by K."""
    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))
    k = z1.shape[0]
    total = 0.0
    for i in range(k):
        num = math.exp(cos(z1[i], z2[i]) / tau)
        den = sum(math.exp(cos(z1[i], z2[j]) / tau) for j in range(k))
        total += -math.log(num / den)
    return total / k


@pytest.mark.parametrize("k,dim,seed,tau", [(2, 3, 0, 0.2), (7, 5, 1, 0.5), (16, 8, 2, 1.0), (5, 32, 3, 0.07)])
def test_info_nce_matches_formula(k, dim, seed, tau):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(k, dim, generator=g, dtype=torch.float64), torch.randn(k, dim, generator=g, dtype=torch.float64)
    assert info_nce(z1, z2, tau).item() == pytest.approx(loop_info_nce(z1, z2, tau), rel=1e-9)


def test_info_nce_minimal_for_identical_orthogonal_rows():
    z = torch.eye(6) * 3.0  # orthogonal rows
    aligned = info_nce(z, z, 0.2)
    shuffled = info_nce(z, z[torch.tensor([1, 2, 3, 4, 5, 0])], 0.2)
    g = torch.Generator().manual_seed(0)
    rand = info_nce(z, torch.randn(6, 6, generator=g), 0.2)
    # lower bound: -log(e^{1/tau} / (e^{1/tau} + 5))
    bound = -math.log(math.exp(5.0) / (math.exp(5.0) + 5.0))
    assert aligned.item() == pytest.approx(bound, rel=1e-5)
    assert aligned < rand and aligned < shuffled
    assert shuffled.item() > 5.0


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        info_nce(torch.randn(3, 4), torch.randn(4, 4))


@pytest.mark.parametrize("seed", [0, 1])
def test_composite_losses_match_definitions(seed):
    g = torch.Generator().manual_seed(seed)
    zh, zha, zg, zga, zf = (torch.randn(9, 6, generator=g, dtype=torch.float64) for _ in range(5))
    tau = 0.3
    L = lambda a, b: loop_info_nce(a, b, tau)  # noqa: E731
    assert intra_loss(zh, zha, zg, zga, tau).item() == pytest.approx(0.5 * (L(zh, zha) + L(zg, zga)), rel=1e-9)
    assert inter_loss(zh, zg, tau).item() == pytest.approx(0.5 * (L(zh, zg) + L(zg, zh)), rel=1e-9)
    assert fused_loss(zf, zh, zg, tau).item() == pytest.approx(0.5 * (L(zf, zh) + L(zf, zg)), rel=1e-9)
    assert f_align(zh, zg, tau).item() == pytest.approx(L(zh, zg), rel=1e-9)
    assert g_align(zf, zg, tau).item() == pytest.approx(L(zf, zg), rel=1e-9)


def test_align_losses_do_not_backprop_into_target():
    online = torch.randn(5, 4, requires_grad=True)
    target = torch.randn(5, 4, requires_grad=True)
    (f_align(online, target) + g_align(online, target)).backward()
    assert online.grad is not None and online.grad.abs().sum() > 0
    assert target.grad is None


# ---- eq. 7 ----------------------------------------------------------------------------------------
def loop_sparsity_bce(pred: torch.Tensor, target: torch.Tensor, eps: float) -> float:
    """Eq. 7 with explicit alpha0 / alpha1, divided by the number of entries."""
    zeros, nonzeros = [], []
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        p = min(max(p, eps), 1 - eps)
        loss = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        (nonzeros if t != 0 else zeros).append(loss)
    c0, c1 = len(zeros), len(nonzeros)
    a0, a1 = (c0 + c1) / (2 * c0), (c0 + c1) / (2 * c1)
    return (a0 * sum(zeros) + a1 * sum(nonzeros)) / (c0 + c1)


def random_graph(n: int, density: float, g: torch.Generator) -> torch.Tensor:
    keep = torch.rand(n, n, generator=g, dtype=torch.float64) < density
    return torch.where(keep, torch.rand(n, n, generator=g, dtype=torch.float64), torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("n,density,seed", [(4, 0.3, 0), (10, 0.1, 1), (25, 0.05, 2), (8, 0.9, 3)])
def test_sparsity_bce_matches_formula(n, density, seed):
    g = torch.Generator().manual_seed(seed)
    target = random_graph(n, density, g)
    target[0, 0], target[0, 1] = 0.5, 0.0  # at least one of each kind
    pred = random_graph(n, 0.5, g)
    assert sparsity_balanced_bce(pred, target).item() == pytest.approx(loop_sparsity_bce(pred, target, 1e-6), rel=1e-9)


def test_sparsity_bce_is_balanced_half_and_half():
    target = torch.zeros(10, 10, dtype=torch.float64)
    target[0, :3] = 1.0  # c1 = 3, c0 = 97
    pred = torch.full((10, 10), 0.3, dtype=torch.float64)
    loss = sparsity_balanced_bce(pred, target)
    zero_mean = -math.log(0.7)  # every zero entry contributes -log(1 - 0.3)
    one_mean = -math.log(0.3)
    assert loss.item() == pytest.approx(0.5 * zero_mean + 0.5 * one_mean, rel=1e-12)
    # the unweighted mean would be dominated by the zeros
    assert loss.item() > (97 * zero_mean + 3 * one_mean) / 100 + 0.3
    # predicting the zeros perfectly leaves exactly half of the non-zeros' mean
    exact_zeros = torch.where(target == 0, torch.zeros_like(pred), pred)
    assert sparsity_balanced_bce(exact_zeros, target).item() == pytest.approx(0.5 * one_mean, rel=1e-4)


def test_sparsity_bce_minimum_at_target_and_gradient():
    g = torch.Generator().manual_seed(4)
    target = random_graph(6, 0.4, g).float()
    target[0, 0] = 0.7
    pred = target.clone().requires_grad_(True)
    loss_at = sparsity_balanced_bce(pred, target)
    loss_at.backward()
    # at pred == target every element's BCE derivative (p - t) / (p (1 - p)) vanishes (off the clamp)
    assert pred.grad.abs().max() < 1e-3
    assert sparsity_balanced_bce(torch.clamp(target + 0.1, 0, 1), target) > loss_at


def test_sparsity_bce_single_kind():
    ones = torch.full((3, 3), 0.5)
    assert sparsity_balanced_bce(torch.full((3, 3), 0.5), ones).item() == pytest.approx(math.log(2), rel=1e-5)
    assert sparsity_balanced_bce(torch.full((3, 3), 0.5), torch.zeros(3, 3)).item() == pytest.approx(math.log(2), rel=1e-5)


def dense_to_edges(adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = adj.nonzero().T
    return idx, adj[idx[0], idx[1]]


@pytest.mark.parametrize("n,seed", [(5, 0), (12, 1), (30, 2)])
def test_sparse_bce_equals_dense(n, seed):
    g = torch.Generator().manual_seed(seed)
    target = random_graph(n, 0.2, g)
    pred = random_graph(n, 0.25, g)
    target[0, 1], pred[0, 1] = 0.4, 0.0  # a target edge missing from the prediction
    target[1, 2], pred[1, 2] = 0.0, 0.6  # a predicted edge outside the target
    target[2, 2], pred[2, 2] = 0.3, 0.2  # shared
    ti, tw = dense_to_edges(target)
    pi, pw = dense_to_edges(pred)
    perm = torch.randperm(pi.shape[1], generator=g)  # edge order must not matter
    sparse = sparsity_balanced_bce_sparse(pi[:, perm], pw[perm], ti, tw, n)
    assert sparse.item() == pytest.approx(sparsity_balanced_bce(pred, target).item(), rel=1e-9)


def test_sparse_bce_coalesces_duplicates_and_empty_prediction():
    n = 4
    target = torch.zeros(n, n, dtype=torch.float64)
    target[0, 1] = 0.6
    ti = torch.tensor([[0, 0], [1, 1]])
    tw = torch.tensor([0.2, 0.4], dtype=torch.float64)  # duplicate edge: summed to 0.6
    empty_i, empty_w = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    got = sparsity_balanced_bce_sparse(empty_i, empty_w, ti, tw, n)
    assert got.item() == pytest.approx(sparsity_balanced_bce(torch.zeros(n, n, dtype=torch.float64), target).item(), rel=1e-9)


# ---- survival NLL ---------------------------------------------------------------------------------
def loop_nll(hazards: torch.Tensor, y: list[int], c: list[int], alpha: float) -> float:
    """Zadeh & Schmid NLL as in MCAT: S(-1) = 1; mean over cases of (1-a)(unc + cen) + a unc."""
    total = 0.0
    for b in range(hazards.shape[0]):
        h = hazards[b].tolist()
        surv = [1.0]
        for hj in h:
            surv.append(surv[-1] * (1 - hj))  # surv[j + 1] = S_j
        unc = -(1 - c[b]) * (math.log(surv[y[b]]) + math.log(h[y[b]]))
        cen = -c[b] * math.log(surv[y[b] + 1])
        total += (1 - alpha) * (unc + cen) + alpha * unc
    return total / hazards.shape[0]


def test_nll_hand_computed_four_cases():
    hazards = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4, dtype=torch.float64)
    logits = torch.log(hazards / (1 - hazards))
    y = torch.tensor([0, 2, 1, 3])
    c = torch.tensor([0, 0, 1, 1])
    # S = [0.9, 0.72, 0.504, 0.3024]
    case0 = -math.log(0.1)  # event in bin 0: -log S(-1) - log h0
    case1 = -math.log(0.72) - math.log(0.3)  # event in bin 2
    case2 = -math.log(0.72)  # censored in bin 1: -log S1
    case3 = -math.log(0.3024)  # censored in bin 3: -log S3
    expected = (case0 + case1 + case2 + case3) / 4
    assert nll_survival_loss(logits, y, c, alpha=0.0).item() == pytest.approx(expected, rel=1e-9)
    assert nll_survival_loss(hazards, y, c, alpha=0.0, from_logits=False).item() == pytest.approx(expected, rel=1e-9)
    alpha = 0.4
    with_alpha = ((1 - alpha) * (case0 + case1 + case2 + case3) + alpha * (case0 + case1)) / 4
    assert nll_survival_loss(logits, y, c, alpha=alpha).item() == pytest.approx(with_alpha, rel=1e-9)


@pytest.mark.parametrize("b,j,seed,alpha", [(1, 4, 0, 0.0), (8, 4, 1, 0.15), (13, 6, 2, 0.5), (5, 2, 3, 0.0)])
def test_nll_matches_loop(b, j, seed, alpha):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, j, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, j, (b,), generator=g)
    c = torch.randint(0, 2, (b,), generator=g)
    expected = loop_nll(torch.sigmoid(logits), y.tolist(), c.tolist(), alpha)
    assert nll_survival_loss(logits, y, c.float(), alpha).item() == pytest.approx(expected, rel=1e-9)
    assert nll_survival_loss(torch.sigmoid(logits), y, c, alpha, from_logits=False).item() == pytest.approx(expected, rel=1e-9)


def test_nll_stable_for_extreme_logits():
    logits = torch.tensor([[40.0, -40.0, 60.0, 0.0]], requires_grad=True)
    loss = nll_survival_loss(logits, torch.tensor([3]), torch.tensor([0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() > 30  # survival past bin 0 with hazard sigma(40) is ~e^-40


def test_classification_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    expected = (-math.log(p0) - math.log(1 / 3)) / 2
    assert classification_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
