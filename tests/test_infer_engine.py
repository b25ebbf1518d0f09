"""Exact inference engine == dense reference (paper Algorithm 2.III over [buffer; query])."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msrl_model.infer.engine import DenseReference, ExactEngine, QueryResult
from msrl_model.nn.graph import GCN, GSL, knn_lists

DIM = 12


def models(seed: int, k: int, dtype: torch.dtype = torch.float64) -> tuple[GSL, GCN]:
    torch.manual_seed(seed)
    gsl = GSL(DIM, layers=2, k=k).to(dtype)
    with torch.no_grad():
        for w in gsl.weights:
            w.uniform_(-0.5, 1.5)  # some negative weights: ReLU zeroes features, negative similarities
    gcn = GCN(DIM, 9, out_dim=4, layers=3, dropout=0.3).to(dtype)
    with torch.no_grad():
        for conv in gcn.convs:
            conv.bias.uniform_(-0.5, 0.5)
    return gsl, gcn


def assert_same(a: QueryResult, b: QueryResult, atol: float = 1e-5) -> None:
    assert torch.allclose(a.z, b.z, atol=atol), (a.z - b.z).abs().max()
    # links compared by row: exactly tied weights may differ by an ulp between the two paths
    assert sorted(a.linked.tolist()) == sorted(b.linked.tolist())
    assert torch.allclose(a.linked_weights[torch.argsort(a.linked)], b.linked_weights[torch.argsort(b.linked)],
                          atol=atol)
    assert torch.allclose(a.self_weight, b.self_weight, atol=atol)
    assert a.top_indices.tolist() == b.top_indices.tolist()
    assert torch.allclose(a.top_similarities, b.top_similarities, atol=atol)


def check(buffer: torch.Tensor, queries: torch.Tensor, k: int, seed: int = 0, **kw) -> list[QueryResult]:
    gsl, gcn = models(seed, k)
    exact = ExactEngine(gsl, gcn, buffer, k, block_size=5, **kw).predict(queries)
    dense = DenseReference(gsl, gcn, buffer, k).predict(queries)
    assert len(exact) == len(dense) == queries.shape[0]
    for a, b in zip(exact, dense):
        assert_same(a, b)
    return exact


@pytest.mark.parametrize("k", [1, 3, 12, 60])
@pytest.mark.parametrize("n", [1, 3, 13, 50, 200])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_buffers_match_dense(seed: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed * 1000 + n)
    buffer = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    queries = torch.randn(3, DIM, generator=g, dtype=torch.float64)
    results = check(buffer, queries, k, seed)
    for r in results:
        assert r.z.shape == (4,)
        assert r.top_indices.shape == (min(k, n),)
        assert bool((r.linked_weights[:-1] >= r.linked_weights[1:]).all())


@pytest.mark.parametrize("k", [1, 3, 12])
def test_duplicate_rows_and_query_equal_to_a_buffer_row(k: int) -> None:
    g = torch.Generator().manual_seed(7)
    buffer = torch.randn(40, DIM, generator=g, dtype=torch.float64)
    buffer[10:16] = buffer[3]  # seven identical rows: exact ties everywhere around them
    buffer[20] = buffer[30]
    queries = torch.stack([buffer[3], buffer[30], buffer[0], torch.randn(DIM, generator=g, dtype=torch.float64)])
    results = check(buffer, queries, k)
    # the query equal to row 3 keeps the lowest-indexed copies first
    assert results[0].top_indices.tolist()[: min(k, 7)] == [3, 10, 11, 12, 13, 14, 15][: min(k, 7)]


def test_exact_similarity_ties_from_symmetric_features() -> None:
    # buffer = basis vectors (pairwise similarity exactly 0), query = all-ones: all similarities equal
    buffer = torch.eye(DIM, dtype=torch.float64)
    queries = torch.stack([torch.ones(DIM, dtype=torch.float64), buffer[5] + buffer[6]])
    gsl, gcn = models(0, 3)
    gsl.reset_parameters()  # ω = 1 keeps the symmetry
    exact = ExactEngine(gsl, gcn, buffer, 3).predict(queries)
    dense = DenseReference(gsl, gcn, buffer, 3).predict(queries)
    for a, b in zip(exact, dense):
        assert_same(a, b)
    assert exact[0].top_indices.tolist() == [0, 1, 2]
    assert exact[1].top_indices.tolist() == [5, 6, 0]


@pytest.mark.parametrize("n,k", [(2, 5), (6, 6), (6, 7), (4, 100)])
def test_k_at_least_buffer_size(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n + k)
    buffer = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    results = check(buffer, torch.randn(2, DIM, generator=g, dtype=torch.float64), k)
    assert results[0].top_indices.shape == (n,)


def test_batch_equals_one_at_a_time() -> None:
    g = torch.Generator().manual_seed(11)
    buffer = torch.randn(80, DIM, generator=g, dtype=torch.float64)
    queries = torch.randn(5, DIM, generator=g, dtype=torch.float64)
    queries[3] = queries[1]  # identical queries must not see each other
    gsl, gcn = models(2, 4)
    engine = ExactEngine(gsl, gcn, buffer, 4)
    batch = engine.predict(queries)
    for i, r in enumerate(batch):
        assert_same(r, engine.predict(queries[i:i + 1])[0], atol=1e-12)
    assert_same(batch[1], batch[3], atol=1e-12)


def test_head_rowsource_and_supplied_knn() -> None:
    g = torch.Generator().manual_seed(5)
    buffer = torch.randn(30, DIM, generator=g, dtype=torch.float64)
    queries = torch.randn(2, DIM, generator=g, dtype=torch.float64)
    gsl, gcn = models(3, 4)
    head = nn.Linear(4, 2).double()

    class Rows:
        n_rows, dim = buffer.shape

        def rows(self, start: int, stop: int) -> torch.Tensor:
            return buffer[start:stop]

    knn = knn_lists(gsl(buffer).detach(), 4)
    engine = ExactEngine(gsl, gcn, Rows(), 4, head=head, buffer_knn=knn, chunk_rows=7)
    dense = DenseReference(gsl, gcn, buffer, 4, head=head).predict(queries)
    for a, b in zip(engine.predict(queries), dense):
        assert_same(a, b)
        assert a.output.shape == (1, 2)
        assert torch.allclose(a.output, head(b.z[None]), atol=1e-10)
    with pytest.raises(ValueError, match="buffer_knn"):
        ExactEngine(gsl, gcn, buffer, 5, buffer_knn=knn)


def test_float32_within_1e4() -> None:
    g = torch.Generator().manual_seed(9)
    buffer = torch.randn(300, DIM, generator=g)
    queries = torch.randn(3, DIM, generator=g)
    gsl, gcn = models(4, 12, torch.float32)
    exact = ExactEngine(gsl, gcn, buffer, 12).predict(queries)
    dense = DenseReference(gsl, gcn, buffer, 12).predict(queries)
    for a, b in zip(exact, dense):
        assert_same(a, b, atol=1e-4)


# ---- influence: the query with one buffer row removed, and the query alone -------------------------


def without_row(buffer: torch.Tensor, r: int) -> torch.Tensor:
    return torch.cat([buffer[:r], buffer[r + 1:]])


def renumbered(res: QueryResult, r: int) -> QueryResult:
    """A dense result on the buffer without row r, its rows numbered as in the whole buffer."""
    def up(rows: torch.Tensor) -> torch.Tensor:
        return rows + (rows >= r).long()

    return QueryResult(res.z, res.output, up(res.linked), res.linked_weights, res.self_weight, up(res.top_indices),
                       res.top_similarities)


def assert_exact(a: QueryResult, b: QueryResult, atol: float = 1e-6) -> None:
    """Same graph and max |Δ| <= atol on z, the head output and every edge weight."""
    assert_same(a, b, atol=atol)
    assert (a.z - b.z).abs().max() <= atol
    assert (a.output - b.output).abs().max() <= atol
    diff = a.linked_weights[torch.argsort(a.linked)] - b.linked_weights[torch.argsort(b.linked)]
    assert diff.numel() == 0 or diff.abs().max() <= atol


@pytest.mark.parametrize("k", [1, 3, 12, 60])
@pytest.mark.parametrize("n", [4, 50])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_removing_each_row_equals_dense_without_it(seed: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed * 100 + n + k)
    buffer = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    queries = torch.randn(2, DIM, generator=g, dtype=torch.float64)
    gsl, gcn = models(seed, k)
    head = nn.Linear(4, 3).double()
    engine = ExactEngine(gsl, gcn, buffer, k, head=head, block_size=7)
    alone_ref = DenseReference(gsl, gcn, buffer[:0], k, head=head)
    for q in queries:
        default = engine.explain(q)
        assert default.removed.tolist() == default.full.linked.tolist() == engine.predict(q[None])[0].linked.tolist()
        ex = engine.explain(q, torch.arange(n))  # every row, linked or not
        assert_exact(ex.full, DenseReference(gsl, gcn, buffer, k, head=head).predict(q[None])[0])
        assert_exact(ex.alone, alone_ref.predict(q[None])[0])
        assert ex.alone.linked.numel() == 0 and float(ex.alone.self_weight) == 1.0
        for r, res in zip(ex.removed.tolist(), ex.without):
            ref = renumbered(DenseReference(gsl, gcn, without_row(buffer, r), k, head=head).predict(q[None])[0], r)
            assert_exact(res, ref)
            assert r not in res.linked.tolist() and r not in res.top_indices.tolist()
        for i, res in enumerate(default.without):  # the default rows give the same numbers
            assert torch.equal(res.z, ex.without[int(default.removed[i])].z)


@pytest.mark.parametrize("k", [1, 3, 12])
def test_removal_with_duplicate_rows(k: int) -> None:
    g = torch.Generator().manual_seed(17)
    buffer = torch.randn(30, DIM, generator=g, dtype=torch.float64)
    buffer[10:14] = buffer[3]  # a row and four copies: removing one copy shifts ties in many lists
    query = buffer[3] + 1e-3 * torch.randn(DIM, generator=g, dtype=torch.float64)
    gsl, gcn = models(5, k)
    head = nn.Linear(4, 2).double()
    ex = ExactEngine(gsl, gcn, buffer, k, head=head).explain(query, torch.tensor([3, 10, 13, 0, 29]))
    for r, res in zip(ex.removed.tolist(), ex.without):
        assert_exact(res, renumbered(DenseReference(gsl, gcn, without_row(buffer, r), k, head=head).predict(
            query[None])[0], r))


def test_removing_the_only_row_leaves_the_query_alone() -> None:
    g = torch.Generator().manual_seed(3)
    buffer = torch.randn(1, DIM, generator=g, dtype=torch.float64)
    gsl, gcn = models(1, 3)
    ex = ExactEngine(gsl, gcn, buffer, 3).explain(torch.randn(DIM, generator=g, dtype=torch.float64),
                                                  torch.tensor([0]))
    assert torch.allclose(ex.without[0].z, ex.alone.z, atol=1e-12)
    assert ex.without[0].linked.numel() == 0


def test_supplied_lists_without_next_neighbours_refuse_removals() -> None:
    g = torch.Generator().manual_seed(4)
    buffer = torch.randn(20, DIM, generator=g, dtype=torch.float64)
    query = torch.randn(DIM, generator=g, dtype=torch.float64)
    gsl, gcn = models(2, 3)
    own = ExactEngine(gsl, gcn, buffer, 3)
    assert own.knn_idx.shape == (20, 4) and own.next_idx.shape == (20,)
    plain = ExactEngine(gsl, gcn, buffer, 3, buffer_knn=(own.knn_idx, own.knn_sim))
    assert plain.explain(query, torch.zeros(0, dtype=torch.long)).without == []
    with pytest.raises(ValueError, match="next neighbour"):
        plain.explain(query)
    wide = ExactEngine(gsl, gcn, buffer, 3, buffer_knn=(torch.cat([own.knn_idx, own.next_idx[:, None]], 1),
                                                       torch.cat([own.knn_sim, own.next_sim[:, None]], 1)))
    a, b = wide.explain(query), own.explain(query)
    assert all(torch.equal(x.z, y.z) for x, y in zip(a.without, b.without))
