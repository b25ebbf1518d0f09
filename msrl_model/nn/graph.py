r"""Graph structure learner (GSL, paper Algorithm 1 + appendix D.2) and the 3-layer GCN.

GSL (SUBLIME's attentive learner). For node features :math:`X \in \mathbb{R}^{N \times D}`:

.. math::
    E^{(0)} = X, \qquad E^{(l)} = \sigma_l\big(E^{(l-1)} \odot \omega^{(l)}\big),\ l = 1..L, \qquad
    E = \operatorname{rownorm}_2(E^{(L)})

with :math:`\omega^{(l)} \in \mathbb{R}^{D}` initialised to ones, :math:`\sigma_l` = ReLU for
:math:`l < L` and the identity for the last layer.

Post-processing (appendix D.2, architecture §4) of :math:`S = E E^\top`:

1. sparsify: row :math:`i` keeps its top-(K+1) entries, self included;
2. ReLU, then symmetrise :math:`S^{sym} = (S^{sp} + S^{sp\top}) / 2`;
3. normalise :math:`A = D^{-1/2} S^{sym} D^{-1/2}`, :math:`D = \operatorname{diag}(S^{sym}\mathbf 1)`
   (a node of degree 0 gets :math:`D^{-1/2} = 0`).

**Neighbour selection rule** (identical in the dense and the sparse path and in
:mod:`msrl_model.infer.engine`): with :math:`K' = \min(K, N - 1)`, row :math:`i` keeps itself
(always, forced first, whatever its own similarity) and the :math:`K'` other nodes that come first
when ordered by similarity descending, ties broken by the lower node index. The order is a total
order, so the result does not depend on how ``torch.topk`` resolves ties. Similarities come from
matrix products, whose rounding depends on the kernel and on the output position: two bitwise-equal
embeddings (duplicate cases, a query equal to a buffer case) can get similarities one ulp apart. So
entries within :func:`tie_tolerance` (16·√D·eps) of a row's threshold are ranked by
:func:`canonical_dots` (an element-wise product and a row reduction, which treats every pair the
same way) — exact ties stay exact in every path. Kept entries whose similarity is negative become 0
after the ReLU and are not edges of the sparse output.

**Fixed kNN graphs** (the fine-tuning ablations KNN-cosine / KNN-euclidean, and stage 1's anchor
graphs): :func:`cosine_knn_adjacency` is the same post-processing of the cosine similarities of the
raw features; :func:`euclidean_knn_adjacency` keeps the euclidean nearest rows with Gaussian weights.
Both go through the one symmetrise-normalise, :func:`symmetric_normalised_edges`. No gradient flows
through a fixed graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GSL(nn.Module):
    r"""Attentive graph structure learner: :math:`E = \operatorname{rownorm}_2(\ldots\sigma(X \odot
    \omega^{(1)}) \ldots \odot \omega^{(L)})`.

    Args:
        dim: feature dimension D (the embedding has the same dimension).
        layers: number L of Hadamard layers.
        k: neighbours kept per node besides itself (used by :meth:`adjacency`).
    """

    def __init__(self, dim: int, layers: int = 2, k: int = 12) -> None:
        super().__init__()
        if layers < 1 or dim < 1 or k < 0:
            raise ValueError(f"GSL needs dim >= 1, layers >= 1, k >= 0 (got {dim}, {layers}, {k})")
        self.dim = dim
        self.k = k
        self.weights = nn.ParameterList([nn.Parameter(torch.ones(dim)) for _ in range(layers)])

    def reset_parameters(self) -> None:
        """Set every :math:`\\omega^{(l)}` back to ones (the SUBLIME initialisation)."""
        for w in self.weights:
            nn.init.ones_(w)

    @torch.no_grad()
    def freeze_random_(self, generator: torch.Generator) -> None:
        r"""The random-GSL ablation: every :math:`\omega^{(l)} \sim \mathcal N(0, I)` (drawn from
        ``generator`` layer by layer) and frozen (``requires_grad=False``)."""
        for w in self.weights:
            w.copy_(torch.randn(w.shape, generator=generator))
            w.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings E (N, D), rows of unit L2 norm (a zero row stays zero), from x (N, D)."""
        h = x
        for layer, w in enumerate(self.weights):
            h = h * w  # (N, D) Hadamard product with the broadcast weight vector
            if layer < len(self.weights) - 1:
                h = F.relu(h)
        return F.normalize(h, p=2.0, dim=-1)

    def adjacency(self, x: Tensor, block_size: int = 4096) -> tuple[Tensor, Tensor]:
        """Sparse normalised adjacency of x (N, D): ``gsl_adjacency_sparse(self(x), self.k)``."""
        return gsl_adjacency_sparse(self(x), self.k, block_size)


