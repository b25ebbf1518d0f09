"""The CLI presets and scales.

A :class:`RunPreset` bundles a synthetic cohort, an :class:`~msrl_model.nn.config.MSRLConfig` and
:class:`~msrl_model.train.settings.TrainSettings` for ``python -m msrl_model.train --preset tiny|demo``;
a :class:`RunScale` is the model scale and schedule of a ``--cohort`` run (:func:`cohort_scale`:
``--scale auto|demo|large|paper``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

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
    ablation_tasks: tuple[str, ...] | None = None  # tasks the trained Table-3 ablations run on (None: all)
    render_slides: bool = False  # render SVS slides and extract builtin-he features (as the app does)
    slide_size: tuple[int, int] = (2048, 1536)  # (width, height) of rendered slides


# The demo preset's measured recipe around MSRLConfig.demo (shared by the preset and the "demo" /
# "large" scales of --cohort runs):
# lr 1e-3: at the demo config's 1e-4, 10 short epochs leave every head under-trained (measured: the
# genomics-only SNN reaches C 0.66 at 1e-4 and 0.79 at 1e-3 on one fold). batch 16 (150 steps): on
# folds 0/1 of the rendered cohort MSRL_multi C 0.76/0.81 vs 0.72/0.76 at batch 32. readout_skip: the
# head also reads the query's own node features.
_DEMO_RECIPE: dict[str, object] = dict(pretrain_epochs=25, finetune_epochs=10, warmup_epochs=2, batch_size=16,
                                       slide_dropout=0.1, finetune_lr=1e-3, finetune_min_lr=1e-5, readout_skip=True)


def _demo_settings(**overrides: object) -> TrainSettings:
    """The demo recipe's training settings: a fresh φ_H for fine-tuning — stage 1's φ_H, trained on
    240 cases to tell slides apart, measured C 0.663 vs 0.694 (5 folds, survival; finetune.py has
    the details)."""
    return TrainSettings(**{"anchor_every": 5, "pretrained_slide_encoder": False, **overrides})


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
        # the demo MSRLConfig with a CPU-friendly schedule: 2 cores run 5-fold CV of every
        # method plus the final models in about 45 minutes (one process; two share the folds). The cohort is rendered (SVS slides,
        # builtin-he features), the same features the app extracts; it is exactly
        # `msrl synth cohort DIR --cases 300 --projects 3 --seed 0 --render-slides`.
        return RunPreset(
            name="demo", n_cases=300, n_projects=3, patches=(64, 400), feature_dim=None,
            config=MSRLConfig.demo(**{**_DEMO_RECIPE, "max_patches_train": 64}),  # bags of 64-400 patches
            settings=_demo_settings(encode_chunk=64),
            tasks=("survival", "stage", "TP53_mut", "HER2_status"),
            # every method, so that the model card carries the paper's Table 3 for this cohort; the
            # trained ablations on survival only, as the paper's Table 3 (each costs a fine-tuning)
            variants=available_variants(), ablation_tasks=("survival",),
            render_slides=True, slide_size=(2048, 1536),
        )
    raise ConfigError(f"unknown preset {name!r}; use 'tiny' or 'demo'")


SCALES = ("auto", "demo", "large", "paper")
LARGE_COHORT = 500  # cases from which a run on a GPU gets the "large" scale
MIN_FINETUNE_STEPS = 150  # optimizer steps per fold of the demo preset (240 training cases / 16 × 10 epochs)


@dataclass(frozen=True)
class RunScale:
    """The model scale and schedule of a ``--cohort`` run."""

    name: str  # "demo" | "large" | "paper"
    config: MSRLConfig  # patch_dim and group_sizes are filled in from the cohort
    settings: TrainSettings
    reason: str  # why, in one line (the log and config.toml state it)


def cohort_scale(name: str, n_cases: int, device: torch.device | str, n_folds: int = 5) -> RunScale:
    """The scale of a ``--cohort`` run of ``n_cases`` cases on ``device`` (``--scale name``).

    ``"auto"`` chooses by this rule: **"large" on a CUDA GPU with at least** :data:`LARGE_COHORT`
    **(500) cases, "demo" otherwise** (every CPU run, and smaller cohorts on a GPU).

    * ``"demo"``: :meth:`MSRLConfig.demo`'s width (d = 128, φ_H 2 layers × 4 heads, GCN 128 → 64)
      with the demo preset's measured recipe: a fresh φ_H for fine-tuning
      (``pretrained_slide_encoder=False``), the readout skip, fine-tuning lr 1e-3 → 1e-5, batch 16,
      slide dropout 0.1, 25 pre-training and (at least) 10 fine-tuning epochs with 2 warm-up epochs;
      512 patches per training view (MSRLConfig.demo's; the preset's 64 suits its 64–400-patch
      synthetic bags, real slides have thousands).
    * ``"large"``: the same recipe at twice the width (d = 256, φ_H 2 layers × 8 heads, GCN 256 →
      128) and 2048 patches per training view — a GPU has the time for it and 500+ cases the data.
      Not measured against "demo" yet: pass ``--scale demo`` to compare.
    * ``"paper"``: :meth:`MSRLConfig.paper` and the default :class:`TrainSettings`, the paper's
      scale as it is (d = 768, 400 pre-training and 50 fine-tuning epochs, lr 1e-5).

    For "demo" and "large" a small cohort gets more fine-tuning epochs so that each fold still makes
    :data:`MIN_FINETUNE_STEPS` (150) optimizer steps, as the demo preset does:
    ``epochs = max(10, ceil(150 / ceil(n_train / 16)))`` with ``n_train = n_cases (n_folds − 1) / n_folds``.
    """
    device = torch.device(device)
    if name not in SCALES:
        raise ConfigError(f"unknown scale {name!r}; use one of {', '.join(SCALES)}")
    gpu = device.type == "cuda"
    chosen = name
    if name == "auto":
        chosen = "large" if gpu and n_cases >= LARGE_COHORT else "demo"
        why = (f"auto: {n_cases} cases on {device.type}; a CUDA GPU with >= {LARGE_COHORT} cases gets 'large', "
               "anything else 'demo'")
    else:
        why = f"--scale {name}"
    if chosen == "paper":
        return RunScale("paper", MSRLConfig.paper(), TrainSettings(), why + "; MSRLConfig.paper()")
    batch = int(_DEMO_RECIPE["batch_size"])
    steps_per_epoch = max(1, math.ceil(n_cases * (n_folds - 1) / n_folds / batch))
    epochs = max(int(_DEMO_RECIPE["finetune_epochs"]), math.ceil(MIN_FINETUNE_STEPS / steps_per_epoch))
    width = (dict(d=256, slide_heads=8, gcn_hidden=256, gcn_out=128, max_patches_train=2048) if chosen == "large"
             else dict(max_patches_train=512))
    config = MSRLConfig.demo(**{**_DEMO_RECIPE, **width, "finetune_epochs": epochs})
    return RunScale(chosen, config, _demo_settings(),
                    f"{why}; d={config.d}, {config.pretrain_epochs} pre-training / {epochs} fine-tuning epochs "
                    f"({steps_per_epoch} steps each), lr {config.finetune_lr:g}, fresh slide encoder for fine-tuning")


__all__ = ["LARGE_COHORT", "MIN_FINETUNE_STEPS", "RunPreset", "RunScale", "SCALES", "cohort_scale", "preset"]
