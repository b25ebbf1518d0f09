"""The paper's inference, densely: the reference the exact engine (:mod:`msrl_model.infer.engine`) must
equal, kept for tests and benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msrl_model.infer.query import QueryResult, apply_head, sorted_links
from msrl_model.nn.graph import GCN, GSL, canonical_dots, gsl_adjacency_dense, select_neighbours, tie_tolerance


class DenseReference:
    """The paper's inference: for each query, GSL + dense post-processing + dense GCN over all N+1 nodes.

    Args:
        gsl: trained graph structure learner.
        gcn: trained GCN (used in eval mode).
        buffer: (N, D) buffer features (N = 0: the query alone).
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
            links, weights = sorted_links(torch.arange(n, device=e.device), adj[n, :n])
            results.append(QueryResult(z, apply_head(self.head, z), links, weights, adj[n, n],
                                       top, row[0, top]))
        return results


__all__ = ["DenseReference"]
