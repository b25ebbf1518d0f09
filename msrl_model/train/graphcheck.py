r"""Where a trained MSRL network's graph signal goes: diagnostics on held-out cases.

For each held-out query q of a fold (its slide only, as at inference) and the trained network's
buffer of training cases, with :math:`w_{qj}` the query's row of the first GCN layer's normalised
adjacency over [buffer; q] (self loop included) and :math:`a_j` the authentic pathway scores of a
case (mean z-scored expression per gene group, fold scaler):

* ``self_share`` — :math:`w_{qq} / \sum_j w_{qj}`: how much of the first aggregation is the query
  itself. Near 1, the GCN sees little but the query.
* ``linked`` — the number of buffer cases the query is linked to (nonzero :math:`w_{qj}`).
* ``output_change`` — how far the buffer moves the prediction: survival, the mean
  :math:`|r_{full} - r_{none}|` over queries in units of the SD of :math:`r_{full}` (risk with the
  buffer against risk linked to nothing, the ``no_graph`` ablation); classification, the mean total
  variation :math:`\tfrac12 \sum_c |p_{full,c} - p_{none,c}|`.
* ``rank_agreement`` — Spearman correlation of the two (survival risk; class-1 probability).
* ``r2_prompt`` — :math:`R^2` of the query's *true* pathway scores (its held-out expression, never an
  input) by the network's reconstruction without the graph, :math:`\hat a^{none}` (pathway decoder of
  the query linked to nothing: what the slide and the Inductor prompt say).
* ``r2_graph`` — the same for the reconstruction with the buffer, :math:`\hat a^{full}`.
* ``r2_neighbours`` — the same for the neighbours' authentic scores,
  :math:`\bar a^{nb}_q = \sum_{j \ne q} w_{qj} a_j / \sum_{j \ne q} w_{qj}` (what the linked cases say).
* ``neighbour_extra`` — correlation, pooled over queries and pathways, of the prompt's error
  :math:`a_q - \hat a^{none}_q` with :math:`\bar a^{nb}_q - \hat a^{none}_q`: whether the neighbours'
  authentic genomics carry anything about the query that the slide does not already give. Near 0,
  the graph can only re-estimate what the prompt has, and ``no_graph`` matches MSRL.

:math:`R^2 = 1 - \sum (a - \hat a)^2 / \sum (a - \bar a)^2` pooled over queries and pathways
(:math:`\bar a` the queries' mean per pathway); negative when a reconstruction is worse than that mean.

The gradient side (:func:`gradient_shares`), from the fine-tuning history
(:mod:`msrl_model.train.finetune`: ``grad_norm/…`` per epoch): ``grad_share_gsl``,
``grad_share_gcn``, ``grad_share_skip`` — each module's gradient norm over all parameters', the
mean over epochs. A GSL share near 0 means the learned graph barely moves from stage 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from msrl_model.nn.graph import GraphMode
from msrl_model.nn.heads import survival_from_logits
from msrl_model.nn.msrl import MSRLNet
from msrl_model.progress import exhaust
from msrl_model.train.buffer import case_node_features_job
from msrl_model.train.data import Bags
from msrl_model.train.finetune import FinetuneResult
from msrl_model.train.settings import TrainSettings

DIAGNOSTICS = ("self_share", "linked", "output_change", "rank_agreement", "r2_prompt", "r2_graph",
               "r2_neighbours", "neighbour_extra", "grad_share_gsl", "grad_share_gcn", "grad_share_skip")
"""The figures of :func:`graph_diagnostics`, in report order."""


def pooled_r2(truth: np.ndarray, estimate: np.ndarray) -> float:
    """:math:`R^2` of ``estimate`` for ``truth`` (Q, G), pooled over rows and columns around the
    column means of ``truth``; NaN when ``truth`` has no spread."""
    total = float(((truth - truth.mean(0)) ** 2).sum())
    return 1.0 - float(((truth - estimate) ** 2).sum()) / total if total > 0 else math.nan


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else math.nan


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN without spread."""
    from scipy.stats import rankdata

    return _correlation(rankdata(a), rankdata(b))


def _query_row(net: MSRLNet, buffer: Tensor, node: Tensor, graph_mode: GraphMode) -> tuple[Tensor, Tensor]:
    """(columns, weights) of the query's row of the normalised adjacency over [buffer; node]; the
    query is column ``len(buffer)``."""
    edge_index, edge_weight = net.adjacency(torch.cat([buffer, node[None]], dim=0), graph_mode)
    row = edge_index[0] == buffer.shape[0]
    return edge_index[1][row], edge_weight[row]


