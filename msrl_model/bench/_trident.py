"""The cohort of ``bench train``: SYNTHETIC tables and random float16 features in TRIDENT's layout.

``ROOT/`` holds ``clinical.csv`` (one slide per case), ``expression.csv`` and the ``.gmt`` of the
synthetic latent model (:mod:`msrl_model.synth`), and ``cohort.json`` naming the TRIDENT job directory
``trident/`` as the features source (architecture §3, read in place). The job directory has TRIDENT's
tree, ``trident/20x_256px_0px_overlap/features_random<D>/<slide_id>.h5``: ``features`` (N×D float16)
and ``coords`` (N×2 int64, a compact blob of a 40× scan's 512 px cells) with TRIDENT's attributes on
``coords``. Slide ``i`` has ``N_i`` patches drawn uniformly from [P/3, 5P/3] (mean ≈ P).

Features are standard-normal noise, written in blocks of :data:`BLOCK_ROWS` rows, so writing costs
memory of one block whatever the cohort size (400 × 9,000 × 1,024 fp16 is ~7.4 GB on disk). Each file
is written under a temporary name and renamed when complete, and ``bench_cohort.json`` is written
last: a later run with the same parameters reuses the cohort (``--keep``), a partial one is redone.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msrl_model.cohort.gmt import write_gmt
from msrl_model.errors import MSRLError
from msrl_model.features.h5io import trident_coords_attrs
from msrl_model.files import atomic_path, atomic_write, check_writable
from msrl_model.progress import Job, Progress, Stage
from msrl_model.synth.bags import grid_coords
from msrl_model.synth.cohort import GMT_NAME, SynthCohortConfig, project_names, sample_cases
from msrl_model.synth.latents import make_gene_sets, sample_expression

TRIDENT_SETTING = "20x_256px_0px_overlap"  # TRIDENT's folder for 256 px patches at 20x, no overlap
JOB_DIR = "trident"  # the job directory inside the cohort directory
LEVEL0_PATCH = 512  # a 256 px patch at 20x covers 512 level-0 px of a 40x scan
BLOCK_ROWS = 8192  # feature rows generated and written at a time
MARKER = "bench_cohort.json"  # the parameters of a finished cohort (written last)
WRITER_VERSION = 1  # bump when the layout changes: older cohorts are rewritten


@dataclass
class BenchCohort:
    """A written (or reused) benchmark cohort."""

    root: Path  # the cohort directory (``--cohort`` of the training run)
    feature_dir: Path  # ``trident/20x_256px_0px_overlap/features_random<D>``
    patches: np.ndarray  # (cases,) patches of each slide
    dim: int  # feature dimension
    bytes: int  # size of the feature files on disk
    write_s: float  # seconds spent writing (0 when reused)
    reused: bool  # True: an identical cohort was already there

    @property
    def cases(self) -> int:
        return int(len(self.patches))


def patch_counts(cases: int, patches: int, seed: int) -> np.ndarray:
    """Patches per slide: uniform integers in [P/3, 5P/3] (at least 1), deterministic for ``seed``."""
    rng = np.random.default_rng([seed, 101])
    return rng.integers(max(1, round(patches / 3)), max(1, round(5 * patches / 3)) + 1, size=cases)


def feature_bytes(counts: np.ndarray, dim: int) -> int:
    """About the bytes the feature files take: fp16 features, int64 coords, HDF5 overhead."""
    return int(counts.sum()) * (2 * dim + 16) + 8192 * len(counts)


def _write_tables(root: Path, cases: int, seed: int) -> list[str]:
    """clinical.csv, expression.csv, the .gmt and cohort.json; returns the slide ids in order."""
    n_projects = 2 if cases >= 8 else 1
    config = SynthCohortConfig(n_cases=cases, n_projects=n_projects, seed=seed, second_slide_fraction=0.0)
    synth = sample_cases(config)
    names = project_names(n_projects)
    slide_ids = [slide_id for _, _, slide_id in synth.slides()]
    pd.DataFrame({
        "case_id": synth.case_ids, "slide_id": slide_ids,
        "project": [names[p] for p in synth.latents.project],
        "survival_months": synth.months, "censorship": synth.censorship.astype(np.int64),
        "stage": synth.labels["stage"],
    }).to_csv(root / "clinical.csv", index=False)
    sets = make_gene_sets(seed, config.genes_per_group)
    genes, counts = sample_expression(synth.latents, sets, n_projects, seed)
    write_gmt(root / GMT_NAME, sets)
    expression = pd.DataFrame(counts, columns=genes)
    expression.insert(0, "case_id", synth.case_ids)
    expression.to_csv(root / "expression.csv", index=False)
    atomic_write(root / "cohort.json", json.dumps({
        "name": f"bench-{cases}c-seed{seed}", "synthetic": True, "expression_scale": "raw",
        "description": "SYNTHETIC benchmark cohort (`python -m msrl_model.bench train`): random float16 features "
                       "in TRIDENT's layout; not patient data.",
        "gene_sets": GMT_NAME, "features": JOB_DIR}, indent=2) + "\n")
    return slide_ids


def _write_slide(path: Path, slide_id: str, n: int, dim: int, rng: np.random.Generator) -> None:
    """One TRIDENT feature file: fp16 features in blocks, int64 coords with TRIDENT's attributes."""
    import h5py

    coords = grid_coords(n, rng, LEVEL0_PATCH)  # (n, 2) level-0 (x, y)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", locking=False) as f:  # atomic_path holds the lock
        features = f.create_dataset("features", shape=(n, dim), dtype=np.float16)
        for start in range(0, n, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, n - start)
            features[start:start + rows] = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
        features.attrs.update({"name": slide_id, "savetodir": str(path.parent)})
        c = f.create_dataset("coords", data=coords)
        c.attrs.update(trident_coords_attrs({"patch_size": 256, "patch_size_level0": LEVEL0_PATCH,
                                             "level0_mpp": 0.25, "target_mpp": 0.5}))  # 40x scan, 20x patches
        c.attrs.update({"name": slide_id, "level0_width": int(coords[:, 0].max()) + LEVEL0_PATCH,
                        "level0_height": int(coords[:, 1].max()) + LEVEL0_PATCH})


