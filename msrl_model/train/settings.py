"""Training-run settings that are not model hyper-parameters.

:class:`~msrl_model.nn.config.MSRLConfig` describes the model and its two training stages.
:class:`TrainSettings` holds the knobs of *this* training program around it (mini-batching of the
pre-training graph, anchor bootstrapping interval, the pathway-reconstruction weight, the baselines'
schedule, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from msrl_model.nn.config import ConfigError, typed_fields


@dataclass(frozen=True)
class TrainSettings:
    """Settings of the training program (not of the model)."""

    pretrain_graph_cases: int = 1024  # cases per pre-training step (one random subset forms the graph)
    anchor_every: int = 5  # SUBLIME bootstrapping of the anchor graphs every this many epochs
    dense_anchor_max: int = 5000  # anchor graphs are dense K x K up to this many cases, sparse above
    encode_chunk: int = 32  # at most this many bags per slide-encoder forward when embedding many cases
    chunk_patches: int = 65536  # and at most this many padded patches (bags x largest) per forward; a bigger bag alone
    bag_cache_mb: int = 1024  # bags held in memory (as stored) up to this many MB, else streamed from disk; 0 = stream
    pathway_weight: float = 1.0  # weight of the pathway-reconstruction MSE added to the fine-tuning loss
    baseline_lr: float = 0.0  # AdamW peak lr of the ABMIL / SNN baselines; 0 = cfg.finetune_lr
    baseline_epochs: int = 0  # epochs of the ABMIL / SNN baselines; 0 = cfg.finetune_epochs
    abmil_hidden: int = 0  # gated-attention width of ABMIL; 0 = cfg.d
    grad_clip: float = 5.0  # max gradient norm (0 = no clipping)
    multimodal_weight: float = 1.0  # weight of the task loss of the real-genomics (MSRL_multi) pass; 0 = off
    pretrained_slide_encoder: bool = True  # fine-tuning starts φ_H from stage 1 (False: fresh φ_H; φ_G, GSL, GCN from stage 1)
    distill_weight: float = 1.0  # weight of the MSE from WSI-only logits to the real-genomics pass's (detached); 0 = off

    def __post_init__(self) -> None:
        problems = []
        for name in ("pretrain_graph_cases", "anchor_every", "dense_anchor_max", "encode_chunk", "chunk_patches"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        for name in ("pathway_weight", "multimodal_weight", "distill_weight", "baseline_lr", "baseline_epochs",
                     "abmil_hidden", "grad_clip", "bag_cache_mb"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that determine a run's weights (checkpoint identities): all but
        ``bag_cache_mb``, which only decides whether bags are held or streamed (same batches)."""
        return {k: v for k, v in self.to_dict().items() if k != "bag_cache_mb"}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        return cls(**typed_fields(cls, values, "[train] setting"))


__all__ = ["TrainSettings"]
