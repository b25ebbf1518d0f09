"""Prediction of held-out cases by a fine-tuned network against its buffer (paper Algorithm 2.III),
and the per-case outputs every trained variant returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from msrl_model.nn.heads import survival_from_logits
from msrl_model.nn.msrl import TaskSpec
from msrl_model.progress import Job, Progress, Stage, exhaust
from msrl_model.train.buffer import case_node_features_job
from msrl_model.train.data import Bags
from msrl_model.train.finetune import FinetuneResult


@dataclass
class Predictions:
    """Per-case predictions of held-out cases."""

    cases: np.ndarray  # (Q,) global case indices
    logits: np.ndarray  # (Q, n_outputs)
    risk: np.ndarray | None  # (Q,) survival risk -Σ S_j (survival tasks)
    probs: np.ndarray | None  # (Q, C) class probabilities (classification tasks)
    z: np.ndarray  # (Q, gcn_out) GCN output of each query


def outputs_from_logits(spec: TaskSpec, cases: np.ndarray, logits: Tensor, z: Tensor) -> Predictions:
    """Predictions of ``cases`` from their logits (Q, n_outputs) and GCN outputs z (Q, gcn_out)."""
    logits = logits.detach().cpu()
    z_np = z.detach().cpu().numpy()
    if spec.kind == "survival":
        return Predictions(cases, logits.numpy(), survival_from_logits(logits).risk.numpy(), None, z_np)
    return Predictions(cases, logits.numpy(), None, torch.softmax(logits, -1).numpy(), z_np)


@torch.no_grad()
def predict_job(result: FinetuneResult, bags: Bags, cases: Sequence[int], genomics: Tensor | None = None, *,
                chunk: int = 32, device: torch.device | str = "cpu", engine: str = "exact",
                message: str = "predict") -> Job[Predictions]:
    """Predict held-out ``cases`` one at a time on the graph [buffer; case] (paper Algorithm 2.III).

    A job: ``Stage.EMBED`` ticks per chunk of cases while their bags are encoded, one
    ``Stage.PREDICT`` tick before and after the graph passes; returns :class:`Predictions`.

    Args:
        result: the fine-tuned network and its buffer.
        bags: patch bags (full bags are used).
        cases: global case indices.
        genomics: packed genomics of *these* cases (rows = cases) for MSRL_multi; None = WSI only.
        engine: "exact" (:class:`~msrl_model.infer.engine.ExactEngine`, GSL graphs only) or "dense"
            (:meth:`~msrl_model.nn.msrl.MSRLNet.graph_forward` per case); both give the same numbers.
        message: names the pass in the ticks.
    """
    device = torch.device(device)
    net = result.online.eval()
    cases = np.asarray(cases, dtype=np.int64)
    nodes = yield from case_node_features_job(net, bags, cases, genomics, max_patches=0, chunk=chunk,
                                              device=device, message=message)  # (Q, node_dim)
    yield Progress(Stage.PREDICT, 0, 1, message)
    buffer = result.buffer.to(device)
    if engine == "exact" and result.graph_mode == "gsl":
        from msrl_model.infer.engine import ExactEngine

        eng = ExactEngine(net.gsl, net.gcn, buffer, net.cfg.k)
        z = torch.stack([r.z for r in eng.predict(nodes)])  # (Q, gcn_out)
    else:
        z = torch.cat([net.graph_forward(nodes[i:i + 1], buffer, result.graph_mode)[0]
                       for i in range(len(cases))])  # (Q, gcn_out)
    out = outputs_from_logits(net.task, cases, net.readout(z, nodes), z)
    yield Progress(Stage.PREDICT, 1, 1, message)
    return out


def predict(result: FinetuneResult, bags: Bags, cases: Sequence[int], genomics: Tensor | None = None, *,
            chunk: int = 32, device: torch.device | str = "cpu", engine: str = "exact") -> Predictions:
    """:func:`predict_job` without its ticks."""
    return exhaust(predict_job(result, bags, cases, genomics, chunk=chunk, device=device, engine=engine))


__all__ = ["Predictions", "outputs_from_logits", "predict", "predict_job"]
