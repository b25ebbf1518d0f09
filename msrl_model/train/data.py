"""Training data: patch bags per case (held in memory or streamed from their feature files),
fold-scaled genomics, task targets.

**Bags** (:class:`Bags`, row i = ``Cohort.cases`` row i). Several slides of one case form one bag:
the second slide's grid positions are shifted to the right of the first by its width plus
``SLIDE_GAP`` columns (positions only encode geometry within a slide, so the offset just keeps the
slides apart). Features keep the precision they are stored in (fp16, bf16, float32) in every batch;
:meth:`~msrl_model.nn.msrl.SlideBatch.to` makes them float32 once they are on the device.

:func:`load_bags` holds the cohort's bags one of two ways, decided for the whole cohort and stated in
the log:

* **in memory** when all bags (features as stored + grid positions) fit in
  ``TrainSettings.bag_cache_mb``: small cohorts, every file read once;
* **streamed** otherwise: per case only its files, their row counts and grid-column offsets are
  kept, and a batch reads the rows it uses from disk, so memory does not grow with the number of
  cases. CLAM ``.pt`` files are read whole (``read_features``, ``weights_only``) when needed.

Reading a row subset of an h5 ``features`` dataset (:func:`_read_h5_rows`), measured on 9,000 ×
1024 fp16 rows with the page cache warm, 1 thread, ms per read:

=========================  ======  ======  ======  ======  =====================
layout / rows read          256    1,024   4,096   8,000   whole (9,000)
=========================  ======  ======  ======  ======  =====================
contiguous: point (fancy)    1.0     2.0     4.5     6.9
contiguous: span + pick      2.3     2.6     3.1     4.4    2.4
row chunks (1, D): fancy    14      70      262     353
row chunks (1, D): runs      3.3    11.7    34.8    38.3    45
h5py auto chunks: fancy     16      56      185     339
h5py auto chunks: runs       7.4    11.9    14.1    19.5
=========================  ======  ======  ======  ======  =====================

So an unchunked dataset is read by point selection when the rows are sparse in their span and as
one slice otherwise (``SPAN_FRACTION``), and a chunked one (TRIDENT and CLAM write row chunks) as
one slice per run of rows closer together than a chunk's height: h5py's point selection on chunked
data costs ~50 µs a row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from msrl_model.cohort import Cohort, ExpressionScaler, assign_bins, survival_bins
from msrl_model.errors import CohortError
from msrl_model.features.h5io import read_features
from msrl_model.nn.genomics import gather_groups, pathway_scores
from msrl_model.nn.msrl import SlideBatch, TaskSpec
from msrl_model.nn.slide_encoder import grid_positions, pad_bags, subsample_patches
from msrl_model.progress import Job, Progress, Stage
from msrl_model.train.distributed import keyed_generator
from msrl_model.train.settings import TrainSettings

log = logging.getLogger(__name__)

# Grid columns left empty between two slides of one case.
SLIDE_GAP = 4

# An unchunked dataset is read as one slice (then picked) when the rows wanted are at least this
# share of the span they lie in, else by point selection (module docstring).
SPAN_FRACTION = 0.25

# Rows per block when a bag's patch statistics are streamed (a block is converted to float64; small
# blocks stay in the CPU cache: 9,000 × 1024 fp16 took 16 ms in blocks of 256 rows, 150 in 4,096).
STATS_ROWS = 256


def _read_h5_rows(ds: h5py.Dataset, rows: np.ndarray | None) -> np.ndarray:
    """Rows of a ``features`` or ``coords`` dataset, (k, D) in the stored dtype.

    Args:
        ds: (N, D), possibly with leading dimensions of size 1 (``1×N×D``), or (D,) for one patch.
        rows: sorted distinct row indices; None = every row.
    """
    if ds.ndim == 1:  # a single patch stored as (D,)
        whole = np.asarray(ds[()])[None]
        return whole if rows is None else whole[rows]
    lead = (0,) * (ds.ndim - 2)
    if rows is None:
        return np.asarray(ds[lead])
    if len(rows) == 0:
        return np.empty((0, ds.shape[-1]), ds.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if ds.chunks is None:
        if len(rows) >= SPAN_FRACTION * (hi - lo):
            return np.asarray(ds[lead + (slice(lo, hi),)])[rows - lo]
        return np.asarray(ds[lead + (rows,)])
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > ds.chunks[-2]) + 1)
    return np.concatenate([np.asarray(ds[lead + (slice(int(r[0]), int(r[-1]) + 1),)])[r - r[0]] for r in runs])


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


@dataclass(frozen=True)
class BagFile:
    """One feature file of a streamed bag (what is kept of it between reads)."""

    path: Path  # the .h5 or CLAM .pt file
    rows: int  # patches in the file (N_f >= 1)
    patch_size_level0: int  # level-0 patch side: coords // it = grid cells
    col_offset: int  # grid columns added to this slide's cells (its case's earlier slides + SLIDE_GAP)

    def read(self, rows: np.ndarray | None) -> tuple[Tensor, Tensor]:
        """Features (k, P) in the stored dtype (float32 for a .pt) and grid positions (k, 2) long of
        ``rows`` (sorted distinct indices into this file; None = all)."""
        if self.path.suffix.lower() == ".pt":
            ff = read_features(self.path)
            feats, coords = ff.features, ff.coords
            if rows is not None:
                feats, coords = feats[rows], coords[rows]
        else:
            with h5py.File(self.path, "r") as f:
                feats, coords = _read_h5_rows(f["features"], rows), _read_h5_rows(f["coords"], rows)
        grid = grid_positions(coords.astype(np.int64), self.patch_size_level0)  # (k, 2) (row, col)
        grid[:, 1] += self.col_offset
        return torch.from_numpy(np.ascontiguousarray(feats)), grid

    def blocks(self) -> Iterator[Tensor]:
        """The file's features in blocks of at most ``STATS_ROWS`` rows, (b, P) in the stored dtype."""
        if self.path.suffix.lower() == ".pt":
            yield torch.from_numpy(read_features(self.path).features)
            return
        with h5py.File(self.path, "r") as f:
            for start in range(0, self.rows, STATS_ROWS):
                rows = np.arange(start, min(start + STATS_ROWS, self.rows))
                yield torch.from_numpy(_read_h5_rows(f["features"], rows))


