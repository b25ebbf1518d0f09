"""The training variants of the cross-validation: a name -> :class:`TrainingVariant` registry.

Each entry declares what the variant needs and how it is trained and predicted::

    msrl             MSRL: learned GSL, target-branch buffer, WSI only at inference
    msrl_h           MSRL_H: nodes h only (no genomics anywhere)
    msrl_multi       MSRL_multi: the trained MSRL network given the test case's real genomics
    abmil            ABMIL (WSI): gated attention-MIL baseline, no graph, no pre-training
    snn              SNN (genomics): genomics-only baseline, no graph, no pre-training
    knn_cos          KNN-cosine: MSRL on a fixed cosine kNN graph
    knn_euc          KNN-euclidean: MSRL on a fixed euclidean kNN graph
    random_gsl       Random GSL: MSRL with random frozen GSL weights
    online_buffer    Online buffer: MSRL with the buffer filled from the online branch
    no_graph         No graph: MSRL's trained network, each test case linked only to itself
    shuffled_buffer  Shuffled buffer: MSRL's trained network, the buffer's genomics permuted across cases

MSRL_H, the two KNN graphs, random GSL and the online buffer are the trained ablations of the
paper's Table 3 (``ablation=True``): each costs a fine-tuning, so a run may limit them to some tasks
(``ablation_tasks``; the paper's Table 3 is survival only). no_graph and shuffled_buffer are
inference-time ablations (:func:`~msrl_model.train.predict.inference_buffer`):
they train nothing and ask whether the neighbours, and their authentic genomics, change the
prediction at all.

The order of registration is the order of :func:`available_variants` (the CLI's default list).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.graph import GraphMode
from msrl_model.nn.msrl import PretrainNet, TaskSpec, Variant
from msrl_model.progress import Job
from msrl_model.train.baselines import ABMIL, SNN, BaselineSpec, baseline_job, predict_baseline
from msrl_model.train.data import Bags
from msrl_model.train.finetune import finetune_job
from msrl_model.train.predict import BufferMode, Predictions, predict_job
from msrl_model.train.settings import TrainSettings


@dataclass(frozen=True)
class FoldInputs:
    """What every variant of one task and fold trains and predicts from."""

    cfg: MSRLConfig
    task: TaskSpec
    bags: Bags
    genomics: Tensor  # (n_cases, Σ group sizes) packed expression (fold scaler)
    pathways: Tensor  # (n_cases, n_groups) authentic pathway scores (fold scaler)
    y: np.ndarray  # (n_cases,) task targets, -1 = no label
    censorship: np.ndarray  # (n_cases,) 1 = censored
    train_cases: np.ndarray  # the fold's training cases
    pretrained: PretrainNet | None  # the fold's stage-1 network (None when no variant needs it)
    settings: TrainSettings
    seed: int
    device: torch.device


Trainer = Callable[["TrainingVariant", FoldInputs], Job[object]]
"""trainer(variant, inputs) -> a Job returning the trained model."""
Predictor = Callable[["TrainingVariant", object, FoldInputs, np.ndarray], Predictions | Job[Predictions]]
"""predictor(variant, trained model, inputs, test cases) -> Predictions, or a Job returning them."""


@dataclass(frozen=True)
class TrainingVariant:
    """One method of the cross-validation table."""

    name: str  # registry key, e.g. "knn_cos"
    display_name: str  # in tables (the paper's spelling where it has one)
    train: Trainer  # how it is trained
    predict: Predictor  # how it predicts held-out cases
    genomics_at_inference: bool = False  # the test case's real genomics is an input
    needs_pretraining: bool = True  # starts from the fold's stage-1 network
    model_of: str | None = None  # predicts with the model trained for this variant (None: its own)
    network: Variant | None = "msrl"  # MSRLNet variant; None for a baseline
    graph_mode: GraphMode | None = "gsl"  # graph over the nodes; None without a graph
    gsl: Literal["learned", "random"] | None = "learned"  # the graph learner's weights; None without a GSL
    buffer_branch: Literal["target", "online"] | None = "target"  # branch filling the buffer; None without one
    baseline: BaselineSpec | None = None  # the baseline network, for the single-modality baselines
    buffer_mode: BufferMode = "full"  # what a test case is linked against at inference (MSRL family)
    ablation: bool = False  # a trained ablation of the paper's Table 3 (may be limited to some tasks: runs_on)

    @property
    def trained_as(self) -> str:
        """The variant whose trained model this one predicts with."""
        return self.model_of or self.name

    def runs_on(self, task: str, ablation_tasks: Sequence[str] | None) -> bool:
        """Whether this variant runs on ``task`` when the ablations are limited to ``ablation_tasks``
        (None: every task)."""
        return not self.ablation or ablation_tasks is None or task in ablation_tasks

    def finetune_options(self) -> dict[str, object]:
        """The keyword arguments of :func:`~msrl_model.train.finetune.finetune_job` (MSRL family)."""
        return dict(variant=self.network, graph_mode=self.graph_mode, random_gsl=self.gsl == "random",
                    buffer_branch=self.buffer_branch)


_REGISTRY: dict[str, TrainingVariant] = {}


def register_variant(variant: TrainingVariant) -> TrainingVariant:
    """Add ``variant`` under its name (ValueError when the name is taken)."""
    if variant.name in _REGISTRY:
        raise ValueError(f"training variant {variant.name!r} is registered twice")
    _REGISTRY[variant.name] = variant
    return variant


def available_variants() -> tuple[str, ...]:
    """Registered variant names in registration order."""
    return tuple(_REGISTRY)


def get_variant(name: str) -> TrainingVariant:
    """The variant called ``name``; ValueError listing the registered ones when unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def unknown_variants(names: Sequence[str]) -> list[str]:
    """The names in ``names`` that are not registered, in their order."""
    return [n for n in names if n not in _REGISTRY]