def canonical_dots(a: Tensor, b: Tensor) -> Tensor:
    """Similarities of a (D,) with the rows of b (M, D) as a row-wise reduction of ``b * a``.

    Used to settle near-ties: it treats every row the same way, so bitwise-equal vectors get
    bitwise-equal similarities (matrix-product kernels do not promise that across output positions).
    """
    return (b * a).sum(-1)


def tie_tolerance(dim: int, dtype: torch.dtype) -> float:
    """Width of the band around a row's threshold inside which the canonical similarities decide."""
    return 16 * math.sqrt(dim) * torch.finfo(dtype).eps


def select_neighbours(sim: Tensor, rows: Tensor, k1: int,
                      dots: Callable[[int, Tensor], Tensor] | None = None, tol: float = 0.0) -> Tensor:
    """Indices of the kept entries of a block of similarity rows, in rank order.

    Args:
        sim: (B, N) similarities of B nodes to all N nodes (not modified).
        rows: (B,) global index of each of the B nodes (its own column, forced first).
        k1: entries kept per row (K' + 1, self included), 1 <= k1 <= N.
        dots: optional ``dots(b, cols)`` -> canonical similarities (:func:`canonical_dots`) of block
            row b with columns ``cols``. When given, the entries within ``tol`` of a row's threshold
            are ranked by these instead of by ``sim`` (so that the rank does not depend on the
            rounding of the matrix product that produced ``sim``).
        tol: band half-width for ``dots`` (:func:`tie_tolerance`).

    Returns:
        (B, k1) int64 column indices: self first, then by similarity descending, ties by lower index.
    """
    s = sim.detach().clone()
    s[torch.arange(s.shape[0], device=s.device), rows] = math.inf
    if k1 == 1:
        return rows[:, None].clone()
    vals, idx = torch.topk(s, k1, dim=1, largest=True, sorted=True)
    # order the kept entries by (value desc, index asc): sort by index, then stable by value
    order = torch.argsort(idx, dim=1)
    idx = torch.gather(idx, 1, order)
    vals = torch.gather(vals, 1, order)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    idx = torch.gather(idx, 1, order)
    vals = torch.gather(vals, 1, order)
    thr = vals[:, -1:]  # (B, 1) smallest kept value
    if dots is None:
        # rows where the threshold value is shared by entries topk left out: resolve by a stable sort
        ambiguous = (s == thr).sum(1) > (vals == thr).sum(1)
        for r in torch.nonzero(ambiguous).flatten().tolist():
            idx[r] = torch.sort(s[r], descending=True, stable=True).indices[:k1]
        return idx
    band = (s - thr).abs() <= tol  # (B, N)
    for r in torch.nonzero(band.sum(1) > 1).flatten().tolist():
        above = idx[r][(vals[r] - thr[r]).abs() > tol]  # certainly kept (the complement of the band), in rank order
        cand = torch.nonzero(band[r]).flatten()  # ascending index
        order = torch.sort(dots(r, cand), descending=True, stable=True).indices
        idx[r] = torch.cat([above, cand[order][: k1 - above.shape[0]]])
    return idx


