"""The int8-screened engine is the fp32 engine bit for bit, and both equal the dense reference.

Adversarial buffers: exact ties, near-ties (one ulp to a few quantisation steps apart), duplicated rows,
rows whose int8 codes coincide while their exact similarities differ (only the re-rank can tell them
apart), a query equal to a buffer row, and removals (``explain``).
"""

from __future__ import annotations

import pytest
import torch

from msrl_model.infer.engine import DenseReference, ExactEngine, QueryResult
from msrl_model.nn.graph import GCN, GSL

DIM = 24


def models(k: int, dtype: torch.dtype, seed: int = 0) -> tuple[GSL, GCN]:
    torch.manual_seed(seed)
    gsl = GSL(DIM, layers=2, k=k).to(dtype)
    with torch.no_grad():
        for w in gsl.weights:
            w.uniform_(0.5, 1.5)
    gcn = GCN(DIM, 9, out_dim=4, layers=3).to(dtype)
    with torch.no_grad():
        for conv in gcn.convs:
            conv.bias.uniform_(-0.5, 0.5)
    return gsl, gcn


def assert_identical(a: QueryResult, b: QueryResult) -> None:
    for name in ("z", "linked", "linked_weights", "self_weight", "top_indices", "top_similarities"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and torch.equal(x, y), (name, x, y)


def assert_close(a: QueryResult, b: QueryResult, atol: float = 1e-6) -> None:
    """Same rows, numbers within ``atol``. The top lists are compared as sets with their similarities: the
    dense reference orders entries above its tie band by matmul values, and rows an ulp apart (as built
    here) can swap there against the canonical dots; the set, hence the graph, is the same."""
    assert sorted(a.top_indices.tolist()) == sorted(b.top_indices.tolist())
    order_a, order_b = torch.argsort(a.top_indices), torch.argsort(b.top_indices)
    assert torch.allclose(a.top_similarities[order_a], b.top_similarities[order_b], atol=atol)
    assert sorted(a.linked.tolist()) == sorted(b.linked.tolist())
    assert torch.allclose(a.z, b.z, atol=atol)
    assert torch.allclose(a.linked_weights[torch.argsort(a.linked)], b.linked_weights[torch.argsort(b.linked)],
                          atol=atol)


def assert_screens_agree(gsl, gcn, buffer: torch.Tensor, k: int, queries: torch.Tensor,
                         int8: ExactEngine | None = None, fp32: ExactEngine | None = None, **engine: object) -> None:
    """The int8-screened engine's results are the fp32 engine's, bit for bit, and the dense reference's (atol)."""
    int8 = ExactEngine(gsl, gcn, buffer, k, screen="int8", **engine) if int8 is None else int8
    fp32 = ExactEngine(gsl, gcn, buffer, k, **engine) if fp32 is None else fp32
    dense = DenseReference(gsl, gcn, buffer, k)
    for a, b, c in zip(int8.predict(queries), fp32.predict(queries), dense.predict(queries)):
        assert_identical(a, b)
        assert_close(a, c)


def adversarial_buffer(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, queries): random rows, exact duplicates, near-duplicates a fraction of a quantisation
    step (and one ulp) apart, and queries equal to / a hair away from buffer rows."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n // 4, DIM, generator=g, dtype=dtype)
    step = base.abs().amax(1, keepdim=True) / 127  # the int8 step of each row (GSL weights rescale it)
    near = base + step * (torch.rand(base.shape, generator=g, dtype=dtype) - 0.5) * 0.3  # same codes, new values
    ulp = torch.nextafter(base, torch.full_like(base, 2.0))  # one ulp up on every coordinate
    rest = torch.rand(n - 3 * (n // 4), DIM, generator=g, dtype=dtype)
    buffer = torch.cat([base, near, ulp, rest])[torch.randperm(n, generator=g)]
    buffer[n // 2] = buffer[1]  # one more exact duplicate
    queries = torch.stack([buffer[1], buffer[n - 1], torch.nextafter(buffer[3 % n], torch.zeros_like(buffer[3])),
                           torch.rand(DIM, generator=g, dtype=dtype)])
    return buffer, queries


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, k", [(5, 3), (5, 8), (64, 3), (400, 12)])
@pytest.mark.parametrize("seed", [0, 1])
def test_int8_screen_is_the_fp32_engine_and_the_dense_reference(dtype: torch.dtype, n: int, k: int,
                                                                 seed: int) -> None:
    buffer, queries = adversarial_buffer(n, dtype, seed)
    gsl, gcn = models(k, dtype, seed)
    assert_screens_agree(gsl, gcn, buffer, k, queries, block_size=7)


def test_rows_sharing_codes_are_told_apart_by_the_exact_rerank() -> None:
    # 60 rows with the same int8 codes as the query but different exact values: the screen ties them all,
    # the top-K and the entering rows come from the fp32 re-rank alone
    dtype, k = torch.float32, 5
    g = torch.Generator().manual_seed(3)
    v = torch.rand(DIM, generator=g, dtype=dtype) + 0.5
    step = float(v.max()) / 127
    twins = v + step * 0.2 * (torch.rand(60, DIM, generator=g, dtype=dtype) - 0.5)
    buffer = torch.cat([twins, torch.rand(200, DIM, generator=g, dtype=dtype)])
    gsl, gcn = models(k, dtype)
    int8 = ExactEngine(gsl, gcn, buffer, k, screen="int8")
    fp32 = ExactEngine(gsl, gcn, buffer, k)
    assert int8.screen_rows.codes[:60].unique(dim=0).shape[0] < 60  # some twins share their codes
    assert_screens_agree(gsl, gcn, buffer, k, v[None], int8, fp32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_margins_bound_the_screen_error(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    buffer = torch.randn(3000, DIM, generator=g, dtype=dtype)
    gsl, gcn = models(4, dtype)
    engine = ExactEngine(gsl, gcn, buffer, 4, screen="int8")
    with torch.no_grad():
        e_q = gsl(torch.randn(6, DIM, generator=g, dtype=dtype))
        low, high = engine.screen_rows.bounds(e_q, None)
        exact = (gsl(buffer)[None, :, :] * e_q[:, None]).sum(-1).to(torch.float64)  # canonical dots, (Q, N)
    assert bool(((low <= exact) & (exact <= high)).all())
    err, margin = (exact - (low + high) / 2).abs(), (high - low) / 2
    assert float((err / margin).max()) > 1e-3  # the bound is not vacuous: within 3 orders of the error


@pytest.mark.parametrize("k", [2, 4])
def test_explain_is_identical_under_the_int8_screen(k: int) -> None:
    buffer, queries = adversarial_buffer(80, torch.float32, 2)
    gsl, gcn = models(k, torch.float32)
    a = ExactEngine(gsl, gcn, buffer, k, screen="int8").explain(queries[0])
    b = ExactEngine(gsl, gcn, buffer, k).explain(queries[0])
    assert torch.equal(a.removed, b.removed) and len(a.without) == len(b.without) > 0
    assert_identical(a.full, b.full)
    for x, y in zip(a.without, b.without):
        assert_identical(x, y)


def test_int8_rowsource_holds_no_fp32_embeddings() -> None:
    buffer, queries = adversarial_buffer(120, torch.float32, 4)

    class Rows:
        n_rows, dim = buffer.shape

        def rows(self, start: int, stop: int) -> torch.Tensor:
            return buffer[start:stop]

    gsl, gcn = models(3, torch.float32)
    plain = ExactEngine(gsl, gcn, buffer, 3)
    engine = ExactEngine(gsl, gcn, Rows(), 3, screen="int8", buffer_knn=(plain.knn_idx, plain.knn_sim))
    assert engine.emb is None
    for a, b in zip(engine.predict(queries), plain.predict(queries)):
        assert_identical(a, b)


def test_unknown_screen_is_refused() -> None:
    gsl, gcn = models(3, torch.float32)
    with pytest.raises(ValueError, match="screen"):
        ExactEngine(gsl, gcn, torch.rand(5, DIM), 3, screen="fp16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_bounds_hold_where_squares_underflow(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(6)
    tiny = torch.finfo(dtype).tiny
    rows = torch.rand(6, DIM, generator=g, dtype=torch.float64)
    rows[1] *= tiny ** 0.5 / 4  # every square below the smallest normal
    rows[2, :3] *= 1e30 if dtype == torch.float64 else 1e15  # three large coordinates beside small ones
    rows[3] = 0
    rows[4, 0] = tiny  # one subnormal-square coordinate alone
    rows[5] = torch.nextafter(rows[5], torch.ones_like(rows[5]))
    x = rows.to(dtype)
    screen = ExactEngine(*models(2, dtype), x, 2, screen="int8").screen_rows
    exact = torch.linalg.vector_norm(x.to(torch.float64), dim=1)  # x is exactly representable in float64
    bound = screen._norm_up(x)
    assert bool((exact <= bound).all())
    assert float(((bound - exact) / exact.clamp(min=1e-300))[[0, 2, 5]].max()) < 1e-3  # not vacuous on normal rows


@pytest.mark.parametrize("k", [1, 3])
def test_zero_rows_and_zero_query(k: int) -> None:
    buffer, queries = adversarial_buffer(48, torch.float32, 7)
    buffer[[4, 9, 30]] = 0  # zero embeddings: similarity exactly 0 to everything, a zero int8 scale
    queries = torch.cat([queries, torch.zeros(1, DIM)])
    gsl, gcn = models(k, torch.float32)
    assert_screens_agree(gsl, gcn, buffer, k, queries)


def test_near_ties_at_the_screen_margin_are_reranked() -> None:
    # rows whose exact similarities to the query sit inside one screen margin of the K-th one (and of each
    # other's thresholds): the screen cannot order them, the exact re-rank must, as the fp32 engine does
    dtype, k = torch.float32, 4
    g = torch.Generator().manual_seed(8)
    v = torch.rand(DIM, generator=g, dtype=dtype) + 0.5
    gsl, gcn = models(k, dtype)
    with torch.no_grad():
        engine = ExactEngine(gsl, gcn, v[None].repeat(2, 1), k, screen="int8")
        width = float(engine.screen_rows.bounds(gsl(v[None]), None)[1][0, 0] - 1)  # ≈ one margin
    shifts = torch.linspace(-2, 2, 40, dtype=dtype)[:, None] * width * (torch.rand(40, DIM, generator=g) - 0.5)
    buffer = torch.cat([v + shifts, torch.rand(100, DIM, generator=g, dtype=dtype)])
    queries = torch.stack([v, v + shifts[3], buffer[50]])
    int8 = ExactEngine(gsl, gcn, buffer, k, screen="int8")
    fp32 = ExactEngine(gsl, gcn, buffer, k)
    with torch.no_grad():
        e_q = gsl(queries[:1])
        low, high = int8.screen_rows.bounds(e_q, None)
        kth = torch.sort((gsl(buffer) * e_q).sum(1), descending=True).values[k - 1]
    assert int(((low <= kth) & (kth <= high)).sum()) > 2 * k  # the screen alone cannot tell the top-K
    assert_screens_agree(gsl, gcn, buffer, k, queries, int8, fp32)
