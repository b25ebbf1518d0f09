"""The CLI presets: a :class:`RunPreset` bundles a synthetic cohort, an
:class:`~msrl_model.nn.config.MSRLConfig` and :class:`~msrl_model.train.settings.TrainSettings` for
``python -m msrl_model.train --preset tiny|demo``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msrl_model.nn.config import ConfigError, MSRLConfig
from msrl_model.train.settings import TrainSettings
from msrl_model.train.variants import available_variants


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
    variants: tuple[str, ...] = available_variants()  # default variants: every registered one
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


__all__ = ["RunPreset", "preset"]
