"""What an inference engine returns for a query: :class:`QueryResult` and, for per-row influence,
:class:`Explanation`; shared by the exact engine and the dense reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


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


@dataclass
class Explanation:
    """One query on the buffer, on nothing, and with each of some buffer rows removed in turn."""

    full: QueryResult  # on [buffer; query]
    alone: QueryResult  # on [query]: the query linked only to itself
    removed: Tensor  # (R,) int64 buffer rows removed one at a time (by default full.linked, in its order)
    without: list[QueryResult]  # without[i]: on [buffer \ {removed[i]}; query]; rows keep their buffer numbers


def sorted_links(rows: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Nonzero links sorted by weight descending, ties by lower row index."""
    keep = weights != 0
    rows, weights = rows[keep], weights[keep]
    order = torch.argsort(rows)
    rows, weights = rows[order], weights[order]
    order = torch.sort(weights, descending=True, stable=True).indices
    return rows[order], weights[order]


def apply_head(head: nn.Module | None, z: Tensor) -> Any:
    """head(z) for a batch of one, or None without a head."""
    return None if head is None else head(z.unsqueeze(0))


__all__ = ["Explanation", "QueryResult", "apply_head", "sorted_links"]