def display_name(name: str) -> str:
    """The table name of a variant (the name itself when it is not registered)."""
    return _REGISTRY[name].display_name if name in _REGISTRY else name


def _train_msrl(variant: TrainingVariant, inputs: FoldInputs) -> Job[object]:
    return finetune_job(inputs.cfg, inputs.task, inputs.bags, inputs.genomics, inputs.pathways, inputs.y,
                        inputs.censorship, inputs.train_cases, pretrained=inputs.pretrained,
                        settings=inputs.settings, seed=inputs.seed, device=inputs.device,
                        **variant.finetune_options())


def _predict_msrl(variant: TrainingVariant, model: object, inputs: FoldInputs, cases: np.ndarray
                  ) -> Job[Predictions]:
    """A job (``Stage.EMBED`` ticks per chunk of test cases, which the CV drives)."""
    genomics = inputs.genomics[cases] if variant.genomics_at_inference else None
    return predict_job(model, inputs.bags, cases, genomics, chunk=inputs.settings.encode_chunk,
                       chunk_patches=inputs.settings.chunk_patches, device=inputs.device,
                       message=f"predicting {variant.name}", buffer_mode=variant.buffer_mode,
                       shuffle_seed=inputs.seed)


def _train_baseline(variant: TrainingVariant, inputs: FoldInputs) -> Job[object]:
    return baseline_job(variant.baseline, inputs.cfg, inputs.task, inputs.bags, inputs.genomics, inputs.y,
                        inputs.censorship, inputs.train_cases, settings=inputs.settings, seed=inputs.seed,
                        device=inputs.device)


def _predict_baseline(variant: TrainingVariant, model: object, inputs: FoldInputs, cases: np.ndarray
                      ) -> Predictions:
    return predict_baseline(model, inputs.bags, inputs.genomics, cases, chunk=inputs.settings.encode_chunk,
                            chunk_patches=inputs.settings.chunk_patches, device=inputs.device)


def _msrl_family(name: str, display: str, **declared: object) -> TrainingVariant:
    return register_variant(TrainingVariant(name, display, _train_msrl, _predict_msrl, **declared))


def _baseline(spec: BaselineSpec, display: str, **declared: object) -> TrainingVariant:
    return register_variant(TrainingVariant(
        spec.name, display, _train_baseline, _predict_baseline, needs_pretraining=False, network=None,
        graph_mode=None, gsl=None, buffer_branch=None, baseline=spec, **declared))


_msrl_family("msrl", "MSRL")
_msrl_family("msrl_h", "MSRL_H", network="msrl_h", ablation=True)
_msrl_family("msrl_multi", "MSRL_multi", genomics_at_inference=True, model_of="msrl")
_baseline(ABMIL, "ABMIL (WSI)")
_baseline(SNN, "SNN (genomics)", genomics_at_inference=True)
_msrl_family("knn_cos", "KNN-cosine", graph_mode="knn_cos", gsl=None, ablation=True)
_msrl_family("knn_euc", "KNN-euclidean", graph_mode="knn_euc", gsl=None, ablation=True)
_msrl_family("random_gsl", "Random GSL", gsl="random", ablation=True)
_msrl_family("online_buffer", "Online buffer", buffer_branch="online", ablation=True)
_msrl_family("no_graph", "No graph", model_of="msrl", buffer_mode="none")
_msrl_family("shuffled_buffer", "Shuffled buffer", model_of="msrl", buffer_mode="shuffled")


__all__ = [
    "FoldInputs", "TrainingVariant", "available_variants", "display_name", "get_variant", "register_variant",
    "unknown_variants",
]
