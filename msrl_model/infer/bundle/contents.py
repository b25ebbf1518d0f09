"""What a bundle holds once loaded: the file names, the dataclasses, and the networks' expected shapes."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.msrl import MSRLNet, TaskSpec

# Version of the layout written here. Readers refuse newer versions; bump on any incompatible change.
FORMAT_VERSION = 1
FORMAT_NAME = "msrl-bundle"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
BUFFER = "buffer.h5"
MODEL_CARD = "model_card.md"
# Key of the integrity record written inside the hashed files (safetensors __metadata__, buffer.h5 root attrs):
# JSON {"synthetic": bool, "cohort": <the manifest's cohort summary>, "metrics": {task: <its metrics>}}. The
# reader refuses a manifest that disagrees with it; bundles written before it have none and still load.
RECORD_KEY = "msrl_record"
# Case-table columns every task needs; survival tasks also need survival_months and censorship.
REQUIRED_COLUMNS = ("case_id",)
SURVIVAL_COLUMNS = ("survival_months", "censorship")


@dataclass
class TaskBundle:
    """One task's fine-tuned network and its buffer of authentic training cases."""

    spec: TaskSpec  # what the head predicts (classes or survival bin edges in months)
    variant: str  # "msrl" | "msrl_h"
    state_dict: dict[str, Tensor]  # MSRLNet(config, spec, variant) weights
    buffer_nodes: np.ndarray  # (N, node_dim) float32 target node features of the buffer cases
    cases: pd.DataFrame  # N rows: case_id, slide_id, project, survival_months, censorship, stage, labels...
    pathways: np.ndarray  # (N, n_groups) float32 authentic pathway scores (mean z-scored expression per group)
    metrics: dict = field(default_factory=dict)  # cross-validated metrics, e.g. {"c_index": {"mean", "std"}}
    thumbnails: list[bytes] | None = None  # N small JPEGs (b"" where missing), or None
    # Readable name of each class (manifest "class_names"; cohort.labels.class_names): "wild-type" for
    # TP53_mut "0". None: the codes (a survival task), or a bundle written before names were kept
    class_names: list[str] | None = None
    # Conformal calibration of the out-of-fold predictions (manifest "conformal_scores", infer/conformal.py):
    # 1 − p̂(true class), or for a survival task 1 − p̂(the event's time bin) of the observed events;
    # None: a bundle written before they were kept
    conformal_scores: list[float] | None = None
    # survival: each score's censoring weight 1/Ĝ(T−) (manifest "conformal_weights"); None for classification
    conformal_weights: list[float] | None = None


@dataclass
class GenomicsBlock:
    """How raw expression becomes the genomics encoder's input (MSRL_multi)."""

    genes: list[str]  # G gene symbols, the scaler's column order
    group_names: list[str]  # n gene-group (pathway) names
    groups: list[list[int]]  # n index lists into genes (groups may overlap)
    scaler_mean: np.ndarray  # (G,) float32 per-gene mean of the log-scale training expression
    scaler_std: np.ndarray  # (G,) float32 per-gene std (1 where constant)
    expression_scale: str  # "log": values are already log-normalised | "raw": log1p is applied first

    def to_dict(self) -> dict[str, Any]:
        return {"genes": list(self.genes), "group_names": list(self.group_names),
                "groups": [list(map(int, g)) for g in self.groups], "scaler_mean": self.scaler_mean,
                "scaler_std": self.scaler_std, "expression_scale": self.expression_scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenomicsBlock:
        return cls(list(d["genes"]), list(d["group_names"]), [list(map(int, g)) for g in d["groups"]],
                   np.asarray(d["scaler_mean"], dtype=np.float32), np.asarray(d["scaler_std"], dtype=np.float32),
                   str(d["expression_scale"]))


class LoadedManifest(dict):
    """A parsed, validated ``manifest.json`` (a plain dict) that also carries the bundle's ``provenance``
    text, so that code given only the manifest (the app's model card) can show it."""

    provenance: str = "unsigned — provenance unknown"


@dataclass
class Bundle:
    """A loaded, validated bundle."""

    path: Path  # where it was loaded from (directory or .msrl file)
    manifest: dict[str, Any]  # the parsed manifest.json
    fingerprint: str  # SHA-256 of manifest.json (which holds every other file's hash): the bundle's identity
    config: MSRLConfig  # model configuration shared by every task
    tasks: dict[str, TaskBundle]  # by task name, in manifest order
    encoder: dict[str, Any]  # patch encoder {name, version, dim[, spec]} the features must come from
    tiling: dict[str, Any]  # TilingParams fields used for the training features
    tissue: dict[str, Any]  # TissueParams fields
    genomics: GenomicsBlock | None  # None for bundles without genomics (MSRL_H only)
    cohort_summary: dict[str, Any]  # n_cases, projects, synthetic, source, ...
    model_card: str  # Markdown
    # Provenance (infer/bundle/signing.py, shipped.py): "signed by <name> (key <fingerprint>)", "signed by an
    # unknown key (...)", "shipped with MSRL Studio (pinned fingerprint verified)" or "unsigned — provenance unknown"
    provenance: str = "unsigned — provenance unknown"
    signer: str | None = None  # the name a verified signature carries
    key_fingerprint: str | None = None  # the signing key's fingerprint
    signature_trusted: bool = False  # signed by a key of the trusted-keys folder
    shipped: bool = False  # loaded as the bundle shipped with MSRL Studio (its pinned fingerprint matched)
    # (m, P) float32 training slides' profiles of the applicability check (buffer.h5 /applicability/slide_means,
    # infer/applicability.py); None in bundles written before it
    slide_profiles: np.ndarray | None = None

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def software_version(self) -> str:
        return str(self.manifest["software"]["version"])

    @property
    def synthetic(self) -> bool:
        """True when the training cohort was synthetic (the app and every report say so)."""
        return bool(self.cohort_summary.get("synthetic", False))


@functools.lru_cache(maxsize=32)
def expected_shapes(config: MSRLConfig, spec: TaskSpec, variant: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of MSRLNet(config, spec, variant), built without memory (meta).

    Cached: :func:`~msrl_model.infer.bundle.load_bundle` builds them before it opens ``buffer.h5``,
    so that a failure of the model code itself is never reported as a damaged buffer file."""
    with torch.device("meta"):
        net = MSRLNet(config, spec, variant)  # type: ignore[arg-type]
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def node_dim(config: MSRLConfig, variant: str) -> int:
    """Width of a buffer node: the fused [genomics; slide] vector (msrl) or the slide vector (msrl_h)."""
    return config.fused_dim if variant == "msrl" else config.d
