r"""The per-query changes of the exact engine's buffer graph (:mod:`msrl_model.infer.engine`): the entries a
query adds and drops, and the buffer graph without one row (for influence).

**Influence: the query with one buffer row removed**
(:meth:`~msrl_model.infer.engine.ExactEngine.explain`). "Case r absent from the buffer" means the graph
over [buffer \ {r}; query] built from scratch by the same rule (the buffer has N - 1 rows; relative
order, hence every tie-break, is unchanged, so rows keep their numbering and r is simply absent).
Relative to the stored buffer graph:

* r's own list goes: the entries R[r, c] for c in r's list (its self loop included) are dropped;
* a row j that kept r (r in its list; found among r's CSR neighbours) loses R[j, r]; when its list was
  full (K < N - 1) it takes in its next neighbour n_j, the first row after its K-th in the selection
  order (stored at precompute: one more column of the same top-K pass), so R[j, n_j] = s(j, n_j) is
  added and its new K-th neighbour and threshold are (n_j, s(j, n_j)); otherwise (K >= N - 1) it keeps
  everyone left and nothing is added;
* the query then joins that graph by the engine's rules (its module docstring) with N - 1 rows and r
  excluded (s_r = -inf): its top-K' among the rows left (K' = min(K, N - 1)); a full row j (K < N - 1)
  takes it iff s_j > t'_j and drops its new K-th m'_j — for a row that kept r that is n_j, i.e. the
  added entry is not added; when K >= N - 1 every row left takes the query in without dropping anything;
* changed degrees: Δ plus r's list and the rows that kept r and their n_j.

The local GCN is the same computation over the patched rows (added entries are extra CSR entries;
r has no edge left, so no ball reaches it). Rows not linked to the query can move it too (through 2-
and 3-hop paths, or by shifting the query's top-K when it kept them at weight 0);
:meth:`~msrl_model.infer.engine.ExactEngine.explain` removes the rows asked for, by default the linked ones.
"""

from __future__ import annotations

import torch
from torch import Tensor


class GraphPatch:
    """The per-query changes of the buffer graph, and the degrees they change.

    Directed entries R[j, c] are dropped (``drop_rows`` j, ``drop_cols`` c) or added (``add_rows``,
    ``add_cols``, halves ``add_half`` = ReLU(R[j, c]) / 2); the symmetrised S' gets the half of each on
    (j, c) and on (c, j)."""

    def __init__(self, n: int, hop1: Tensor, w_q: Tensor, drop_rows: Tensor, drop_cols: Tensor, add_rows: Tensor,
                 add_cols: Tensor, add_half: Tensor, self_w: Tensor) -> None:
        self.hop1 = hop1  # (M,) sorted buffer rows with a nonzero edge to the query
        self.w_q = w_q  # (M,) unnormalised S'[q, hop1]
        self.drop_fwd = drop_rows * n + drop_cols  # keys (j, c): j no longer keeps c
        self.drop_bwd = drop_cols * n + drop_rows  # keys (c, j): the mirrored half
        self.add_src = torch.cat([add_rows, add_cols])  # added halves as (owner, neighbour, weight)
        self.add_nbr = torch.cat([add_cols, add_rows])
        self.add_w = torch.cat([add_half, add_half])
        self.self_w = self_w  # () unnormalised self loop S'[q, q]
        self.d_q = self_w + w_q.sum()  # () degree of the query
        self.delta = torch.unique(torch.cat([hop1, drop_rows, drop_cols, add_rows, add_cols]))  # rows whose row changed
        self.d_delta = torch.zeros(0)  # their new degrees, filled in by ExactEngine._patch


class Removal:
    """The buffer graph without row ``r`` (the module docstring's "Influence"): its dropped entries, the rows
    that kept r with their next neighbours, and the thresholds and K-th neighbours the query is tested against."""

    def __init__(self, r: int, holders: Tensor, drop_rows: Tensor, drop_cols: Tensor, thr: Tensor,
                 last: Tensor) -> None:
        self.r = r
        self.holders = holders  # (H,) sorted rows j != r whose list holds r
        self.drop_rows, self.drop_cols = drop_rows, drop_cols  # R[j, r] for the holders, R[r, c] for r's list
        self.thr, self.last = thr, last  # (N,) t'_j and m'_j of the graph without r (used when K < N - 1)


__all__ = ["GraphPatch", "Removal"]
