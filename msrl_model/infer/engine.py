r"""Exact fast MSRL inference against a fixed buffer (architecture §5), and the dense reference.

**Semantics.** The paper (Algorithm 2.III) builds the GSL graph over [buffer; query] and reads the
query's GCN output. A batch of Q queries is Q independent problems: query i is predicted on the graph
over [buffer; query i] (node index N), exactly as if it came alone; queries never see each other.
The batch only shares the one pass over the buffer embeddings (a (N, D) @ (D, Q) product).

**What changes when a query joins the buffer graph** (selection rule of :mod:`msrl_model.nn.graph`:
self first, then similarity descending, ties to the lower index; the query has the highest index N):

* the query keeps itself and its top-K' buffer rows, K' = min(K, N);
* a buffer row j whose list is not full (K >= N) takes the query in without dropping anything;
  otherwise (K < N) it takes the query iff ``s_j > t_j`` strictly, t_j being the similarity of its
  K-th other neighbour m_j (on a tie the query, with the larger index, loses); it then drops m_j;
* changed symmetrised entries: (q, j) for the query's neighbours and (j, m_j) for the drops;
  changed degrees: Δ = {q} ∪ N'(q) ∪ {entering rows} ∪ {m_j}.

**Receptive field.** With :math:`\hat A' = D'^{-1/2} S' D'^{-1/2}` the layer-l output of node v
depends on :math:`\hat A'_{v\cdot}`, i.e. on S' at v's edges and on the degrees of v and of its
neighbours, and on layer l-1 at v's neighbours. The query output z = H_L[q] needs H_{L-1} on the
1-hop ball B_1, ..., H_1 on B_{L-1} and X W_1 on B_L (B_l = nodes within l hops of q in the new graph).
Every node of B_{L-1} (L >= 2) is q, a neighbour of q, or a neighbour of a neighbour of q — and all
neighbours of q are in Δ — so every H_l needed has a changed normalised neighbourhood: no buffer-only
layer output can be reused, and the only query-independent products worth keeping are
:math:`P_1 = X_b W_1` (N × hidden) and the degrees of the buffer graph. The engine therefore keeps:
GSL embeddings E_b (N × D), every row's ordered neighbour list and similarities, the symmetrised
unnormalised buffer graph as CSR with its two directed halves, degrees, and P_1.

**Cost per query** (N buffer rows, D dims, K neighbours, h hidden width, L = 3): the similarity
:math:`E_b e_q` is 2·N·D flops reading 4·N·D bytes (N = 10^6, D = 1536: 3.1 GFLOP, 6.1 GB — the
memory-bound bottleneck, ~0.4 s at ~15 GB/s); the threshold test and the query's top-K read 4·N bytes
three times; the local GCN touches |B_2| ≲ (2K+2)^2 rows of ≲ 2K+2 edges, i.e. ≲ 2·(2K+2)^3·h
≈ 2·10^7 flops at K = 12, h = 256: negligible. The dense reference costs 2·N²·D for S plus
2·L·N²·h for the GCN (1.5·10^12 + 0.7·10^12 at N = 21,700) and N² memory.

**Precompute** is one blockwise all-pairs top-K (2·N²·D flops) unless the caller supplies the
buffer's neighbour lists (``buffer_knn``, e.g. stored at training time), plus 2·N·D·h for P_1.
Memory: E_b (4·N·D bytes) + P_1 (4·N·h) + CSR (≤ 2·N·(K+1) edges × 16 bytes); the buffer features
themselves are read in row chunks (pass a :class:`RowSource` to avoid holding them at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrl_model.nn.graph import (GCN, GSL, canonical_dots, gsl_adjacency_dense, knn_lists, select_neighbours,
                                 tie_tolerance)


@runtime_checkable
class RowSource(Protocol):
    """Buffer features produced on demand in row ranges (so the N × D matrix is never held)."""

    n_rows: int  # N
    dim: int  # D

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows start..stop-1 as a (stop - start, D) tensor."""
        ...


