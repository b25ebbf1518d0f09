r"""The MSRL networks assembled: the pre-training network and the per-task network.

Pre-training (paper §3.2, :class:`PretrainNet`): φ_H, φ_G and three graph learners + GCNs
(histology over h, genomics over g, fused over f = [g; h]). Its losses live in
:mod:`msrl_model.nn.losses`; its training loop in :mod:`msrl_model.train`.

Fine-tuning and inference (paper §3.3, Algorithm 2, :class:`MSRLNet`): one network per task.

.. math::
    h = φ_H(X_I), \qquad
    f = \begin{cases}
        [\,\mathrm{Inductor}(h);\ h\,] & \text{MSRL (online branch, WSI only)} \\
        [\,φ_G(X_G);\ h\,] & \text{target branch / MSRL\_multi (real genomics)} \\
        h & \text{MSRL\_H (no genomics anywhere)}
    \end{cases}

    F = [\,F_{buffer};\ f_1..f_B\,], \qquad A^r = \mathrm{GSL}(F), \qquad Z = \mathrm{GCN}(A^r, F), \qquad
    \hat y = \mathrm{head}(Z_{query} + W_s f_{query})

**Readout skip** (``cfg.readout_skip``, our addition, "jumping knowledge"): with K = 12 neighbours a
node's own weight in the normalised adjacency is about 1/13, so Z is mostly a neighbour average and a
poorly placed query washes out. The head therefore also reads a linear projection of the query's own
node features, :math:`W_s f` (``self.skip``; absent when the flag is off: :math:`\hat y =
\mathrm{head}(Z)`). It depends on the query alone, so it is applied *after* the exact engine:
:meth:`MSRLNet.readout` ``(z, nodes)`` is the one call that turns GCN outputs into logits, for queries
and for buffer rows alike.

The buffer holds *target* node features of authentic training cases (real genomics). At inference
the exact engine (:mod:`msrl_model.infer.engine`) computes the same Z for a query from its local
neighbourhood; :meth:`MSRLNet.graph_forward` is the plain form used in training.

The pathway decoder reads the same embedding as the head (the query's GCN output, which has
aggregated its neighbours' authentic genomics, plus the readout skip) into Hallmark-style pathway
activity scores: the "reconstructed pathway activity" the app
shows next to the neighbours' authentic scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.genomics import GenomicsEncoder, Inductor, PathwayDecoder
from msrl_model.nn.graph import GCN, GSL, KNN_GRAPHS, GraphMode
from msrl_model.nn.heads import task_head
from msrl_model.nn.slide_encoder import SlideEncoder, grid_positions, pad_bags

TaskKind = Literal["survival", "classification"]
Variant = Literal["msrl", "msrl_h"]


@dataclass(frozen=True)
class TaskSpec:
    """What one fine-tuned network predicts."""

    name: str  # task id, e.g. "survival", "stage", "TP53_mut" (the clinical.csv column for labels)
    kind: TaskKind  # "survival" (discrete-time hazards) or "classification" (softmax)
    classes: tuple[str, ...] = ()  # classification: class labels in head-output order
    bin_edges: tuple[float, ...] = ()  # survival: n_bins + 1 edges in months, first 0, last inf

    @property
    def n_outputs(self) -> int:
        """Width of the head: survival bins or classes."""
        return len(self.bin_edges) - 1 if self.kind == "survival" else len(self.classes)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes),
                "bin_edges": [float(e) for e in self.bin_edges]}

    @classmethod
    def from_dict(cls, d: dict) -> TaskSpec:
        return cls(d["name"], d["kind"], tuple(d.get("classes", ())),
                   tuple(float(e) for e in d.get("bin_edges", ())))


@dataclass
class SlideBatch:
    """A batch of patch bags ready for φ_H (padded).

    The features may be held in the precision they were stored in (fp16 / bf16 / float32, as read
    from feature files) so that a batch costs no more host memory than its files; :meth:`to` moves
    the batch to its device in that precision and makes the features float32 there, which is what
    φ_H reads.
    """

    x: Tensor  # (B, N, patch_dim) patch features, zero-padded; any float dtype until .to(), then float32
    pos: Tensor  # (B, N, 2) grid (row, col) of each patch in tiling-level units
    mask: Tensor  # (B, N) bool, True = a real patch
    lengths: list[int] = field(default_factory=list)  # real patches per bag

    @classmethod
    def from_bags(cls, features: Sequence[Tensor], coords: Sequence[Tensor],
                  patch_size_level0: Sequence[int]) -> SlideBatch:
        """Collate bags: features[i] (N_i, P) float (one precision), coords[i] (N_i, 2) level-0 pixels."""
        positions = [grid_positions(c, int(s)) for c, s in zip(coords, patch_size_level0)]
        x, pos, mask = pad_bags(list(features), positions)
        return cls(x, pos, mask, [int(f.shape[0]) for f in features])

    def to(self, device: torch.device | str) -> SlideBatch:
        """The batch on ``device`` with float32 features (moved as stored, converted on the device)."""
        return SlideBatch(self.x.to(device).float(), self.pos.to(device), self.mask.to(device), self.lengths)


def _graph_modules(cfg: MSRLConfig, node_dim: int) -> tuple[GSL, GCN]:
    return (GSL(node_dim, cfg.gsl_layers, cfg.k),
            GCN(node_dim, cfg.gcn_hidden, cfg.gcn_out, cfg.gcn_layers, dropout=cfg.head_dropout))


class PretrainNet(nn.Module):
    """Stage-1 network: φ_H, φ_G and the (GSL, GCN) pairs of the histology, genomics and fused graphs.

    Shapes: h, g (K, d); f = [g; h] (K, 2d); every GCN outputs (K, gcn_out) so the InfoNCE terms
    of eqs. 2–5 compare like with like.
    """

    def __init__(self, cfg: MSRLConfig) -> None:
        super().__init__()
        if not cfg.group_sizes:
            raise ValueError("pre-training needs gene groups (cfg.group_sizes is empty)")
        self.cfg = cfg
        self.slide_encoder = SlideEncoder.from_config(cfg)
        self.genomics_encoder = GenomicsEncoder.from_config(cfg)
        self.gsl_h, self.gcn_h = _graph_modules(cfg, cfg.d)
        self.gsl_g, self.gcn_g = _graph_modules(cfg, cfg.d)
        self.gsl_f, self.gcn_f = _graph_modules(cfg, cfg.fused_dim)

    def reset_parameters(self) -> None:
        for module in (self.slide_encoder, self.genomics_encoder, self.gsl_h, self.gcn_h,
                       self.gsl_g, self.gcn_g, self.gsl_f, self.gcn_f):
            module.reset_parameters()


class MSRLNet(nn.Module):
    """Stage-2 network for one task (online branch; the target branch is an EMA copy of it).

    Args:
        cfg: model configuration (``group_sizes`` set unless ``variant == "msrl_h"``).
        task: what the head predicts.
        variant: "msrl" (nodes f = [g; h], Inductor prompt without genomics) or "msrl_h" (nodes h).
    """

    def __init__(self, cfg: MSRLConfig, task: TaskSpec, variant: Variant = "msrl") -> None:
        super().__init__()
        if variant not in ("msrl", "msrl_h"):
            raise ValueError(f"unknown MSRL variant {variant!r}; use 'msrl' or 'msrl_h'")
        if variant == "msrl" and not cfg.group_sizes:
            raise ValueError("the 'msrl' variant needs gene groups (cfg.group_sizes is empty)")
        self.cfg, self.task, self.variant = cfg, task, variant
        self.slide_encoder = SlideEncoder.from_config(cfg)
        self.uses_genomics = variant == "msrl"
        if self.uses_genomics:
            self.genomics_encoder = GenomicsEncoder.from_config(cfg)
            self.inductor = Inductor.from_config(cfg)
        self.node_dim = cfg.fused_dim if self.uses_genomics else cfg.d
        self.gsl, self.gcn = _graph_modules(cfg, self.node_dim)
        self.head = task_head(task.kind, cfg.gcn_out, task.n_outputs, cfg.head_dropout)
        self.pathway_decoder = PathwayDecoder(cfg.gcn_out, cfg.n_groups) if cfg.n_groups else None
        self.skip = nn.Linear(self.node_dim, cfg.gcn_out) if cfg.readout_skip else None

    def reset_parameters(self) -> None:
        for module in self.children():
            module.reset_parameters()

    def embedding(self, z: Tensor, nodes: Tensor) -> Tensor:
        """What the head and the pathway decoder read (B, gcn_out): z + W_s nodes with the readout
        skip, z without; z (B, gcn_out) GCN outputs, nodes (B, node_dim) the same rows' node features."""
        return z if self.skip is None else z + self.skip(nodes)

    def readout(self, z: Tensor, nodes: Tensor) -> Tensor:
        """Task logits (B, n_outputs) from GCN outputs z (B, gcn_out) and node features (B, node_dim)."""
        return self.head(self.embedding(z, nodes))

    def pathways(self, z: Tensor, nodes: Tensor) -> Tensor:
        """Reconstructed pathway scores (B, n_groups) from the same embedding as the head."""
        if self.pathway_decoder is None:
            raise ValueError("this network has no pathway decoder (no gene groups)")
        return self.pathway_decoder(self.embedding(z, nodes))

    def load_pretrained(self, pre: PretrainNet, slide_encoder: bool = True) -> None:
        """Start from stage 1: φ_G and the fused graph learner + GCN (or the histology ones for MSRL_H),
        and φ_H unless ``slide_encoder`` is False (then φ_H keeps its fresh weights)."""
        if slide_encoder:
            self.slide_encoder.load_state_dict(pre.slide_encoder.state_dict())
        if self.uses_genomics:
            self.genomics_encoder.load_state_dict(pre.genomics_encoder.state_dict())
            self.gsl.load_state_dict(pre.gsl_f.state_dict())
            self.gcn.load_state_dict(pre.gcn_f.state_dict())
        else:
            self.gsl.load_state_dict(pre.gsl_h.state_dict())
            self.gcn.load_state_dict(pre.gcn_h.state_dict())

    def encode_slides(self, batch: SlideBatch) -> tuple[Tensor, Tensor]:
        """h (B, d) and the CLS→patch attention (B, N) of a padded batch of bags."""
        return self.slide_encoder(batch.x, batch.pos, batch.mask)

    def node_features(self, h: Tensor, genomics: Tensor | None = None) -> Tensor:
        """Graph node features of the cases: (B, node_dim).

        Args:
            h: (B, d) slide embeddings.
            genomics: (B, Σ group sizes) packed z-scored expression (see ``gather_groups``) for the
                target branch and MSRL_multi; None for the online branch (Inductor prompt).
        """
        if not self.uses_genomics:
            return h
        g = self.inductor(h) if genomics is None else self.genomics_encoder(genomics)[0]  # (B, d)
        return torch.cat([g, h], dim=-1)  # (B, 2d) f = concatenate(g, h)

    def adjacency(self, x: Tensor, graph_mode: GraphMode = "gsl") -> tuple[Tensor, Tensor]:
        """Normalised sparse adjacency (edge_index (2, E), edge_weight (E,)) over node features
        x (N, node_dim): the learned graph (``"gsl"``) or a fixed kNN graph of
        :data:`~msrl_model.nn.graph.KNN_GRAPHS` with ``cfg.k`` neighbours (no gradient)."""
        if graph_mode == "gsl":
            return self.gsl.adjacency(x)
        if graph_mode not in KNN_GRAPHS:
            raise ValueError(f"unknown graph mode {graph_mode!r}; use 'gsl', " + ", ".join(map(repr, KNN_GRAPHS)))
        return KNN_GRAPHS[graph_mode](x, self.cfg.k)

    def graph_forward(self, nodes: Tensor, buffer: Tensor, graph_mode: GraphMode = "gsl"
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 2.I over F = [buffer; nodes].

        Args:
            nodes: (B, node_dim) features of the cases in the batch.
            buffer: (M, node_dim) buffer features (already without the batch cases' own entries).
            graph_mode: the graph over F (:meth:`adjacency`; the kNN ablations use fixed graphs).

        Returns:
            z (B, gcn_out) for the batch cases, and the sparse adjacency over [buffer; nodes]
            (edge_index (2, E), edge_weight (E,)) with batch nodes numbered M..M+B-1.
        """
        x = torch.cat([buffer, nodes], dim=0)  # (M + B, node_dim)
        edge_index, edge_weight = self.adjacency(x, graph_mode)
        z = self.gcn(x, edge_index, edge_weight)  # (M + B, gcn_out)
        return z[buffer.shape[0]:], edge_index, edge_weight