class _MemoryBag:
    """A bag held in memory: features (N, P) in the stored dtype, grid positions (N, 2) long."""

    def __init__(self, features: Tensor, positions: Tensor) -> None:
        self.features, self.positions = features, positions

    def read(self, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        if rows is None:
            return self.features, self.positions
        return self.features[rows], self.positions[rows]

    def blocks(self) -> Iterator[Tensor]:
        for start in range(0, self.features.shape[0], STATS_ROWS):
            yield self.features[start:start + STATS_ROWS]


class _FileBag:
    """A bag streamed from its feature files (its slides, in order)."""

    def __init__(self, files: Sequence[BagFile]) -> None:
        self.files = tuple(files)
        self.starts = np.cumsum([0] + [f.rows for f in self.files])  # (n_files + 1,) first row of each file

    def read(self, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        wanted, inverse = None, None  # sorted distinct rows to read (None = all); their order in ``rows``
        if rows is not None:
            unique, inverse = torch.unique(rows, sorted=True, return_inverse=True)
            if len(unique) < self.starts[-1]:
                wanted = unique.numpy()
        feats, pos = [], []
        for k, file in enumerate(self.files):
            sub = None
            if wanted is not None:
                lo, hi = np.searchsorted(wanted, self.starts[k:k + 2])
                if lo == hi:
                    continue
                sub = wanted[lo:hi] - self.starts[k]
            f, p = file.read(sub)
            feats.append(f)
            pos.append(p)
        x, grid = (feats[0], pos[0]) if len(feats) == 1 else (torch.cat(feats), torch.cat(pos))
        return (x, grid) if inverse is None else (x[inverse], grid[inverse])

    def blocks(self) -> Iterator[Tensor]:
        for file in self.files:
            yield from file.blocks()


_Moments = tuple[int, Tensor, Tensor]  # (n, mean (P,), M2 (P,)) float64: count, mean, Σ squared deviations


def _merge_moments(a: _Moments, b: _Moments) -> _Moments:
    """Chan et al.'s pairwise update: the moments of the union of two sets of rows."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    if n_a == 0:
        return b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta.square() * (n_a * n_b / n)


class Bags:
    """Patch bags of every case of a cohort (row i = ``Cohort.cases`` row i), in memory or streamed.

    Built by :func:`load_bags` (from the cohort's feature files) or :meth:`from_tensors`. Every read
    returns features in :attr:`dtype` (the stored precision; a cohort mixing precisions is read in
    the widest) and grid positions (row, col) as long.
    """

    def __init__(self, bags: Sequence[_MemoryBag | _FileBag], lengths: Sequence[int], patch_dim: int,
                 dtype: torch.dtype) -> None:
        self._bags = list(bags)
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (n_cases,) patches per bag
        self.patch_dim = int(patch_dim)  # P, the feature dimension
        self.dtype = dtype  # features as stored (float16 / bfloat16 / float32)
        # Per-case (mean, M2) float64, (n_cases, 2, P), filled on first use (row i valid when _known[i]).
        # One block allocated once: small tensors kept per case between the large temporaries of the
        # streamed reads would fragment the heap (measured: ~8 MB of RSS per case at 1,500 × 384).
        self._moments: Tensor | None = None
        self._known = np.zeros(len(self._bags), dtype=bool)

    @classmethod
    def from_tensors(cls, features: Sequence[Tensor], positions: Sequence[Tensor]) -> Bags:
        """Bags held in memory: features[i] (N_i, P) float (any precision), positions[i] (N_i, 2) long grid."""
        if not features or len(features) != len(positions):
            raise ValueError("Bags.from_tensors needs the same, non-zero number of feature and position tensors")
        dtype = features[0].dtype
        for f in features[1:]:
            dtype = torch.promote_types(dtype, f.dtype)
        bags = [_MemoryBag(f.to(dtype), p.long()) for f, p in zip(features, positions)]
        return cls(bags, [f.shape[0] for f in features], features[0].shape[1], dtype)

    def __len__(self) -> int:
        return len(self._bags)

    @property
    def streamed(self) -> bool:
        """True when the bags are read from their files on demand (False: held in memory)."""
        return any(isinstance(b, _FileBag) for b in self._bags)

    @property
    def stored_mb(self) -> float:
        """MB the bags take as stored (features + positions), whether held or not."""
        per_patch = self.patch_dim * torch.empty(0, dtype=self.dtype).element_size() + 16  # + (row, col) int64
        return float(self.lengths.sum()) * per_patch / 2**20

    def read(self, case: int, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Features (k, P) in :attr:`dtype` and grid positions (k, 2) long of one case's bag.

        Args:
            case: the case (row of the cohort).
            rows: (k,) long indices into the bag, in the order wanted (None = the whole bag). A
                streamed bag reads only these rows (sorted, from each file).

        The whole bag of a case held in memory is returned as held: do not modify it.
        """
        f, p = self._bags[int(case)].read(None if rows is None else torch.as_tensor(rows, dtype=torch.long))
        return f.to(self.dtype), p

    def patch_stats(self, cases: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and std (each (patch_dim,) float32) over every patch of ``cases`` (the
        training fold), streamed: float64 moments per case (computed once, merged pairwise), never
        the fold's patches at once."""
        total: _Moments = (0, torch.zeros(self.patch_dim, dtype=torch.float64),
                           torch.zeros(self.patch_dim, dtype=torch.float64))
        for i in cases:
            total = _merge_moments(total, self._case_moments(int(i)))
        n, mean, m2 = total
        if n == 0:
            raise ValueError("patch_stats needs at least one case with patches")
        return mean.float(), (m2 / n).sqrt().float()

    def _case_moments(self, case: int) -> _Moments:
        if self._moments is None:
            self._moments = torch.zeros(len(self._bags), 2, self.patch_dim, dtype=torch.float64)
        if not self._known[case]:
            moments: _Moments = (0, torch.zeros(self.patch_dim, dtype=torch.float64),
                                 torch.zeros(self.patch_dim, dtype=torch.float64))
            for block in self._bags[case].blocks():
                x = block.to(torch.float64, copy=True)  # (b, P), a copy even of float64 bags (changed in place)
                mean = x.mean(0)
                x -= mean  # in place: one float64 block at a time
                moments = _merge_moments(moments, (x.shape[0], mean, x.square_().sum(0)))
            self._moments[case, 0], self._moments[case, 1] = moments[1], moments[2]
            self._known[case] = True
        return int(self.lengths[case]), self._moments[case, 0], self._moments[case, 1]

    def batch(self, cases: Sequence[int], max_patches: int = 0, generator: torch.Generator | None = None,
              key: tuple[int, ...] | None = None) -> SlideBatch:
        """A padded :class:`SlideBatch` of ``cases`` (features in :attr:`dtype`); each bag subsampled to
        ``max_patches`` (0 = all).

        The subsets come from ``generator`` (one stream through the cases in order) or, when ``key``
        is given, from :func:`~msrl_model.train.distributed.keyed_generator` ``(*key, case)``: the
        same subset of a case however the cases are split into batches or across processes.
        """
        feats, pos = [], []
        for i in cases:
            gen = keyed_generator(*key, int(i)) if key is not None else generator
            n = int(self.lengths[int(i)])
            sel = subsample_patches(n, max_patches, gen)
            f, p = self.read(int(i), None if len(sel) == n else sel)
            feats.append(f)
            pos.append(p)
        x, p, mask = pad_bags(feats, pos)
        return SlideBatch(x, p, mask, [int(f.shape[0]) for f in feats])

    def patch_count(self, cases: Sequence[int], max_patches: int = 0) -> int:
        """Patches a batch of ``cases`` holds, each bag subsampled to ``max_patches`` (0 = all)."""
        sizes = self.lengths[np.asarray(cases, dtype=np.int64)]
        return int((np.minimum(sizes, max_patches) if max_patches > 0 else sizes).sum())

    def chunks(self, cases: Sequence[int], *, max_patches: int, max_cases: int, budget: int) -> list[np.ndarray]:
        """``cases`` in order, split into consecutive chunks of one encoder forward each.

        A chunk holds at most ``max_cases`` bags and, padded to its largest bag, at most ``budget``
        patches; a bag larger than the budget is a chunk of its own. A bag counts at most
        ``max_patches`` patches (0 = all), the subset :meth:`batch` takes.
        """
        cases = np.asarray(cases, dtype=np.int64)
        sizes = self.lengths[cases]
        if max_patches > 0:
            sizes = np.minimum(sizes, max_patches)
        out, start, widest = [], 0, 0
        for j, n in enumerate(sizes.tolist()):
            if j > start and (j - start >= max_cases or max(widest, n) * (j - start + 1) > budget):
                out.append(cases[start:j])
                start, widest = j, 0
            widest = max(widest, n)
        if len(cases):
            out.append(cases[start:])
        return out

    def describe(self) -> str:
        """One line for the log: size, precision and how the bags are held."""
        how = "streamed from their files" if self.streamed else "held in memory"
        return (f"{len(self)} bags, {int(self.lengths.sum()):,} patches, {self.patch_dim}-d "
                f"{str(self.dtype).removeprefix('torch.')}, {self.stored_mb:,.1f} MB as stored: {how}")


def _scan_file(path: Path) -> tuple[np.ndarray, int, np.dtype, dict]:
    """(coords (N, 2) int64, feature dim, stored dtype, attrs) of one feature file; an h5's features
    are not read (a CLAM .pt is, whole: it has no other way in)."""
    if path.suffix.lower() == ".pt":
        ff = read_features(path)
        return ff.coords, ff.features.shape[1], ff.features.dtype, ff.attrs
    meta = read_features(path, load_features=False)  # coords and attrs (defaults filled in)
    with h5py.File(path, "r") as f:
        ds = f["features"]
        n = 1 if ds.ndim == 1 else int(ds.shape[-2])
        if ds.dtype.kind != "f" or n != len(meta.coords):
            raise CohortError(f"{path}: features {ds.shape} {ds.dtype} do not match coords {meta.coords.shape}; "
                              "delete the file and extract it again")
        return meta.coords, int(ds.shape[-1]), ds.dtype, meta.attrs


def load_bags(cohort: Cohort, cache_mb: int = TrainSettings().bag_cache_mb) -> Job[Bags]:
    """Open every case's feature files (a generator of Progress; returns :class:`Bags`).

    The files are ``Cohort.feature_paths``, found by the cohort's one resolver
    (``cohort/featuresource.py``: features/, TRIDENT or CLAM trees read in place), so training reads
    exactly the files validation checked. A first pass reads only each file's coords and the shape
    and precision of its features; the bags are then read into memory, in their stored precision,
    when they total at most ``cache_mb`` MB (``TrainSettings.bag_cache_mb``; 0 = always stream), and
    streamed otherwise (module docstring), so a large cohort never has more than one file's features
    in memory while it is opened. The choice is logged.
    """
    missing = [c for c in cohort.case_ids if not cohort.case_feature_paths(c)]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise CohortError(f"{len(missing)} case(s) have no feature file ({shown}); run "
                          "`msrl extract` on their slides first")
    files: list[list[BagFile]] = []
    stored_bytes = 0  # features as stored + grid positions (int64), what holding the bags would cost
    dim, dtype = None, None
    n = cohort.n_cases
    yield Progress(Stage.READ_FEATURES, 0, n, "opening")
    for i, case in enumerate(cohort.case_ids):
        case_files = []
        col0 = 0
        for path in cohort.case_feature_paths(case):
            coords, file_dim, file_dtype, attrs = _scan_file(path)
            dim = file_dim if dim is None else dim
            if file_dim != dim:
                raise CohortError(f"{path.name} has {file_dim}-d features, other slides have "
                                  f"{dim}-d; extract every slide with the same encoder")
            if len(coords) == 0:
                continue
            size = int(attrs.get("patch_size_level0") or attrs.get("patch_size") or 256)
            case_files.append(BagFile(path, len(coords), size, col0))
            col0 = int(grid_positions(coords, size)[:, 1].max()) + 1 + col0 + SLIDE_GAP
            dtype = file_dtype if dtype is None else np.promote_types(dtype, file_dtype)
            stored_bytes += len(coords) * (file_dim * np.dtype(file_dtype).itemsize + 16)
        if not case_files:
            raise CohortError(f"case {case} has only empty feature files; re-extract its slides")
        files.append(case_files)
        yield Progress(Stage.READ_FEATURES, i + 1, n, case)
    torch_dtype = _torch_dtype(dtype)
    lengths = [sum(f.rows for f in case_files) for case_files in files]
    streamed = [_FileBag(f) for f in files]
    if stored_bytes > cache_mb * 2**20:
        bags = Bags(streamed, lengths, dim, torch_dtype)
    else:
        held = []
        yield Progress(Stage.READ_FEATURES, 0, n, "reading into memory")
        for i, bag in enumerate(streamed):
            x, grid = bag.read(None)
            held.append(_MemoryBag(x.to(torch_dtype), grid))
            yield Progress(Stage.READ_FEATURES, i + 1, n, cohort.case_ids[i])
        bags = Bags(held, lengths, dim, torch_dtype)
    log.info("feature bags: %s (bag_cache_mb = %d)", bags.describe(), cache_mb)
    return bags


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


__all__ = ["BagFile", "Bags", "FoldGenomics", "SLIDE_GAP", "TaskTargets", "fold_genomics", "load_bags",
           "task_targets"]