def _prepare(root: Path) -> None:
    """Empty ``root`` for a new cohort: only a folder holding nothing or an earlier bench cohort."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file() and not (root / JOB_DIR).is_dir():
            raise MSRLError(f"{root} is not empty and holds no benchmark cohort; give an empty or new --workdir")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def write_cohort_job(root: str | Path, cases: int, patches: int, dim: int, seed: int = 0) -> Job[BenchCohort]:
    """Write (or reuse) the benchmark cohort in ``root``; yields ``feature bags`` progress per slide.

    OutputError before any writing when ``root``'s disk lacks the space for the features."""
    root = Path(root)
    counts = patch_counts(cases, patches, seed)
    params = {"version": WRITER_VERSION, "cases": cases, "patches": patches, "dim": dim, "seed": seed}
    feature_dir = root / JOB_DIR / TRIDENT_SETTING / f"features_random{dim}"
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == params:
        yield Progress(Stage.FEATURE_BAGS, cases, cases, "reused")
        size = sum(p.stat().st_size for p in feature_dir.glob("*.h5"))
        return BenchCohort(root, feature_dir, counts, dim, size, 0.0, reused=True)
    _prepare(root)
    check_writable(root, feature_bytes(counts, dim))
    t0 = time.perf_counter()
    slide_ids = _write_tables(root, cases, seed)
    rng = np.random.default_rng([seed, 102])
    yield Progress(Stage.FEATURE_BAGS, 0, cases, "random float16 features")
    for i, (slide_id, n) in enumerate(zip(slide_ids, counts), start=1):
        _write_slide(feature_dir / f"{slide_id}.h5", slide_id, int(n), dim, rng)
        yield Progress(Stage.FEATURE_BAGS, i, cases, slide_id)
    atomic_write(marker, json.dumps(params) + "\n")
    size = sum(p.stat().st_size for p in feature_dir.glob("*.h5"))
    return BenchCohort(root, feature_dir, counts, dim, size, time.perf_counter() - t0, reused=False)