@torch.no_grad()
def graph_diagnostics(result: FinetuneResult, bags: Bags, cases: Sequence[int], pathways: Tensor, *,
                      chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """The figures of the module docstring for held-out ``cases`` (global indices).

    Args:
        result: a trained MSRL-family network with genomics nodes and its buffer.
        bags: patch bags (full bags are used, as at prediction).
        cases: the held-out cases.
        pathways: (n_cases, n_groups) authentic pathway scores of every case (fold scaler).
        chunk, chunk_patches: slide-encoder batching (:meth:`Bags.chunks`).
        device: torch device.
    """
    net = result.online.eval()
    if net.pathway_decoder is None:
        raise ValueError("graph diagnostics need a network with a pathway decoder (gene groups)")
    device = torch.device(device)
    cases = np.asarray(cases, dtype=np.int64)
    nodes = exhaust(case_node_features_job(net, bags, cases, None, max_patches=0, chunk=chunk,
                                           chunk_patches=chunk_patches, device=device))  # (Q, node_dim)
    buffer = result.buffer.to(device)  # (M, node_dim)
    buffer_pathways = pathways[torch.as_tensor(result.buffer_cases)].to(device)  # (M, G)
    mode = result.graph_mode
    z_full = torch.cat([net.graph_forward(n[None], buffer, mode)[0] for n in nodes])  # (Q, gcn_out)
    z_none = torch.cat([net.graph_forward(n[None], buffer[:0], mode)[0] for n in nodes])  # linked to nothing
    self_share, linked, neighbour = [], [], []
    for n in nodes:
        cols, w = _query_row(net, buffer, n, mode)
        own = cols == buffer.shape[0]
        self_share.append(float(w[own].sum() / w.sum()))
        linked.append(int((~own).sum()))
        w_nb = w[~own]
        neighbour.append((w_nb[:, None] * buffer_pathways[cols[~own]]).sum(0) / w_nb.sum()
                         if len(w_nb) else torch.full_like(buffer_pathways[0], math.nan))  # (G,)
    truth = pathways[torch.as_tensor(cases)].cpu().numpy().astype(np.float64)  # (Q, G)
    rec_full = net.pathways(z_full, nodes).cpu().numpy().astype(np.float64)
    rec_none = net.pathways(z_none, nodes).cpu().numpy().astype(np.float64)
    nb = torch.stack(neighbour).cpu().numpy().astype(np.float64)
    out_full, out_none = net.readout(z_full, nodes), net.readout(z_none, nodes)
    if net.task.kind == "survival":
        r_full = survival_from_logits(out_full.cpu()).risk.numpy()
        r_none = survival_from_logits(out_none.cpu()).risk.numpy()
        spread = float(r_full.std())
        change = float(np.abs(r_full - r_none).mean() / spread) if spread > 0 else math.nan
        rank = _spearman(r_full, r_none)
    else:
        p_full = torch.softmax(out_full, -1).cpu().numpy()
        p_none = torch.softmax(out_none, -1).cpu().numpy()
        change = float(0.5 * np.abs(p_full - p_none).sum(1).mean())
        rank = _spearman(p_full[:, -1], p_none[:, -1])
    finite = np.isfinite(nb).all(1)
    return {
        "self_share": float(np.mean(self_share)),
        "linked": float(np.mean(linked)),
        "output_change": change,
        "rank_agreement": rank,
        "r2_prompt": pooled_r2(truth, rec_none),
        "r2_graph": pooled_r2(truth, rec_full),
        "r2_neighbours": pooled_r2(truth[finite], nb[finite]) if finite.any() else math.nan,
        "neighbour_extra": _correlation(truth[finite] - rec_none[finite], nb[finite] - rec_none[finite])
        if finite.any() else math.nan,
    }


def gradient_shares(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """``grad_share_<module>`` = mean over epochs of ``grad_norm/<module>`` / ``grad_norm/all``
    for the GSL, the GCN and the readout skip (NaN where the history has no such module)."""
    out = {}
    for module in ("gsl", "gcn", "skip"):
        shares = [h[f"grad_norm/{module}"] / h["grad_norm/all"] for h in history
                  if f"grad_norm/{module}" in h and h.get("grad_norm/all", 0) > 0]
        out[f"grad_share_{module}"] = float(np.mean(shares)) if shares else math.nan
    return out


__all__ = ["DIAGNOSTICS", "gradient_shares", "graph_diagnostics", "pooled_r2"]