def knn_lists(e: Tensor, k: int, block_size: int = 4096) -> tuple[Tensor, Tensor]:
    r"""Each node's kept neighbour list and similarities, computed in row blocks (no N×N matrix).

    Args:
        e: (N, D) GSL embeddings.
        k: neighbours besides self; clipped to N - 1.
        block_size: rows per block; memory O(block_size · N + N · k).

    Returns:
        idx (N, K'+1) int64 and sim (N, K'+1) with :math:`sim_{ij} = e_i \cdot e_{idx_{ij}}` from the
        block matmul (no gradient); column 0 is the node itself, then the selection rule's order.
    """
    n = e.shape[0]
    k1 = min(k, n - 1) + 1
    idx = torch.empty(n, k1, dtype=torch.long, device=e.device)
    sim = torch.empty(n, k1, dtype=e.dtype, device=e.device)
    tol = tie_tolerance(e.shape[1], e.dtype)
    with torch.no_grad():
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            s = e[start:stop] @ e.T  # (B, N)
            rows = torch.arange(start, stop, device=e.device)
            sel = select_neighbours(s, rows, k1, lambda b, cols: canonical_dots(e[start + b], e[cols]), tol)
            idx[start:stop] = sel
            sim[start:stop] = torch.gather(s, 1, sel)
    return idx, sim


def _inv_sqrt_degree(deg: Tensor) -> Tensor:
    """D^{-1/2} with 0 for isolated nodes (degree 0)."""
    safe = torch.where(deg > 0, deg, torch.ones_like(deg))
    return torch.where(deg > 0, safe.rsqrt(), torch.zeros_like(deg))


