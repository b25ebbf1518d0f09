"""A small, untrained but well-formed bundle: for tests and for building UIs before training finishes.

:func:`make_random_bundle` builds seeded random-init :class:`~msrl_model.nn.msrl.MSRLNet` s, a random
buffer and a fake case table (TCGA-like ids, two projects, survival, stage with NAs, a mutation
label) and writes them with :func:`~msrl_model.infer.bundle.write_bundle`. Its model card and cohort
summary say "untrained, synthetic" so it can never pass for a real model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from msrl_model.infer.bundle import TaskBundle, write_bundle
from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.msrl import MSRLNet, TaskSpec


def _thumbnail(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=70)
    return buf.getvalue()


def _params(cls: type, value: Any) -> dict:
    """``cls`` (TilingParams / TissueParams) fields from None (defaults), an instance or a dict."""
    if value is None:
        return cls().to_dict()
    return (value if isinstance(value, cls) else cls(**dict(value))).to_dict()


def random_cases(n: int, seed: int = 0) -> pd.DataFrame:
    """A fake case table of n cases: case_id, slide_id, project, survival_months, censorship, stage, EGFR_mut."""
    rng = np.random.default_rng(seed)
    stage = rng.choice(np.array(["I", "II", "III", "IV"], dtype=object), n)
    stage[rng.random(n) < 0.15] = None  # some cases have no stage
    return pd.DataFrame({
        "case_id": [f"TCGA-XX-{i:04d}" for i in range(n)],
        "slide_id": [f"TCGA-XX-{i:04d}-01Z-00-DX1" for i in range(n)],
        "project": np.where(np.arange(n) % 3 == 0, "TCGA-LUAD", "TCGA-BRCA").astype(object),
        "survival_months": np.round(rng.exponential(30.0, n) + 0.5, 2),
        "censorship": rng.integers(0, 2, n).astype(np.int64),
        "stage": pd.Series(list(stage), dtype="str"),
        "EGFR_mut": rng.integers(0, 2, n).astype(np.int64),
    })


def make_random_bundle(out: str | Path, *, patch_dim: int = 32, n_cases: int = 40, seed: int = 0,
                       n_groups: int = 4, genes_per_group: int = 3, thumbnails: bool = True,
                       encoder: dict | None = None, expression_scale: str = "log",
                       tiling: Any = None, tissue: Any = None) -> Path:
    """Write a random-init bundle with a survival task ("survival", msrl) and a classification task
    ("EGFR_mut", msrl) at ``MSRLConfig.tiny`` scale.

    Args:
        out: directory or ``*.msrl`` path.
        patch_dim: patch feature size (use the builtin-he encoder's dim to analyse real slides).
        n_cases: buffer cases per task.
        seed: seeds the weights, the buffer and the case table.
        n_groups: gene groups (pathways); genes_per_group genes each, disjoint.
        thumbnails: store a 16 × 16 JPEG per case.
        encoder: encoder description (default builtin-he 1.0 with ``patch_dim``).
        expression_scale: the genomics block's scale ("log" or "raw").
        tiling: the tiling the bundle records (a :class:`~msrl_model.slide.TilingParams` or a dict of
            its fields; default ``TilingParams()``): the Predictor extracts new slides with it.
        tissue: the tissue parameters (``TissueParams`` or a dict of its fields; default ``TissueParams()``).
    """
    from msrl_model.slide.tiling import TilingParams
    from msrl_model.slide.tissue import TissueParams

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = MSRLConfig.tiny(patch_dim=patch_dim, group_sizes=(genes_per_group,) * n_groups)
    cases = random_cases(n_cases, seed)
    edges = (0.0, *np.quantile(cases.survival_months[cases.censorship == 0], [0.25, 0.5, 0.75]).round(2), np.inf)
    specs = [TaskSpec("survival", "survival", bin_edges=tuple(float(e) for e in edges)),
             TaskSpec("EGFR_mut", "classification", classes=("wt", "mut"))]
    n_genes = n_groups * genes_per_group
    tasks = []
    for spec in specs:
        net = MSRLNet(cfg, spec, "msrl")
        tasks.append(TaskBundle(
            spec=spec, variant="msrl", state_dict={k: v.clone() for k, v in net.state_dict().items()},
            buffer_nodes=rng.standard_normal((n_cases, net.node_dim)).astype(np.float32),
            cases=cases, pathways=rng.standard_normal((n_cases, n_groups)).astype(np.float32),
            metrics={"c_index": {"mean": 0.5, "std": 0.0}} if spec.kind == "survival"
            else {"auc": {"mean": 0.5, "std": 0.0}, "f1": {"mean": float("nan"), "std": float("nan")}},
            thumbnails=[_thumbnail(rng) for _ in range(n_cases)] if thumbnails else None))
    genomics = {
        "genes": [f"GENE{i}" for i in range(n_genes)],
        "group_names": [f"HALLMARK_TEST_{i}" for i in range(n_groups)],
        "groups": [list(range(i * genes_per_group, (i + 1) * genes_per_group)) for i in range(n_groups)],
        "scaler_mean": rng.standard_normal(n_genes).astype(np.float32),
        "scaler_std": (rng.random(n_genes) + 0.5).astype(np.float32),
        "expression_scale": expression_scale,
    }
    return write_bundle(
        out, config=cfg, tasks=tasks,
        encoder=encoder or {"name": "builtin-he", "version": "1.0", "dim": patch_dim},
        tiling=_params(TilingParams, tiling), tissue=_params(TissueParams, tissue), genomics=genomics,
        cohort_summary={"n_cases": n_cases, "projects": sorted(set(cases.project)), "synthetic": True,
                        "source": "random test bundle (untrained)"},
        model_card="# Random test bundle\n\nUntrained, random weights and a fake synthetic cohort. "
                   "For tests only; its predictions mean nothing.\n")


__all__ = ["make_random_bundle", "random_cases"]
