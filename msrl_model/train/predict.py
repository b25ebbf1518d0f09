"""Prediction of held-out cases by a fine-tuned network against its buffer (paper Algorithm 2.III),
and the per-case outputs every trained variant returns.

Two inference-time ablations change only the buffer a query is linked against
(:func:`inference_buffer`), never the trained network: ``"none"`` links the query to itself alone
(the variant ``no_graph``), ``"shuffled"`` permutes the buffer cases' authentic genomics across them
before the graph is built (``shuffled_buffer``). Together they answer "do the neighbours matter?".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from msrl_model.nn.heads import survival_from_logits
from msrl_model.nn.msrl import TaskSpec
from msrl_model.progress import Job, Progress, Stage, exhaust
from msrl_model.train.buffer import case_node_features_job
from msrl_model.train.data import Bags
from msrl_model.train.finetune import FinetuneResult
from msrl_model.train.settings import TrainSettings

BufferMode = Literal["full", "none", "shuffled"]
"""What a query is linked against: the buffer, nothing but itself, or the buffer with its genomics
permuted across cases (:func:`inference_buffer`)."""


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


def inference_buffer(result: FinetuneResult, mode: BufferMode = "full", seed: int = 0) -> Tensor:
    """The buffer rows (M', node_dim) a query's graph is built over, on ``result.buffer``'s device.

    * ``"full"``: the buffer itself (MSRL).
    * ``"none"``: no rows — the graph over [query] alone, the query linked only to itself (no_graph).
    * ``"shuffled"``: every row keeps its slide part h but takes the genomics part g of another
      buffer case, f = [g_π(i); h_i] for a random permutation π drawn from ``seed`` — the
      neighbours' authentic genomics no longer belong to their slides (shuffled_buffer). Needs
      genomics nodes (f = [g; h]; not MSRL_H).
    """
    buffer = result.buffer
    if mode == "full":
        return buffer
    if mode == "none":
        return buffer[:0]
    if mode != "shuffled":
        raise ValueError(f"unknown buffer mode {mode!r}; use 'full', 'none' or 'shuffled'")
    net = result.online
    if not net.uses_genomics:
        raise ValueError("a shuffled buffer needs genomics in the nodes; MSRL_H has none")
    d = net.cfg.d  # f = concatenate(g, h): g is the first d columns
    perm = torch.randperm(buffer.shape[0], generator=torch.Generator().manual_seed(seed)).to(buffer.device)
    return torch.cat([buffer[perm, :d], buffer[:, d:]], dim=1)


@torch.no_grad()
def predict_job(result: FinetuneResult, bags: Bags, cases: Sequence[int], genomics: Tensor | None = None, *,
                chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
                device: torch.device | str = "cpu", engine: str = "exact",
                message: str = "predict", buffer_mode: BufferMode = "full", shuffle_seed: int = 0
                ) -> Job[Predictions]:
    """Predict held-out ``cases`` one at a time on the graph [buffer; case] (paper Algorithm 2.III).

    A job: ``Stage.EMBED`` ticks per chunk of cases while their bags are encoded, one
    ``Stage.PREDICT`` tick before and after the graph passes; returns :class:`Predictions`.

    Args:
        result: the fine-tuned network and its buffer.
        bags: patch bags (full bags are used).
        cases: global case indices.
        genomics: packed genomics of *these* cases (rows = cases) for MSRL_multi; None = WSI only.
        chunk, chunk_patches: bags and padded patches per slide-encoder forward (:meth:`Bags.chunks`).
        engine: "exact" (:class:`~msrl_model.infer.engine.ExactEngine`, GSL graphs only) or "dense"
            (:meth:`~msrl_model.nn.msrl.MSRLNet.graph_forward` per case); both give the same numbers.
            Without buffer rows (``buffer_mode="none"``) the dense pass over the query alone runs.
        message: names the pass in the ticks.
        buffer_mode, shuffle_seed: what the query is linked against (:func:`inference_buffer`).
    """
    device = torch.device(device)
    net = result.online.eval()
    cases = np.asarray(cases, dtype=np.int64)
    nodes = yield from case_node_features_job(net, bags, cases, genomics, max_patches=0, chunk=chunk,
                                              chunk_patches=chunk_patches, device=device,
                                              message=message)  # (Q, node_dim)
    yield Progress(Stage.PREDICT, 0, 1, message)
    buffer = inference_buffer(result, buffer_mode, shuffle_seed).to(device)
    if engine == "exact" and result.graph_mode == "gsl" and len(buffer):
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
            chunk: int = 32, chunk_patches: int = TrainSettings().chunk_patches,
            device: torch.device | str = "cpu", engine: str = "exact",
            buffer_mode: BufferMode = "full", shuffle_seed: int = 0) -> Predictions:
    """:func:`predict_job` without its ticks."""
    return exhaust(predict_job(result, bags, cases, genomics, chunk=chunk, chunk_patches=chunk_patches,
                               device=device, engine=engine,
                               buffer_mode=buffer_mode, shuffle_seed=shuffle_seed))


__all__ = ["BufferMode", "Predictions", "inference_buffer", "outputs_from_logits", "predict", "predict_job"]