def gsl_adjacency_dense(e: Tensor, k: int) -> Tensor:
    r"""Dense reference post-processing: :math:`A = D^{-1/2}\,\tfrac12(R + R^\top)\,D^{-1/2}`,
    :math:`R = \operatorname{ReLU}(S \odot M)`, :math:`S = E E^\top`, M the top-(K'+1) mask.

    Args:
        e: (N, D) embeddings.
        k: neighbours besides self (clipped to N - 1).

    Returns:
        (N, N) normalised symmetric adjacency; differentiable w.r.t. ``e`` (the mask is not).
    """
    n = e.shape[0]
    k1 = min(k, n - 1) + 1
    s = e @ e.T  # (N, N)
    mask = torch.zeros(n, n, dtype=torch.bool, device=e.device)
    block = max(1, (1 << 24) // max(n, 1))  # selection in row blocks bounds its temporaries
    tol = tie_tolerance(e.shape[1], e.dtype)
    ed = e.detach()
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = torch.arange(start, stop, device=e.device)
        sel = select_neighbours(s[start:stop], rows, k1,
                                lambda b, cols: canonical_dots(ed[start + b], ed[cols]), tol)
        mask[start:stop].scatter_(1, sel, True)
    if torch.is_grad_enabled() and e.requires_grad:
        r = F.relu(s * mask)
        sym = (r + r.T) / 2
        dinv = _inv_sqrt_degree(sym.sum(1))
        return dinv[:, None] * sym * dinv[None, :]
    # no autograd: the same operations in place (the reference runs at N = 21,700 in benchmarks)
    s.mul_(mask).relu_()
    del mask
    sym = s.add_(s.T.clone()).mul_(0.5)
    dinv = _inv_sqrt_degree(sym.sum(1))
    return sym.mul_(dinv[:, None]).mul_(dinv[None, :])


def gsl_adjacency_sparse(e: Tensor, k: int, block_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Same values as :func:`gsl_adjacency_dense` as a sparse graph, never materialising N×N.

    Args:
        e: (N, D) embeddings.
        k: neighbours besides self (clipped to N - 1).
        block_size: rows per similarity block (memory O(block_size · N + N · K)).

    Returns:
        edge_index (2, M) int64 sorted by (row, col), edge_weight (M,): the nonzero entries of A.
        Differentiable w.r.t. ``e`` (kept similarities are recomputed as row dot products).
    """
    n = e.shape[0]
    idx, sim = knn_lists(e, k, block_size)
    k1 = idx.shape[1]
    rows = torch.arange(n, device=e.device).repeat_interleave(k1)  # (N·k1,)
    cols = idx.reshape(-1)  # (N·k1,)
    if torch.is_grad_enabled() and e.requires_grad:
        vals = (e[rows] * e[cols]).sum(-1)
    else:
        vals = sim.reshape(-1)
    return symmetric_normalised_edges(rows, cols, vals, n)


def symmetric_normalised_edges(rows: Tensor, cols: Tensor, values: Tensor, n: int) -> tuple[Tensor, Tensor]:
    r"""Steps 2–3 of the post-processing on kept entries :math:`S^{sp}_{rows_m, cols_m} = values_m`:
    :math:`A = D^{-1/2}\,\tfrac12(R + R^\top)\,D^{-1/2}`, :math:`R = \operatorname{ReLU}(S^{sp})`.

    Args:
        rows, cols: (M,) int64 node indices of the kept entries (each (row, col) pair at most once).
        values: (M,) their similarities / weights (differentiable).
        n: number of nodes N.

    Returns:
        edge_index (2, E) int64 sorted by (row, col), edge_weight (E,): the nonzero entries of A.
    """
    half = F.relu(values) / 2
    # symmetrise: each kept (i, j) contributes half to (i, j) and half to (j, i); coalesce by key
    key = torch.cat([rows * n + cols, cols * n + rows])  # (2M,)
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    weight = torch.zeros(uniq.shape[0], dtype=values.dtype, device=values.device).index_add(
        0, inverse, torch.cat([half, half])
    )
    r, c = uniq // n, uniq % n
    deg = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, r, weight)
    dinv = _inv_sqrt_degree(deg)
    weight = dinv[r] * weight * dinv[c]
    keep = weight != 0
    return torch.stack([r[keep], c[keep]]), weight[keep]


def cosine_knn_adjacency(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""Fixed cosine kNN graph: the GSL post-processing (module docstring) of
    :math:`S = \hat X \hat X^\top`, :math:`\hat x_i = x_i / \lVert x_i \rVert` (no learnable weights).

    Args: x (N, D) node features (detached); k neighbours besides self.
    Returns: edge_index (2, E), edge_weight (E,) as :func:`gsl_adjacency_sparse`.
    """
    return gsl_adjacency_sparse(F.normalize(x.detach(), dim=-1), k)


def euclidean_knn_adjacency(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""Fixed euclidean kNN graph: row i keeps itself and its K' = min(k, N - 1) nearest rows (ties:
    lower index) with weights :math:`w_{ij} = \exp(-\lVert x_i - x_j\rVert^2 / \bar d^2)`
    (:math:`\bar d^2` the mean kept squared distance to another row), then
    :func:`symmetric_normalised_edges`.

    Args: x (N, D) node features (detached); k neighbours besides self.
    Returns: edge_index (2, E), edge_weight (E,). Dense N×N distances (buffers here are at most a few
    thousand rows).
    """
    x = x.detach()
    n = x.shape[0]
    k1 = min(k, n - 1) + 1
    d2 = torch.cdist(x, x).pow(2)  # (N, N)
    d2.fill_diagonal_(-1.0)  # self first
    order = torch.sort(d2, dim=1, stable=True).indices[:, :k1]  # (N, k1) ascending distance, ties lower index
    rows = torch.arange(n, device=x.device).repeat_interleave(k1)  # (N·k1,)
    cols = order.reshape(-1)  # (N·k1,)
    dist = d2[rows, cols].clamp(min=0.0)
    scale = dist[rows != cols].mean().clamp(min=1e-12) if n > 1 else torch.ones((), device=x.device)
    return symmetric_normalised_edges(rows, cols, torch.exp(-dist / scale), n)


GraphMode = Literal["gsl", "knn_cos", "knn_euc"]
"""The graph over the nodes in fine-tuning: the learned GSL graph or a fixed kNN graph."""

KNN_GRAPHS: dict[str, Callable[[Tensor, int], tuple[Tensor, Tensor]]] = {
    "knn_cos": cosine_knn_adjacency,
    "knn_euc": euclidean_knn_adjacency,
}
"""Graph mode -> builder ``(x (N, D), k) -> (edge_index, edge_weight)`` of the fixed kNN graphs."""


class GCNLayer(nn.Module):
    r"""One graph convolution over a given, already normalised adjacency :math:`A` (self loops included):

    .. math::
        Z = A\,(X W) + b, \qquad Z_i = \sum_{(j \to i)} a_{ji}\,(X W)_j + b

    Shapes: X (N, in_dim), edge_index (2, M) with row 0 the source j and row 1 the target i, edge_weight
    (M,) the :math:`a_{ji}`, Z (N, out_dim). The parameters are named and initialised as
    torch_geometric's ``GCNConv(normalize=False, add_self_loops=False)`` (``lin.weight`` (out, in), glorot
    uniform; ``bias`` (out,), zeros), so bundles written with it load unchanged; this layer needs no
    torch_geometric (its import costs seconds at start-up and pulls in ``torch._dynamo``).

    Args:
        in_dim: input width.
        out_dim: output width.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Glorot-uniform weight (:math:`U(\pm\sqrt{6 / (in + out)})`), zero bias."""
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        """Z (N, out_dim) from x (N, in_dim) and the sparse adjacency (edge_index (2, M), edge_weight (M,))."""
        h = self.lin(x)  # (N, out)
        source, target = edge_index[0], edge_index[1]
        messages = h.index_select(0, source) * edge_weight.unsqueeze(1)  # (M, out)
        return torch.zeros_like(h).index_add_(0, target, messages) + self.bias


class GCN(nn.Module):
    r"""GCN over a given normalised adjacency (self loops included):

    .. math::
        H^{(0)} = X,\quad H^{(l)} = \operatorname{dropout}\big(\operatorname{ReLU}(A H^{(l-1)} W_l
        + b_l)\big)\ (l < L),\quad Z = A H^{(L-1)} W_L + b_L

    Shapes: X (N, in_dim), hidden widths ``hidden``, Z (N, out_dim). The sparse path is a stack of
    :class:`GCNLayer` (A is already normalised and has its self loops); :meth:`forward_dense` computes
    the same numbers with a dense A.

    Args:
        in_dim: input feature dimension.
        hidden: width of the hidden layers.
        out_dim: output width (paper 256).
        layers: number of layers L (paper 3).
        dropout: dropout probability between layers (training only).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int = 256, layers: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"GCN needs at least one layer (got {layers})")
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        self.convs = nn.ModuleList(GCNLayer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = dropout

    def reset_parameters(self) -> None:
        """Re-initialise every layer (glorot weights, zero biases)."""
        for conv in self.convs:
            conv.reset_parameters()

    def layer_params(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer (W (in, out), b (out,)) such that a layer is ``A @ (H @ W) + b``."""
        return [(conv.lin.weight.T, conv.bias) for conv in self.convs]

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        """Z (N, out_dim) from x (N, in_dim) and the sparse adjacency (edge_index (2, M), weight (M,))."""
        h = x
        for layer, conv in enumerate(self.convs):
            h = conv(h, edge_index, edge_weight)
            if layer < len(self.convs) - 1:
                h = F.dropout(F.relu(h), p=self.dropout, training=self.training)
        return h

    def forward_dense(self, x: Tensor, adj: Tensor) -> Tensor:
        """Z (N, out_dim) from x (N, in_dim) and a dense adjacency (N, N): the reference path."""
        h = x
        for layer, (w, b) in enumerate(self.layer_params()):
            h = adj @ (h @ w) + b
            if layer < len(self.convs) - 1:
                h = F.dropout(F.relu(h), p=self.dropout, training=self.training)
        return h
