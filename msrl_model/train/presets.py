"""Training-run settings that are not model hyper-parameters, and the CLI presets.

:class:`~msrl_model.nn.config.MSRLConfig` describes the model and its two training stages.
:class:`TrainSettings` holds the knobs of *this* training program around it (mini-batching of the
pre-training graph, anchor bootstrapping interval, the pathway-reconstruction weight, the baselines'
schedule, ...). A :class:`RunPreset` bundles a synthetic cohort, an ``MSRLConfig`` and
``TrainSettings`` for ``python -m msrl_model.train --preset tiny|demo``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from msrl_model.nn.config import ConfigError, MSRLConfig, typed_fields

ALL_VARIANTS = ("msrl", "msrl_h", "msrl_multi", "abmil", "snn", "knn_cos", "knn_euc", "random_gsl",
                "online_buffer")
# Display names in tables (the paper's spelling where it has one).
METHOD_NAMES = {
    "msrl": "MSRL", "msrl_h": "MSRL_H", "msrl_multi": "MSRL_multi", "abmil": "ABMIL (WSI)",
    "snn": "SNN (genomics)", "knn_cos": "KNN-cosine", "knn_euc": "KNN-euclidean",
    "random_gsl": "Random GSL", "online_buffer": "Online buffer",
}


@dataclass(frozen=True)
class TrainSettings:
    """Settings of the training program (not of the model)."""

    pretrain_graph_cases: int = 1024  # cases per pre-training step (one random subset forms the graph)
    anchor_every: int = 5  # SUBLIME bootstrapping of the anchor graphs every this many epochs
    dense_anchor_max: int = 5000  # anchor graphs are dense K x K up to this many cases, sparse above
    encode_chunk: int = 32  # bags per slide-encoder forward when embedding many cases
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
        for name in ("pretrain_graph_cases", "anchor_every", "dense_anchor_max", "encode_chunk"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        for name in ("pathway_weight", "multimodal_weight", "distill_weight", "baseline_lr", "baseline_epochs", "abmil_hidden", "grad_clip"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        return cls(**typed_fields(cls, values, "[train] setting"))


@dataclass(frozen=True)
class RunPreset:
    """A complete synthetic run: cohort size, model config and training settings."""

    name: str  # "tiny" | "demo"
    n_cases: int  # synthetic cases
    n_projects: int  # synthetic projects
    patches: tuple[int, int]  # patches per synthetic slide (range; bag mode only)
    feature_dim: int | None  # synthetic patch-feature dim (None = the built-in encoder's, as real features)
    config: MSRLConfig  # model configuration (group_sizes filled from the cohort)
    settings: TrainSettings = field(default_factory=TrainSettings)  # training-program settings
    tasks: tuple[str, ...] = ("survival", "stage")  # default tasks
    variants: tuple[str, ...] = ALL_VARIANTS  # default variants
    render_slides: bool = False  # render SVS slides and extract builtin-he features (as the app does)
    slide_size: tuple[int, int] = (2048, 1536)  # (width, height) of rendered slides


def preset(name: str) -> RunPreset:
    """The ``tiny`` (CI: ~80 cases, seconds per model) or ``demo`` (shipped bundle) preset."""
    if name == "tiny":
        return RunPreset(
            # small rendered slides: the bundle's features are builtin-he ones, like the app's, so
            # `msrl analyze` runs it on any real slide (CI does, on the CMU slide)
            name="tiny", n_cases=80, n_projects=2, patches=(24, 64), feature_dim=None,
            config=MSRLConfig.tiny(max_patches_train=32, pretrain_epochs=6, finetune_epochs=4,
                                   warmup_epochs=1, batch_size=8),
            settings=TrainSettings(anchor_every=2, encode_chunk=40),
            render_slides=True, slide_size=(1536, 1024),
        )
    if name == "demo":
        # the demo MSRLConfig with a CPU-friendly schedule: 2 cores must run 5-fold CV of every
        # method plus the final model in well under half an hour. The cohort is rendered (SVS slides,
        # builtin-he features), the same features the app extracts; it is exactly
        # `msrl synth cohort DIR --cases 300 --projects 3 --seed 0 --render-slides`.
        return RunPreset(
            name="demo", n_cases=300, n_projects=3, patches=(64, 400), feature_dim=None,
            # lr 1e-3: at the demo config's 1e-4, 10 short epochs leave every head under-trained
            # (measured: the genomics-only SNN reaches C 0.66 at 1e-4 and 0.79 at 1e-3 on one fold).
            # batch 16 (150 steps): on folds 0/1 of the rendered cohort MSRL_multi C 0.76/0.81 vs 0.72/0.76
            # at batch 32. readout_skip: the head also reads the query's own node features.
            config=MSRLConfig.demo(max_patches_train=64, pretrain_epochs=25, finetune_epochs=10,
                                   warmup_epochs=2, batch_size=16, slide_dropout=0.1, finetune_lr=1e-3,
                                   finetune_min_lr=1e-5, readout_skip=True),
            # fresh φ_H for fine-tuning: stage 1's φ_H, trained on 240 cases to tell slides apart,
            # measured C 0.663 vs 0.694 (5 folds, survival; finetune.py has the details)
            settings=TrainSettings(anchor_every=5, encode_chunk=64, pretrained_slide_encoder=False),
            tasks=("survival", "stage", "TP53_mut", "HER2_status"),
            variants=("msrl", "msrl_multi", "abmil", "snn"),
            render_slides=True, slide_size=(2048, 1536),
        )
    raise ConfigError(f"unknown preset {name!r}; use 'tiny' or 'demo'")


__all__ = ["ALL_VARIANTS", "METHOD_NAMES", "RunPreset", "TrainSettings", "preset"]