@dataclass
class QueryResult:
    """One query's prediction on the graph [buffer; query]."""

    z: Tensor  # (out_dim,) GCN output at the query node
    output: Any  # head(z[None]) (a batch of one) when the engine has a head, else None
    linked: Tensor  # (M,) int64 buffer rows with a nonzero normalised edge to the query, by weight desc (ties: lower row)
    linked_weights: Tensor  # (M,) their normalised edge weights A'[q, j]
    self_weight: Tensor  # () normalised self-loop weight A'[q, q]
    top_indices: Tensor  # (K',) buffer rows the query itself keeps, in selection order
    top_similarities: Tensor  # (K',) their GSL similarities e_q · e_j


def _sorted_links(rows: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Nonzero links sorted by weight descending, ties by lower row index."""
    keep = weights != 0
    rows, weights = rows[keep], weights[keep]
    order = torch.argsort(rows)
    rows, weights = rows[order], weights[order]
    order = torch.sort(weights, descending=True, stable=True).indices
    return rows[order], weights[order]


def _apply_head(head: nn.Module | None, z: Tensor) -> Any:
    return None if head is None else head(z.unsqueeze(0))


class DenseReference:
    """The paper's inference: for each query, GSL + dense post-processing + dense GCN over all N+1 nodes.

    Args:
        gsl: trained graph structure learner.
        gcn: trained GCN (used in eval mode).
        buffer: (N, D) buffer features.
        k: neighbours per node besides self.
        head: optional module applied to the query's z.
    """

    def __init__(self, gsl: GSL, gcn: GCN, buffer: Tensor, k: int, head: nn.Module | None = None) -> None:
        self.gsl, self.gcn, self.buffer, self.k, self.head = gsl, gcn, buffer, k, head

    @torch.no_grad()
    def predict(self, queries: Tensor) -> list[QueryResult]:
        """One :class:`QueryResult` per row of ``queries`` (Q, D), each on its own graph."""
        self.gcn.eval()
        n = self.buffer.shape[0]
        results = []
        for q in queries:
            x = torch.cat([self.buffer, q[None].to(self.buffer)])  # (N+1, D), the query is node N
            e = self.gsl(x)
            k1 = min(self.k, n) + 1
            row = e[n:] @ e.T  # (1, N+1)
            top = select_neighbours(row, torch.tensor([n], device=e.device), k1,
                                    lambda _, cols: canonical_dots(e[n], e[cols]),
                                    tie_tolerance(e.shape[1], e.dtype))[0, 1:]
            adj = gsl_adjacency_dense(e, self.k)  # (N+1, N+1)
            z = self.gcn.forward_dense(x, adj)[n]
            links, weights = _sorted_links(torch.arange(n, device=e.device), adj[n, :n])
            results.append(QueryResult(z, _apply_head(self.head, z), links, weights, adj[n, n],
                                       top, row[0, top]))
        return results


class _Patch:
    """The per-query changes of the buffer graph, and the degrees they change."""

    def __init__(self, n: int, hop1: Tensor, w_q: Tensor, drop_rows: Tensor, drop_cols: Tensor,
                 self_w: Tensor) -> None:
        self.hop1 = hop1  # (M,) sorted buffer rows with a nonzero edge to the query
        self.w_q = w_q  # (M,) unnormalised S'[q, hop1]
        self.drop_fwd = drop_rows * n + drop_cols  # keys (j, m_j): j no longer keeps m_j
        self.drop_bwd = drop_cols * n + drop_rows  # keys (m_j, j): the mirrored half
        self.self_w = self_w  # () unnormalised self loop S'[q, q]
        self.d_q = self_w + w_q.sum()  # () degree of the query
        self.delta = torch.unique(torch.cat([hop1, drop_rows, drop_cols]))  # buffer rows whose row changed
        self.d_delta = torch.zeros(0)  # their new degrees, filled in by ExactEngine._patch


class ExactEngine:
    """Exact per-query inference from buffer precomputations (module docstring: what and why).

    Args:
        gsl: trained graph structure learner (its device and dtype are the engine's).
        gcn: trained GCN (used in eval mode; dropout off).
        buffer: (N, D) buffer features, or a :class:`RowSource` read once in chunks.
        k: neighbours per node besides self.
        head: optional module applied to each query's z.
        buffer_knn: optional precomputed (idx, sim), each (N, min(k, N-1)+1), as returned by
            :func:`msrl_model.nn.graph.knn_lists` on the buffer embeddings (skips the all-pairs pass).
        block_size: rows per block of the all-pairs top-K.
        chunk_rows: buffer rows embedded per chunk.
    """

    def __init__(self, gsl: GSL, gcn: GCN, buffer: Tensor | RowSource, k: int, *,
                 head: nn.Module | None = None, buffer_knn: tuple[Tensor, Tensor] | None = None,
                 block_size: int = 2048, chunk_rows: int = 65536) -> None:
        p = next(gsl.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.gsl, self.gcn, self.head, self.k = gsl, gcn.eval(), head, k
        self.params = [(w.detach(), b.detach()) for w, b in gcn.layer_params()]
        n = buffer.n_rows if isinstance(buffer, RowSource) else buffer.shape[0]
        if n < 1:
            raise ValueError("the buffer must have at least one row")
        dim = buffer.dim if isinstance(buffer, RowSource) else buffer.shape[1]
        self.n = n
        self.tol = tie_tolerance(dim, self.dtype)
        w1 = self.params[0][0]
        with torch.no_grad():
            self.emb = torch.empty(n, dim, dtype=self.dtype, device=self.device)  # E_b (N, D)
            self.p1 = torch.empty(n, w1.shape[1], dtype=self.dtype, device=self.device)  # X_b W_1
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                x = (buffer.rows(start, stop) if isinstance(buffer, RowSource) else buffer[start:stop])
                x = x.to(self.device, self.dtype)
                self.emb[start:stop] = gsl(x)
                self.p1[start:stop] = x @ w1
            k1 = min(k, n - 1) + 1
            if buffer_knn is None:
                idx, sim = knn_lists(self.emb, k, block_size)
            else:
                idx, sim = (t.to(self.device) for t in buffer_knn)
                sim = sim.to(self.dtype)
                if idx.shape != (n, k1) or sim.shape != (n, k1) or not torch.equal(
                        idx[:, 0], torch.arange(n, device=self.device)):
                    raise ValueError(f"buffer_knn must be (idx, sim) of shape ({n}, {k1}) with self first")
            self.knn_idx, self.knn_sim = idx, sim
            self._build_csr(idx, sim)

    def _build_csr(self, idx: Tensor, sim: Tensor) -> None:
        """CSR of S_b = (R + Rᵀ)/2 stored as its two directed halves, and the degrees."""
        n, k1 = idx.shape
        rows = torch.arange(n, device=self.device).repeat_interleave(k1)  # (N·k1,)
        cols = idx.reshape(-1)
        half = F.relu(sim.reshape(-1)) / 2
        zero = torch.zeros_like(half)
        keys, inverse = torch.unique(torch.cat([rows * n + cols, cols * n + rows]), return_inverse=True)
        self.fwd = torch.zeros(keys.shape[0], dtype=self.dtype, device=self.device).index_add_(
            0, inverse, torch.cat([half, zero]))  # R[r, c] / 2: r keeps c
        self.bwd = torch.zeros_like(self.fwd).index_add_(0, inverse, torch.cat([zero, half]))  # R[c, r] / 2
        owner = keys // n
        self.col = keys % n
        self.rowptr = torch.zeros(n + 1, dtype=torch.long, device=self.device)
        self.rowptr[1:] = torch.cumsum(torch.bincount(owner, minlength=n), 0)
        self.deg = torch.zeros(n, dtype=self.dtype, device=self.device).index_add_(0, owner, self.fwd + self.bwd)

    @torch.no_grad()
    def predict(self, queries: Tensor) -> list[QueryResult]:
        """One :class:`QueryResult` per row of ``queries`` (Q, D); each query on [buffer; that query]."""
        x = queries.to(self.device, self.dtype)
        e_q = self.gsl(x)  # (Q, D)
        sims = self.emb @ e_q[0] if x.shape[0] == 1 else self.emb @ e_q.T  # (N,) or (N, Q)
        sims = sims.reshape(self.n, -1)
        p1_q = x @ self.params[0][0]  # (Q, hidden)
        return [self._one(sims[:, i].contiguous(), e_q[i], p1_q[i]) for i in range(x.shape[0])]

    def _enters(self, s: Tensor, e_q: Tensor) -> Tensor:
        """Buffer rows with a full list (K < N) that take the query in: ``s_j > t_j`` strictly.

        The products behind s (E_b e_q) and behind t (block matmul) are different kernels, which
        can differ by an ulp on an exact tie (a query equal to a buffer row). Rows within the tie
        band of their threshold compare :func:`canonical_dots` e_j·e_q and e_j·e_{m_j} instead, as the
        selection rule does, so an exact tie stays a tie and the query (higher index) loses.
        """
        thr = self.knn_sim[:, -1]
        enter = s > thr
        band = torch.nonzero((s - thr).abs() <= self.tol).flatten()
        for j in band.tolist():
            v = canonical_dots(self.emb[j], torch.stack([e_q, self.emb[self.knn_idx[j, -1]]]))
            enter[j] = bool(v[0] > v[1])
        return torch.nonzero(enter).flatten()

    def _one(self, s: Tensor, e_q: Tensor, p1_q: Tensor) -> QueryResult:
        """The query with similarities ``s`` (N,) to the buffer, embedding ``e_q`` and ``p1_q`` = x_q W_1."""
        s_qq = e_q @ e_q
        top = self._query_top(s, s_qq, e_q)
        patch = self._patch(s, e_q, top, F.relu(s_qq))
        z = self._local_gcn(patch, p1_q)
        d_hop1 = self._degrees(patch.hop1, patch)
        links, weights = _sorted_links(patch.hop1, patch.w_q * patch.d_q.rsqrt() * d_hop1.rsqrt())
        self_weight = (patch.self_w / patch.d_q if patch.self_w > 0
                       else torch.zeros((), dtype=self.dtype, device=self.device))
        return QueryResult(z, _apply_head(self.head, z), links, weights, self_weight, top, s[top])

    def _query_top(self, s: Tensor, s_qq: Tensor, e_q: Tensor) -> Tensor:
        """The query's own list without itself: its top-min(K, N) buffer rows, in selection order."""
        n = self.n
        row = torch.cat([s, s_qq[None]])  # the query is node n

        def dots(_: int, cols: Tensor) -> Tensor:
            e_cols = self.emb[cols.clamp(max=n - 1)]
            e_cols[cols == n] = e_q
            return canonical_dots(e_q, e_cols)

        return select_neighbours(row[None], torch.tensor([n], device=self.device), min(self.k, n) + 1, dots,
                                 self.tol)[0, 1:]

    def _patch(self, s: Tensor, e_q: Tensor, top: Tensor, self_w: Tensor) -> _Patch:
        """The query's edges S'[q, ·], the rows that take it in (dropping their last entry when full),
        and the new degrees of every buffer row whose row changed."""
        n, k, dev = self.n, self.k, self.device
        if k == 0:
            enter = torch.zeros(0, dtype=torch.long, device=dev)
        elif k >= n:
            enter = torch.arange(n, device=dev)
        else:
            enter = self._enters(s, e_q)
        if 0 < k < n:
            drop_rows, drop_cols = enter, self.knn_idx[enter, -1]
        else:
            drop_rows = drop_cols = torch.zeros(0, dtype=torch.long, device=dev)
        cand = torch.unique(torch.cat([top, enter]))
        half = F.relu(s[cand]) / 2
        w = half * torch.isin(cand, top) + half * torch.isin(cand, enter)  # S'[q, cand]
        nz = w != 0
        patch = _Patch(n, cand[nz], w[nz], drop_rows, drop_cols, self_w)
        owner, _, w_delta = self._rows(patch.delta, patch)
        patch.d_delta = torch.zeros(patch.delta.shape[0], dtype=self.dtype, device=dev).index_add_(0, owner, w_delta)
        return patch

    def _local_gcn(self, patch: _Patch, p1_q: Tensor) -> Tensor:
        """z = H_L[q]: the GCN over the balls B_0 = {q} ⊂ B_1 ⊂ ... ⊂ B_L of the new graph only."""
        n, dev = self.n, self.device
        n_layers = len(self.params)
        balls = [torch.tensor([n], device=dev)]
        for _ in range(n_layers):
            src, nbr, wt = self._rows_with_query(balls[-1], patch)
            balls.append(torch.unique(torch.cat([balls[-1], nbr])))
        # (src, nbr, wt) are now the rows of B_{L-1}; B_L = balls[-1]
        dinv = self._degrees(balls[-1], patch).rsqrt()  # every node of B_L has a nonzero edge: degree > 0
        wn = wt * dinv[torch.searchsorted(balls[-1], src)] * dinv[torch.searchsorted(balls[-1], nbr)]  # A'[src, nbr]
        # layer l: targets B_{L-l}, inputs on B_{L-l+1}
        h_in_nodes = balls[-1]
        p = self.p1[h_in_nodes.clamp(max=n - 1)]
        p[h_in_nodes == n] = p1_q
        for layer, (weight, bias) in enumerate(self.params):
            if layer > 0:
                p = h @ weight
            targets = balls[n_layers - 1 - layer]
            sel = torch.isin(src, targets)
            out = torch.zeros(targets.shape[0], p.shape[1], dtype=self.dtype, device=dev)
            out.index_add_(0, torch.searchsorted(targets, src[sel]),
                           wn[sel, None] * p[torch.searchsorted(h_in_nodes, nbr[sel])])
            h = out + bias
            if layer < n_layers - 1:
                h = F.relu(h)
            h_in_nodes = targets
        return h[0]

    def _rows(self, nodes: Tensor, patch: _Patch) -> tuple[Tensor, Tensor, Tensor]:
        """Patched rows of sorted buffer ``nodes``: (owner position in nodes, neighbour, S' weight)."""
        starts = self.rowptr[nodes]
        counts = self.rowptr[nodes + 1] - starts
        owner = torch.repeat_interleave(torch.arange(nodes.shape[0], device=self.device), counts)
        first = torch.cumsum(counts, 0) - counts  # offset of each row's first entry in the gather
        pos = starts[owner] + torch.arange(owner.shape[0], device=self.device) - first[owner]
        nbr = self.col[pos]
        fwd, bwd = self.fwd[pos], self.bwd[pos]
        key = nodes[owner] * self.n + nbr
        fwd = torch.where(torch.isin(key, patch.drop_fwd), torch.zeros_like(fwd), fwd)
        bwd = torch.where(torch.isin(key, patch.drop_bwd), torch.zeros_like(bwd), bwd)
        if patch.hop1.numel():
            at = torch.searchsorted(patch.hop1, nodes).clamp(max=patch.hop1.shape[0] - 1)
            linked = patch.hop1[at] == nodes
        else:
            at = torch.zeros_like(nodes)
            linked = torch.zeros_like(nodes, dtype=torch.bool)
        q_owner = torch.nonzero(linked).flatten()
        owner = torch.cat([owner, q_owner])
        nbr = torch.cat([nbr, torch.full_like(q_owner, self.n)])
        w = torch.cat([fwd + bwd, patch.w_q[at[q_owner]]])
        keep = w != 0
        return owner[keep], nbr[keep], w[keep]

    def _rows_with_query(self, nodes: Tensor, patch: _Patch) -> tuple[Tensor, Tensor, Tensor]:
        """Patched rows of sorted global ``nodes`` (the query, index N, last): (node, neighbour, S' weight)."""
        buf = nodes[nodes < self.n]
        owner, nbr, w = self._rows(buf, patch)
        src = buf[owner]
        if nodes[-1] == self.n:  # the query's row: its links and its self loop
            q_nbr = torch.cat([patch.hop1, torch.tensor([self.n], device=self.device)])
            q_w = torch.cat([patch.w_q, patch.self_w[None]])
            keep = q_w != 0
            src = torch.cat([src, torch.full_like(q_nbr[keep], self.n)])
            nbr, w = torch.cat([nbr, q_nbr[keep]]), torch.cat([w, q_w[keep]])
        return src, nbr, w

    def _degrees(self, nodes: Tensor, patch: _Patch) -> Tensor:
        """Degrees in the new graph of global ``nodes``: buffer degrees, patched ones for Δ and q."""
        deg = self.deg[nodes.clamp(max=self.n - 1)].clone()
        delta = patch.delta
        if delta.numel():
            at = torch.searchsorted(delta, nodes).clamp(max=delta.shape[0] - 1)
            hit = (delta[at] == nodes) & (nodes < self.n)
            deg[hit] = patch.d_delta[at[hit]]
        deg[nodes == self.n] = patch.d_q
        return deg
