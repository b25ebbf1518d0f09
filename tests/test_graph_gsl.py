"""GSL post-processing (dense reference vs a loop transcription, sparse vs dense) and GCN paths."""

from __future__ import annotations

import math

import pytest
import torch

from msrl_model.nn.graph import (GCN, GSL, gsl_adjacency_dense, gsl_adjacency_sparse, knn_lists,
                                 select_neighbours)


def loop_adjacency(e: list[list[float]], k: int) -> list[list[float]]:
    """Appendix D.2 step by step with Python loops: the tie rule is (similarity desc, index asc)."""
    n = len(e)
    s = [[sum(a * b for a, b in zip(e[i], e[j])) for j in range(n)] for i in range(n)]
    kk = min(k, n - 1)
    r = [[0.0] * n for _ in range(n)]
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (-s[i][j], j))[:kk]
        for j in [i, *others]:
            r[i][j] = max(s[i][j], 0.0)
    sym = [[(r[i][j] + r[j][i]) / 2 for j in range(n)] for i in range(n)]
    deg = [sum(row) for row in sym]
    inv = [1 / math.sqrt(d) if d > 0 else 0.0 for d in deg]
    return [[inv[i] * sym[i][j] * inv[j] for j in range(n)] for i in range(n)]


S2 = math.sqrt(0.5)
FOUR_NODES = {
    # rows 0 and 2 identical (ties at similarity 1), row 1 orthogonal to both (ties at 0)
    "ties": [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [S2, S2]],
    # a negative similarity that the ReLU removes
    "negative": [[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [0.0, 1.0]],
    # a zero row (degree 0 unless linked)
    "zero-row": [[1.0, 0.0], [0.0, 0.0], [0.6, 0.8], [0.8, 0.6]],
}


@pytest.mark.parametrize("k", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("case", sorted(FOUR_NODES))
def test_dense_postprocessing_matches_loop_transcription(case: str, k: int) -> None:
    e = FOUR_NODES[case]
    got = gsl_adjacency_dense(torch.tensor(e, dtype=torch.float64), k)
    want = torch.tensor(loop_adjacency(e, k), dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(got, got.T)


def test_tie_rule_prefers_lower_index_and_keeps_self() -> None:
    sim = torch.tensor([[0.5, 0.5, -3.0, 0.5, 0.9, 0.5]])
    # node 2 keeps itself although its own similarity is the lowest; ties at 0.5 go to 0, 1, 3
    idx = select_neighbours(sim, torch.tensor([2]), 4)
    assert idx.tolist() == [[2, 4, 0, 1]]
    idx = select_neighbours(sim, torch.tensor([4]), 6)
    assert idx.tolist() == [[4, 0, 1, 3, 5, 2]]


def test_gsl_forward_is_algorithm_1() -> None:
    torch.manual_seed(0)
    gsl = GSL(6, layers=3, k=2)
    x = torch.randn(5, 6)
    assert torch.allclose(gsl(x), torch.nn.functional.normalize(torch.relu(x), dim=1))  # ω = 1
    with torch.no_grad():
        for w in gsl.weights:
            w.uniform_(-1, 1)
    w1, w2, w3 = (w.detach() for w in gsl.weights)
    want = torch.relu(torch.relu(x * w1) * w2) * w3  # ReLU between layers, none after the last
    assert torch.allclose(gsl(x), want / want.norm(dim=1, keepdim=True), atol=1e-6)
    gsl.reset_parameters()
    assert all(torch.equal(w.detach(), torch.ones(6)) for w in gsl.weights)


def to_dense(edge_index: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, n, dtype=weight.dtype)
    out[edge_index[0], edge_index[1]] = weight
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n,k,block", [(1, 3, 1), (5, 12, 2), (37, 3, 8), (120, 12, 16), (300, 12, 64),
                                       (300, 1, 300)])
def test_sparse_equals_dense(seed: int, n: int, k: int, block: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64)
    x[n // 2:n // 2 + 3] = x[0]  # duplicate rows: exact ties
    e = torch.nn.functional.normalize(x, dim=1)
    dense = gsl_adjacency_dense(e, k)
    ei, w = gsl_adjacency_sparse(e, k, block_size=block)
    assert torch.equal(to_dense(ei, w, n) != 0, dense != 0)
    assert torch.allclose(to_dense(ei, w, n), dense, atol=1e-12)
    assert bool((w != 0).all())
    key = ei[0] * n + ei[1]
    assert bool((key[1:] > key[:-1]).all())  # sorted by (row, col), no duplicates


def test_knn_lists_blockwise_independent_of_block_size() -> None:
    torch.manual_seed(3)
    e = torch.nn.functional.normalize(torch.randn(90, 5, dtype=torch.float64), dim=1)
    e[40:45] = e[7]
    a = knn_lists(e, 6, block_size=4)
    b = knn_lists(e, 6, block_size=90)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert torch.equal(a[0][:, 0], torch.arange(90))
    # duplicates of row 7 rank each other by lower index
    assert a[0][7, 1:6].tolist() == [40, 41, 42, 43, 44]


def test_sparse_and_dense_gradients_agree() -> None:
    torch.manual_seed(1)
    n = 40
    x = torch.randn(n, 6, dtype=torch.float64)
    probe = torch.randn(n, n, dtype=torch.float64)
    grads = []
    for sparse in (False, True):
        gsl = GSL(6, layers=2, k=4).double()
        e = gsl(x)
        if sparse:
            ei, w = gsl_adjacency_sparse(e, 4, block_size=7)
            loss = (w * probe[ei[0], ei[1]]).sum()
        else:
            loss = (gsl_adjacency_dense(e, 4) * probe).sum()
        loss.backward()
        grads.append(torch.cat([w.grad for w in gsl.weights]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_gcn_sparse_equals_dense() -> None:
    torch.manual_seed(2)
    n = 60
    x = torch.randn(n, 10, dtype=torch.float64)
    e = torch.nn.functional.normalize(torch.randn(n, 4, dtype=torch.float64), dim=1)
    ei, w = gsl_adjacency_sparse(e, 5, block_size=16)
    gcn = GCN(10, 7, out_dim=3, layers=3, dropout=0.5).double().eval()
    z_sparse = gcn(x, ei, w)
    z_dense = gcn.forward_dense(x, to_dense(ei, w, n))
    assert z_sparse.shape == (n, 3)
    assert torch.allclose(z_sparse, z_dense, atol=1e-12)
    before = [p.detach().clone() for p in gcn.parameters()]
    gcn.reset_parameters()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, gcn.parameters()))
