"""In-memory training data: patch bags per case, fold-scaled genomics, task targets.

Cohorts here are at most a few thousand cases; a case's patch bags (all its slides) are read once
into memory. Several slides of one case form one bag: the second slide's grid positions are shifted
to the right of the first (positions only encode geometry within a slide, so the offset just keeps
the slides apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from msrl_model.cohort import Cohort, ExpressionScaler, assign_bins, survival_bins
from msrl_model.errors import CohortError
from msrl_model.nn.genomics import gather_groups, pathway_scores
from msrl_model.nn.msrl import SlideBatch, TaskSpec
from msrl_model.nn.slide_encoder import grid_positions, pad_bags, subsample_patches
from msrl_model.progress import Job, Progress, Stage
from msrl_model.train.distributed import keyed_generator

# Grid columns left empty between two slides of one case.
SLIDE_GAP = 4


@dataclass
class Bags:
    """Patch bags of every case of a cohort (row i = ``Cohort.cases`` row i)."""

    features: list[Tensor]  # per case (N_i, patch_dim) float32
    positions: list[Tensor]  # per case (N_i, 2) long grid (row, col)

    @property
    def patch_dim(self) -> int:
        return int(self.features[0].shape[1])

    def patch_stats(self, cases: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and std (each (patch_dim,)) over every patch of ``cases`` (the training fold)."""
        x = torch.cat([self.features[i] for i in cases]).double()  # (Σ N_i, patch_dim)
        return x.mean(0).float(), x.std(0, unbiased=False).float()

    def batch(self, cases: Sequence[int], max_patches: int = 0, generator: torch.Generator | None = None,
              key: tuple[int, ...] | None = None) -> SlideBatch:
        """A padded :class:`SlideBatch` of ``cases``; each bag subsampled to ``max_patches`` (0 = all).

        The subsets come from ``generator`` (one stream through the cases in order) or, when ``key``
        is given, from :func:`~msrl_model.train.distributed.keyed_generator` ``(*key, case)``: the
        same subset of a case however the cases are split into batches or across processes.
        """
        feats, pos = [], []
        for i in cases:
            gen = keyed_generator(*key, int(i)) if key is not None else generator
            sel = subsample_patches(self.features[i].shape[0], max_patches, gen)
            feats.append(self.features[i][sel])
            pos.append(self.positions[i][sel])
        x, p, mask = pad_bags(feats, pos)
        return SlideBatch(x, p, mask, [int(f.shape[0]) for f in feats])


def load_bags(cohort: Cohort) -> Job[Bags]:
    """Read every case's feature files (a generator of Progress; returns :class:`Bags`).

    The files are ``Cohort.feature_paths``, found by the cohort's one resolver
    (``cohort/featuresource.py``: features/, TRIDENT or CLAM trees read in place), so training reads
    exactly the files validation checked; ``read_features`` reads .h5 (fp16 → float32) and CLAM .pt.
    """
    from msrl_model.features.h5io import read_features

    missing = [c for c in cohort.case_ids if not cohort.case_feature_paths(c)]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise CohortError(f"{len(missing)} case(s) have no feature file ({shown}); run "
                          "`msrl extract` on their slides first")
    features: list[Tensor] = []
    positions: list[Tensor] = []
    dim = None
    n = cohort.n_cases
    yield Progress(Stage.READ_FEATURES, 0, n, "")
    for i, case in enumerate(cohort.case_ids):
        feats, pos = [], []
        col0 = 0
        for path in cohort.case_feature_paths(case):
            ff = read_features(path)
            if dim is None:
                dim = ff.features.shape[1]
            if ff.features.shape[1] != dim:
                raise CohortError(f"{path.name} has {ff.features.shape[1]}-d features, other slides have "
                                  f"{dim}-d; extract every slide with the same encoder")
            if len(ff.features) == 0:
                continue
            size = int(ff.attrs.get("patch_size_level0") or ff.attrs.get("patch_size") or 256)
            grid = grid_positions(ff.coords, size)  # (N, 2) (row, col)
            grid[:, 1] += col0
            col0 = int(grid[:, 1].max()) + 1 + SLIDE_GAP
            feats.append(torch.from_numpy(np.ascontiguousarray(ff.features, dtype=np.float32)))
            pos.append(grid)
        if not feats:
            raise CohortError(f"case {case} has only empty feature files; re-extract its slides")
        features.append(torch.cat(feats))
        positions.append(torch.cat(pos))
        yield Progress(Stage.READ_FEATURES, i + 1, n, case)
    return Bags(features, positions)


@dataclass
class FoldGenomics:
    """Expression of every case scaled with a scaler fitted on the training cases only."""

    scaler: ExpressionScaler  # fitted on the training fold
    packed: Tensor  # (n_cases, Σ group sizes) z-scored values per group (gather_groups)
    pathways: Tensor  # (n_cases, n_groups) pathway activity (mean z-score per group)


def fold_genomics(cohort: Cohort, train: np.ndarray) -> FoldGenomics:
    """Fit the per-gene z-scoring on ``train`` cases and transform every case with it."""
    scaler = ExpressionScaler().fit(cohort.expression[train])
    z = torch.from_numpy(scaler.transform(cohort.expression))  # (n_cases, G)
    return FoldGenomics(scaler, gather_groups(z, cohort.gene_groups), pathway_scores(z, cohort.gene_groups))


@dataclass
class TaskTargets:
    """Targets of one task for every case (invalid where the label is missing)."""

    spec: TaskSpec  # task (survival bin edges fitted on the training cases)
    y: np.ndarray  # (n_cases,) int64 survival bin or class index, -1 = missing label
    censorship: np.ndarray  # (n_cases,) int64 (survival; zeros for classification)
    times: np.ndarray  # (n_cases,) float64 survival months

    def valid(self, cases: np.ndarray) -> np.ndarray:
        """The cases among ``cases`` that have a label for this task."""
        cases = np.asarray(cases, dtype=np.int64)
        return cases[self.y[cases] >= 0]


def task_targets(cohort: Cohort, task: str, train: np.ndarray, n_bins: int = 4) -> TaskTargets:
    """Targets of ``task`` ("survival" or a label column); survival bins fitted on ``train`` only."""
    times, cens = cohort.times, cohort.censorship
    if task == "survival":
        edges = survival_bins(times[train], cens[train], n_bins)
        spec = TaskSpec("survival", "survival", bin_edges=tuple(float(e) for e in edges))
        return TaskTargets(spec, assign_bins(times, edges), cens, times)
    if task not in cohort.labels:
        raise CohortError(f"task {task!r} is not a label column of the cohort; available: "
                          f"survival, {', '.join(sorted(cohort.labels))}")
    classes = tuple(cohort.labels[task])
    if len(classes) < 2:
        raise CohortError(f"label {task!r} has fewer than two classes; it cannot be a task")
    return TaskTargets(TaskSpec(task, "classification", classes=classes), cohort.label_codes(task),
                       np.zeros(cohort.n_cases, np.int64), times)


__all__ = ["Bags", "FoldGenomics", "TaskTargets", "fold_genomics", "load_bags", "task_targets"]
