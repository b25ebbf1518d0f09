"""The tiles an interrupted extraction kept: ``<slide_id>.partial.h5`` beside the feature file.

When :func:`~msrl_model.features.pipeline.extract_slide` is stopped part-way (cancel, Ctrl+C, an
error) it writes the features of the grid's first k finished tiles, their coordinates and the cache
key here (:func:`write_partial`); the next run with the same key and grid reads them back
(:func:`read_partial`) and encodes only the rest. Anything else (another key, another grid, an
unreadable file) is ignored and replaced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msrl_model.errors import MSRLError
from msrl_model.features.h5io import read_features, write_features

PARTIAL_SUFFIX = ".partial.h5"


def partial_path(out: Path) -> Path:
    """Where the tiles of an interrupted extraction of ``out`` are kept: ``<slide_id>.partial.h5``."""
    return out.with_name(out.stem + PARTIAL_SUFFIX)


def read_partial(path: Path, key: str, coords: np.ndarray, dim: int) -> np.ndarray | None:
    """The first k rows' features (k, D) of an interrupted run with this cache key and grid, else None."""
    if not path.is_file():
        return None
    try:
        kept = read_features(path)
    except (MSRLError, OSError):
        return None
    k = len(kept.coords)
    if (kept.attrs.get("cache_key") != key or kept.features.ndim != 2 or kept.features.shape[1] != dim
            or not 0 < k <= len(coords) or not np.array_equal(kept.coords, coords[:k])):
        return None
    return np.asarray(kept.features, dtype=np.float32)


def write_partial(path: Path, finished: np.ndarray, coords: np.ndarray, key: str) -> None:
    """Keep the first ``len(finished)`` tiles' features (k, D) of the grid ``coords`` (N, 2) under ``key``."""
    write_features(path, finished, coords[:len(finished)], {"cache_key": key, "partial_of": len(coords)})


__all__ = ["PARTIAL_SUFFIX", "partial_path", "read_partial", "write_partial"]
