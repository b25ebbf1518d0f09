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
GSL embeddings E_b (N × D; with the int8 screen only its codes, E_b rows being re-embedded from the
buffer when a query needs them exactly), every row's ordered neighbour list and similarities, the
symmetrised unnormalised buffer graph as CSR with its two directed halves, degrees, and P_1.

**Screening** (:mod:`msrl_model.infer.screen`, where the bound is derived). One pass over a compact copy
of E_b (int8 codes with per-row scales) gives each row j an interval :math:`\ell_j \le \hat s_j \le u_j`
around its exact similarity. With τ the K'-th largest :math:`\ell_j`, a row can be in the query's top-K'
(or its tie band) only if :math:`u_j \ge \tau - tol`, and take the query in only if
:math:`u_j \ge t_j - tol`; only those decisive rows get exact similarities, so lists, weights and z are
the fp32 engine's over all N rows, bit for bit (tested with ``torch.equal`` on ties, near-ties, duplicated
rows, rows sharing their codes, queries equal to a buffer row, and removals).

**Cost per query** (N buffer rows, D dims, K neighbours, h hidden width, L = 3): the screen reads N·D
bytes of int8 codes (4·N·D with the fp32 screen: N = 10^6, D = 1536: 1.5 GB, or 6.1 GB — the
bottleneck), then five float64 passes over N values for the bounds, one top-K' of the lower bounds and
one comparison; the local GCN touches |B_2| ≲ (2K+2)^2 rows of ≲ 2K+2 edges, i.e. ≲ 2·(2K+2)^3·h
≈ 2·10^7 flops at K = 12, h = 256: negligible. The dense reference costs 2·N²·D for S plus
2·L·N²·h for the GCN (1.5·10^12 + 0.7·10^12 at N = 21,700) and N² memory. Measured (``bench infer``,
N = 10^6, D = 1,536, K = 12, one thread, shared 2-core machine): 151 ms per query, 141 of it the screen
(oneDNN's s8 GEMM, ≈ 11 GB/s; ≈ 80 ms on two quiet threads), 185 ms beside one busy process.

**Influence: the query with one buffer row removed** (:meth:`ExactEngine.explain`): the graph over
[buffer \ {r}; query] built from scratch by the same rule, computed as a patch of the stored buffer graph;
the rules are in :mod:`msrl_model.infer.graph_patch`, beside :class:`Removal`.

**The query alone** ("linked only to itself"): the graph of the single node q, S = ReLU(e_q·e_q),
A = 1 (0 for a zero embedding), so z = GCN on one node: H_l = ReLU(A H_{l-1} W_l + b_l).

**Cost of** :meth:`explain` (R rows removed, by default the M linked ones, M ≲ 2K + 1): the E_b e_q
pass is shared with the prediction (once, 4·N·D bytes); each removed row is one more local query —
its own local GCN over its 3-hop ball (≈ |B_2|·h² + |edges of B_2|·h multiply-adds, ~10^8 flops at
K = 12, h = 256) and O(N) vector work (the similarity copy with s_r = -inf, the threshold test, the
query's top-K: ≈ 16·N bytes, no N·D pass) — plus O(K·(rows that kept r)) for the list repairs; the
query alone is L matrix-vector products. Measured on one CPU thread (N = 20,000, D = 256, K = 12,
h = 256): predict 18 ms, explain 256 ms for 12–19 linked rows, i.e. ≈ 14 ms per removed row, nearly
all of it the local GCN. At N = 10^6, D = 1536 the O(N) part of R = 24 removals reads ≈ 0.4 GB next
to the 6.1 GB of the shared E_b e_q pass.

**Precompute** is one blockwise all-pairs top-K (2·N²·D flops) unless the caller supplies the
buffer's neighbour lists (``buffer_knn``, e.g. stored at training time), plus 2·N·D·h for P_1; the same
pass also keeps each row's next neighbour (the (K+1)-th other, for removals) by a second selection over
each similarity block (measured +75 % over the lists alone at N = 10,000, D = 256 on one thread, where
the selection dominates; less at larger D, where the block product does).
Memory: E_b (4·N·D bytes; int8 screen: N·D bytes of codes + 24·N of per-row bound constants, E_b not
kept when ``buffer_knn`` is given) + P_1 (4·N·h) + CSR (≤ 2·N·(K+1) edges × 12 bytes); the buffer
features themselves are read in row chunks (pass a :class:`RowSource` to avoid holding them at all).
Given lists, the CSR is built first, so its sort (≈ 40 bytes per list entry, transient) never adds to
the codes and P_1. Measured at N = 10^6 (D = 1,536, h = 256, lists given, one thread): 31 s, peak RSS
3.3 GB.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrl_model.infer.dense_reference import DenseReference  # noqa: F401 - the reference, importable from here too
from msrl_model.infer.graph_patch import GraphPatch, Removal
from msrl_model.infer.query import Explanation, QueryResult, apply_head, sorted_links
from msrl_model.infer.screen import SCREENS, ScreenRows
from msrl_model.nn.graph import GCN, GSL, canonical_dots, select_neighbours, tie_tolerance


@runtime_checkable
class RowSource(Protocol):
    """Buffer features produced on demand in row ranges (so the N × D matrix is never held)."""

    n_rows: int  # N
    dim: int  # D

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows start..stop-1 as a (stop - start, D) tensor."""
        ...


class ExactEngine:
    """Exact per-query inference from buffer precomputations (module docstring: what and why).

    Args:
        gsl: trained graph structure learner (its device and dtype are the engine's).
        gcn: trained GCN (used in eval mode; dropout off).
        buffer: (N, D) buffer features, or a :class:`RowSource` read once in chunks.
        k: neighbours per node besides self.
        head: optional module applied to each query's z.
        buffer_knn: optional precomputed (idx, sim), each (N, K'+1) with K' = min(k, N-1), as returned
            by :func:`msrl_model.nn.graph.knn_lists` on the buffer embeddings (skips the all-pairs
            pass); or (N, K'+2) with each row's next neighbour as the last column (what
            :meth:`explain` needs when K < N - 1).
        block_size: rows per block of the all-pairs top-K.
        chunk_rows: buffer rows embedded per chunk.
    """

    def __init__(self, gsl: GSL, gcn: GCN, buffer: Tensor | RowSource, k: int, *,
                 head: nn.Module | None = None, buffer_knn: tuple[Tensor, Tensor] | None = None,
                 block_size: int = 2048, chunk_rows: int = 8192, screen: str = "fp32") -> None:
        if screen not in SCREENS:
            raise ValueError(f"screen must be one of {SCREENS}, got {screen!r}")
        p = next(gsl.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.gsl, self.gcn, self.head, self.k = gsl, gcn.eval(), head, k
        self.params = [(w.detach(), b.detach()) for w, b in gcn.layer_params()]
        n = buffer.n_rows if isinstance(buffer, RowSource) else buffer.shape[0]
        if n < 1:
            raise ValueError("the buffer must have at least one row")
        dim = buffer.dim if isinstance(buffer, RowSource) else buffer.shape[1]
        self.n, self.dim, self.screen = n, dim, screen
        # int8: exact rows are re-embedded from the buffer on demand (E_b is not held)
        self.buffer: Tensor | RowSource | None = None if screen == "fp32" else buffer
        self.tol = tie_tolerance(dim, self.dtype)
        w1 = self.params[0][0]
        k1 = min(k, n - 1) + 1
        keep_fp32 = screen == "fp32" or buffer_knn is None  # the all-pairs pass needs E_b in full
        with torch.no_grad():
            if buffer_knn is not None:  # the graph first: its transient peak then never adds to codes and P_1
                idx, sim = (t.to(self.device) for t in buffer_knn)
                if idx.shape != sim.shape or idx.shape[0] != n or idx.shape[1] not in (k1, k1 + 1 if k1 < n else k1) \
                        or not torch.equal(idx[:, 0], torch.arange(n, device=self.device)):
                    raise ValueError(f"buffer_knn must be (idx, sim) of shape ({n}, {k1}) with self first"
                                     + (f", or ({n}, {k1 + 1}) with the next neighbour last" if k1 < n else ""))
                self._keep_lists(idx, sim.to(self.dtype), k1)
                del idx, sim
            self.emb: Tensor | None = (torch.empty(n, dim, dtype=self.dtype, device=self.device)
                                       if keep_fp32 else None)  # E_b (N, D)
            self.p1 = torch.empty(n, w1.shape[1], dtype=self.dtype, device=self.device)  # X_b W_1
            self.screen_rows: ScreenRows = ScreenRows(n, dim, screen, self.dtype, self.device)
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                x = (buffer.rows(start, stop) if isinstance(buffer, RowSource) else buffer[start:stop])
                x = x.to(self.device, self.dtype)
                e = gsl(x)
                if self.emb is not None:
                    self.emb[start:stop] = e
                self.screen_rows.store(start, e)
                torch.matmul(x, w1, out=self.p1[start:stop])
                del x, e
            if buffer_knn is None:
                self._keep_lists(*self._lists(k1 + 1 if k1 < n else k1, block_size), k1)
                if screen != "fp32":
                    self.emb = None  # rows are re-embedded from the buffer when a query needs them exactly
            # the K-th similarity of each row, less the tie band: the bound the "enters" screen compares with
            self._thr_band = self.knn_sim[:, -1].to(torch.float64) - self.tol

    def _keep_lists(self, idx: Tensor, sim: Tensor, k1: int) -> None:
        """Keep the buffer's lists (N, K'+1) (+ the next neighbour as a last column, when given) and their graph."""
        self.knn_idx, self.knn_sim = idx[:, :k1].contiguous(), sim[:, :k1].contiguous()
        # each row's next neighbour n_j and s(j, n_j): None when the lists hold every row (K >= N - 1)
        # or the caller's lists do not carry it
        self.next_idx, self.next_sim = (idx[:, k1].clone(), sim[:, k1].clone()) if idx.shape[1] > k1 else (None, None)
        self._build_csr(self.knn_idx, self.knn_sim)

    def _lists(self, width: int, block_size: int) -> tuple[Tensor, Tensor]:
        """(idx, sim), each (N, width): the first K'+1 columns are every row's list under the selection
        rule (:func:`~msrl_model.nn.graph.knn_lists`), a (K'+2)-th column its next neighbour.

        One blockwise pass: the K'+1 list is selected with its own tie band, exactly as ``knn_lists``
        does, and the next neighbour is the first entry of the K'+2 selection of the same block that
        the K'+1 list does not hold."""
        n, k1 = self.n, min(self.k, self.n - 1) + 1
        idx = torch.empty(n, width, dtype=torch.long, device=self.device)
        sim = torch.empty(n, width, dtype=self.dtype, device=self.device)
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            s = self.emb[start:stop] @ self.emb.T  # (B, N)
            rows = torch.arange(start, stop, device=self.device)

            def dots(b: int, cols: Tensor) -> Tensor:
                return canonical_dots(self.emb[start + b], self.emb[cols])

            sel = select_neighbours(s, rows, k1, dots, self.tol)
            if width > k1:
                wider = select_neighbours(s, rows, width, dots, self.tol)
                new = ~(wider[:, :, None] == sel[:, None, :]).any(-1)  # (B, k1+1): not in the list
                sel = torch.cat([sel, torch.gather(wider, 1, new.to(torch.int8).argmax(1, keepdim=True))], 1)
            idx[start:stop] = sel
            sim[start:stop] = torch.gather(s, 1, sel)
        return idx, sim

    def _build_csr(self, idx: Tensor, sim: Tensor) -> None:
        """CSR of S_b = (R + Rᵀ)/2 stored as its two directed halves, and the degrees.

        Columns are int32 (N < 2^31); the build's transient memory is ≈ 40 bytes per list entry (N·(K'+1)),
        one sort of the 2·N·(K'+1) entry keys."""
        n, k1 = idx.shape
        cols = idx.reshape(-1)
        keys = torch.arange(n, device=self.device).repeat_interleave(k1) * n  # (N·k1,) r·N
        keys = torch.cat([keys + cols, cols * n + keys // n])  # (r, c) for r's list, then the mirrored (c, r)
        keys, order = torch.sort(keys)
        first = torch.ones_like(keys, dtype=torch.bool)
        first[1:] = keys[1:] != keys[:-1]
        slot = torch.cumsum(first, 0) - 1  # each entry's position among the distinct keys
        keys = keys[first]
        del first
        half = F.relu(sim.reshape(-1)) / 2
        mirrored = order >= cols.shape[0]
        self.fwd = torch.zeros(keys.shape[0], dtype=self.dtype, device=self.device).index_add_(
            0, slot[~mirrored], half[order[~mirrored]])  # R[r, c] / 2: r keeps c
        self.bwd = torch.zeros_like(self.fwd).index_add_(
            0, slot[mirrored], half[order[mirrored] - cols.shape[0]])  # R[c, r] / 2
        del order, slot, mirrored
        owner = keys // n
        self.col = (keys - owner * n).to(torch.int32)
        self.rowptr = torch.zeros(n + 1, dtype=torch.long, device=self.device)
        self.rowptr[1:] = torch.cumsum(torch.bincount(owner, minlength=n), 0)
        self.deg = torch.zeros(n, dtype=self.dtype, device=self.device).index_add_(0, owner, self.fwd + self.bwd)

    @torch.no_grad()
    def predict(self, queries: Tensor) -> list[QueryResult]:
        """One :class:`QueryResult` per row of ``queries`` (Q, D); each query on [buffer; that query]."""
        x = queries.to(self.device, self.dtype)
        e_q = self.gsl(x)  # (Q, D)
        low, high = self.screen_rows.bounds(e_q, self.emb)  # (Q, N) each: one pass over the buffer
        p1_q = x @ self.params[0][0]  # (Q, hidden)
        return [self._one(low[i], high[i], e_q[i], p1_q[i]) for i in range(x.shape[0])]

    @torch.no_grad()
    def explain(self, query: Tensor, rows: Tensor | None = None) -> Explanation:
        r"""The query (D,) on [buffer; query], alone, and on [buffer \ {r}; query] for each r in ``rows``
        (default: its linked rows, by weight) — exact, by the local recomputation of the module
        docstring; cost there (one E_b e_q pass in all, then one local query per removed row).

        ValueError when the buffer lists lack the next neighbours a removal needs (``buffer_knn``
        given with K'+1 columns and K < N - 1)."""
        x = query.reshape(1, -1).to(self.device, self.dtype)
        e_q = self.gsl(x)[0]  # (D,)
        low, high = (b[0] for b in self.screen_rows.bounds(e_q[None], self.emb))  # (N,) bounds on similarities
        p1_q = x[0] @ self.params[0][0]  # (hidden,)
        full = self._one(low, high, e_q, p1_q)
        rows = full.linked if rows is None else rows.to(self.device, torch.long).reshape(-1)
        if rows.numel() and 0 < self.k < self.n - 1 and self.next_idx is None:
            raise ValueError("removing a buffer row needs each row's next neighbour: pass buffer_knn with "
                             f"{min(self.k, self.n - 1) + 2} columns (or let the engine compute the lists)")
        without = []
        for r in rows.tolist():
            low_r, high_r = low.clone(), high.clone()
            low_r[r] = high_r[r] = -math.inf  # r is no candidate of the query's list and takes nobody in
            without.append(self._one(low_r, high_r, e_q, p1_q, self._removal(r)))
        return Explanation(full, self._alone(e_q, p1_q), rows, without)

    def _removal(self, r: int) -> Removal:
        """The buffer graph without row ``r`` (:mod:`~msrl_model.infer.graph_patch`), relative to the stored one."""
        near = self.col[self.rowptr[r]:self.rowptr[r + 1]].long()  # every row sharing an entry with r
        near = near[near != r]
        holders = near[(self.knn_idx[near, 1:] == r).any(1)]  # the rows whose list holds r, ascending
        own = self.knn_idx[r]  # r's list, itself first
        drop_rows = torch.cat([holders, torch.full_like(own, r)])
        drop_cols = torch.cat([torch.full_like(holders, r), own])
        thr, last = self.knn_sim[:, -1], self.knn_idx[:, -1]
        if 0 < self.k < self.n - 1:  # full lists: the holders' new K-th neighbours are their next ones
            thr, last = thr.clone(), last.clone()
            thr[holders], last[holders] = self.next_sim[holders], self.next_idx[holders]
        return Removal(r, holders, drop_rows, drop_cols, thr, last)

    def _alone(self, e_q: Tensor, p1_q: Tensor) -> QueryResult:
        """The query on the one-node graph [query]: A = 1 when e_q·e_q > 0 (else 0), z = the GCN on it."""
        a = (e_q @ e_q > 0).to(self.dtype)  # () S/S on one node; D^-1/2 = 0 for a zero embedding
        h = p1_q
        for layer, (weight, bias) in enumerate(self.params):
            if layer > 0:
                h = h @ weight
            h = a * h + bias
            if layer < len(self.params) - 1:
                h = F.relu(h)
        none = torch.zeros(0, dtype=torch.long, device=self.device)
        return QueryResult(h, apply_head(self.head, h), none, torch.zeros(0, dtype=self.dtype, device=self.device),
                           a, none, torch.zeros(0, dtype=self.dtype, device=self.device))

    def _embeddings(self, rows: Tensor) -> Tensor:
        """E_b at sorted buffer ``rows`` (M,) in the working dtype: stored (fp32 screen) or re-embedded from
        the buffer (int8 screen; GSL is row-wise, so a row's embedding does not depend on its batch)."""
        if self.emb is not None:
            return self.emb[rows]
        if isinstance(self.buffer, Tensor):
            x = self.buffer[rows.to(self.buffer.device)]
        elif hasattr(self.buffer, "take"):
            x = self.buffer.take(rows)
        else:
            x = torch.cat([self.buffer.rows(j, j + 1) for j in rows.tolist()]) if rows.numel() \
                else torch.zeros(0, self.dim)
        return self.gsl(x.to(self.device, self.dtype))

    def _enters(self, cand: Tensor, s_c: Tensor, e_c: Tensor, e_q: Tensor, thr: Tensor, last: Tensor) -> Tensor:
        """The rows of ``cand`` (with exact similarities ``s_c`` and embeddings ``e_c``; every other row is
        proven not to enter) with a full list (K < N) that take the query in: ``s_j > t_j`` strictly, t_j =
        ``thr`` the similarity of their K-th other neighbour m_j = ``last``.

        The products behind s (canonical dots) and behind t (block matmul) are different kernels, which
        can differ by an ulp on an exact tie (a query equal to a buffer row). Rows within the tie
        band of their threshold compare :func:`canonical_dots` e_j·e_q and e_j·e_{m_j} instead, as the
        selection rule does, so an exact tie stays a tie and the query (higher index) loses.
        """
        thr_c = thr[cand]
        enter = s_c > thr_c
        band = torch.nonzero((s_c - thr_c).abs() <= self.tol).flatten()
        if band.numel():
            e_last = self._embeddings(last[cand[band]])
            for i, b in enumerate(band.tolist()):
                v = canonical_dots(e_c[b], torch.stack([e_q, e_last[i]]))
                enter[b] = bool(v[0] > v[1])
        return cand[enter]

    def _one(self, low: Tensor, high: Tensor, e_q: Tensor, p1_q: Tensor,
             removal: Removal | None = None) -> QueryResult:
        r"""The query with exact similarities within the bounds ``low`` ≤ ŝ ≤ ``high`` (N,) float64 (both -inf at a
        removed row), embedding ``e_q`` and ``p1_q`` = x_q W_1, on the buffer graph without ``removal``'s row
        when given.

        Decisive rows (module docstring, "Screening"): when K < rows left, those that may be in the query's
        top-K' or its tie band, :math:`u_j \ge \tau - tol` with τ the K'-th largest lower bound :math:`\ell_j`,
        and those that may enter, :math:`u_j \ge t_j - tol`; else every row left. Only they get exact
        similarities, in one gather of C rows."""
        n, k = self.n, self.k
        rows_left = n - (removal is not None)
        k_top = min(k, rows_left)
        if removal is None:
            thr, last, band = self.knn_sim[:, -1], self.knn_idx[:, -1], self._thr_band
        else:
            thr, last, band = removal.thr, removal.last, removal.thr.to(torch.float64) - self.tol
        if k >= rows_left:  # every list holds every row: every row left is decisive
            cand = torch.nonzero(torch.isfinite(low)).flatten()
        elif k == 0:
            cand = torch.zeros(0, dtype=torch.long, device=self.device)
        else:
            tau = float(torch.topk(low, k_top).values[-1]) - self.tol
            cand = torch.nonzero(high >= band.clamp(max=tau)).flatten()  # u_j >= min(τ, t_j) - tol
        e_c = self._embeddings(cand)  # (C, D)
        s_c = canonical_dots(e_q, e_c)  # (C,) the exact similarities
        s_qq = e_q @ e_q
        top = self._query_top(cand, s_c, e_c, s_qq, e_q, k_top)
        if k == 0 or rows_left == 0:
            enter = cand[:0]
        elif k >= rows_left:  # each row left takes the query without dropping anything
            enter = cand
        else:
            enter = self._enters(cand, s_c, e_c, e_q, thr, last)
        patch = self._patch(cand, s_c, top, enter, F.relu(s_qq), removal)
        z = self._local_gcn(patch, p1_q)
        d_hop1 = self._degrees(patch.hop1, patch)
        links, weights = sorted_links(patch.hop1, patch.w_q * patch.d_q.rsqrt() * d_hop1.rsqrt())
        self_weight = (patch.self_w / patch.d_q if patch.self_w > 0
                       else torch.zeros((), dtype=self.dtype, device=self.device))
        return QueryResult(z, apply_head(self.head, z), links, weights, self_weight, top,
                           s_c[torch.searchsorted(cand, top)])

    def _query_top(self, cand: Tensor, s_c: Tensor, e_c: Tensor, s_qq: Tensor, e_q: Tensor, k_top: int) -> Tensor:
        """The query's own list without itself: its top-``k_top`` buffer rows, in selection order, selected
        among the sorted decisive rows ``cand`` (their order, hence every tie-break, is the buffer's)."""
        row = torch.cat([s_c, s_qq[None]])  # the query, node N, last
        nodes = torch.cat([cand, torch.tensor([self.n], device=self.device)])
        e_all = torch.cat([e_c, e_q[None]])

        def dots(_: int, cols: Tensor) -> Tensor:
            return canonical_dots(e_q, e_all[cols])

        return nodes[select_neighbours(row[None], torch.tensor([cand.shape[0]], device=self.device), k_top + 1, dots,
                                       self.tol)[0, 1:]]

    def _patch(self, cand: Tensor, s_c: Tensor, top: Tensor, enter: Tensor, self_w: Tensor,
               removal: Removal | None) -> GraphPatch:
        """The query's edges S'[q, ·] from the exact similarities ``s_c`` of the sorted decisive rows ``cand``,
        at ``top`` and ``enter`` (the rows that take it in, dropping their K-th entry when full), the removal's
        dropped and added entries, and the new degrees of every buffer row whose row changed."""
        n, k, dev = self.n, self.k, self.device
        rows_left = n - (removal is not None)
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        drop_rows = drop_cols = add_rows = add_cols = empty
        add_half = torch.zeros(0, dtype=self.dtype, device=dev)
        if 0 < k < rows_left and removal is None:
            drop_rows, drop_cols = enter, self.knn_idx[enter, -1]
        elif 0 < k < rows_left:
            # a holder of r that takes the query in drops its next neighbour n_j: it is never added
            drop_rows = enter[~torch.isin(enter, removal.holders)]
            drop_cols = self.knn_idx[drop_rows, -1]
            add_rows = removal.holders[~torch.isin(removal.holders, enter)]
            add_cols, add_half = self.next_idx[add_rows], F.relu(self.next_sim[add_rows]) / 2
        if removal is not None:
            drop_rows = torch.cat([drop_rows, removal.drop_rows])
            drop_cols = torch.cat([drop_cols, removal.drop_cols])
        linked = torch.unique(torch.cat([top, enter]))
        half = F.relu(s_c[torch.searchsorted(cand, linked)]) / 2
        w = half * torch.isin(linked, top) + half * torch.isin(linked, enter)  # S'[q, linked]
        nz = w != 0
        patch = GraphPatch(n, linked[nz], w[nz], drop_rows, drop_cols, add_rows, add_cols, add_half, self_w)
        owner, _, w_delta = self._rows(patch.delta, patch)
        patch.d_delta = torch.zeros(patch.delta.shape[0], dtype=self.dtype, device=dev).index_add_(0, owner, w_delta)
        return patch

    def _local_gcn(self, patch: GraphPatch, p1_q: Tensor) -> Tensor:
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

    def _rows(self, nodes: Tensor, patch: GraphPatch) -> tuple[Tensor, Tensor, Tensor]:
        """Patched rows of sorted buffer ``nodes``: (owner position in nodes, neighbour, S' weight)."""
        starts = self.rowptr[nodes]
        counts = self.rowptr[nodes + 1] - starts
        owner = torch.repeat_interleave(torch.arange(nodes.shape[0], device=self.device), counts)
        first = torch.cumsum(counts, 0) - counts  # offset of each row's first entry in the gather
        pos = starts[owner] + torch.arange(owner.shape[0], device=self.device) - first[owner]
        nbr = self.col[pos].long()
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
        added = torch.isin(patch.add_src, nodes)  # added entries: extra (owner, neighbour) pairs, summed downstream
        owner = torch.cat([owner, q_owner, torch.searchsorted(nodes, patch.add_src[added])])
        nbr = torch.cat([nbr, torch.full_like(q_owner, self.n), patch.add_nbr[added]])
        w = torch.cat([fwd + bwd, patch.w_q[at[q_owner]], patch.add_w[added]])
        keep = w != 0
        return owner[keep], nbr[keep], w[keep]

    def _rows_with_query(self, nodes: Tensor, patch: GraphPatch) -> tuple[Tensor, Tensor, Tensor]:
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

    def _degrees(self, nodes: Tensor, patch: GraphPatch) -> Tensor:
        """Degrees in the new graph of global ``nodes``: buffer degrees, patched ones for Δ and q."""
        deg = self.deg[nodes.clamp(max=self.n - 1)].clone()
        delta = patch.delta
        if delta.numel():
            at = torch.searchsorted(delta, nodes).clamp(max=delta.shape[0] - 1)
            hit = (delta[at] == nodes) & (nodes < self.n)
            deg[hit] = patch.d_delta[at[hit]]
        deg[nodes == self.n] = patch.d_q
        return deg
