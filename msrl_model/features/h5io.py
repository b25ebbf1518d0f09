"""Feature files (architecture §3): ``<slide_id>.h5`` with ``features`` (N×D float32) and ``coords`` (N×2 int64).

Written atomically: the HDF5 file is built in memory (h5py on a :class:`io.BytesIO`, so the HDF5
library never writes onto the real file system - a full disk under HDF5's own writer can crash the
process) and its bytes go through :func:`msrl_model.files.atomic_write`: a temporary file in the
destination directory, renamed over the target only once it is complete and closed. A failure
part-way (disk full, cancel, crash) leaves either the previous file or nothing, never a partial
file, and a full disk or a read-only folder is an ordinary :class:`~msrl_model.errors.OutputError`.

Reading can be bounded (``max_rows``): the declared shapes are checked before any array is read.

Reads this tool's files and the CLAM/TRIDENT style: attributes may sit on the root, on ``coords`` or
on ``features``; datasets may carry a leading batch dimension of 1 (``1×N×D``, ``1×N×2``); missing
attributes get defaults (and ``TRIDENT``'s magnifications are turned into µm/px). fp16 features (as
TRIDENT writes them under fp16 autocast) are read as float32. TRIDENT's h5 path cannot hold bf16 (it
converts features with ``.numpy()``, which refuses bf16); an h5 with bf16 stored as raw uint16/void is
not a documented layout and is not decoded (an opaque dtype is refused by cohort validation).

``<slide_id>.pt`` (CLAM ``pt_files/``, TRIDENT ``saveas='pt'``): a torch tensor N×D (or 1×N×D; any
float dtype incl. bf16/fp16), or a dict with ``features`` (and optionally ``coords``), read only with
``torch.load(path, weights_only=True, map_location="cpu")`` - never an unrestricted pickle. A bare
tensor has no coordinates: patches are laid out on a stand-in square grid (attr ``coords_synthetic``),
which is enough to train, but the heat-map and tiling checks need real coords (CLAM ``h5_files/``).

Written files also carry TRIDENT's attributes on ``coords`` (``patch_size``, ``patch_size_level0``,
``level0_magnification``, ``target_magnification``, ``overlap``) so TRIDENT-based tools read them;
magnification = 10 / mpp (the usual convention: 0.25 µm/px ≈ 40×, 0.5 µm/px ≈ 20×), an int when
within 0.05 of one. The root attributes stay the source of truth for this tool's reader.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msrl_model.errors import MSRLError
from msrl_model.files import atomic_write

# Version of the layout written here; bump when the datasets or attribute meanings change.
FORMAT_VERSION = 1

# Defaults for attributes absent from files written by other tools.
DEFAULT_ATTRS: dict[str, Any] = {
    "patch_size": 256,
    "target_mpp": 0.5,
    "encoder": "unknown",
    "encoder_version": "",
    "slide_sha256_head": "",
}


class FeatureFileError(MSRLError):
    """A feature file is missing, unreadable or not in a known layout."""


@dataclass
class FeatureFile:
    """The content of one feature file."""

    features: np.ndarray  # (N, D) float32 patch features
    coords: np.ndarray  # (N, 2) int64 level-0 top-left pixel of each patch
    attrs: dict[str, Any] = field(default_factory=dict)  # metadata, JSON attrs decoded to dicts


def _encode_attr(value: Any) -> Any:
    """h5 attributes hold scalars and strings; containers are stored as JSON text."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    return value


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def write_features(path: str | Path, features: np.ndarray, coords: np.ndarray,
                   attrs: dict[str, Any] | None = None) -> Path:
    """Write a feature file atomically and return its path.

    Args:
        path: destination ``.h5``; its directory is created if needed.
        features: (N, D) array, stored as float32.
        coords: (N, 2) array of level-0 top-left pixels, stored as int64.
        attrs: root attributes; dicts/lists are stored as JSON strings.
    """
    import h5py

    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(features) != len(coords):
        raise ValueError(f"features must be (N, D) and coords (N, 2); got {features.shape} and {coords.shape}")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:  # in memory: HDF5 never writes to the file system itself
        f.create_dataset("features", data=features)
        cset = f.create_dataset("coords", data=coords)
        for key, value in trident_coords_attrs(attrs or {}).items():
            cset.attrs[key] = value
        f.attrs["format_version"] = FORMAT_VERSION
        for key, value in (attrs or {}).items():
            f.attrs[key] = _encode_attr(value)
    with buffer.getbuffer() as data:
        atomic_write(path, data)
    return path


def _magnification(mpp: float) -> int | float:
    """10 / mpp (0.25 µm/px ≈ 40×, 0.5 ≈ 20×), an int when within 0.05 of one."""
    mag = 10.0 / float(mpp)
    return int(round(mag)) if abs(mag - round(mag)) < 0.05 else round(mag, 2)


def trident_coords_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """TRIDENT's ``coords`` attributes computed from this tool's root attributes (those it can)."""
    out: dict[str, Any] = {}
    try:
        if attrs.get("patch_size") is not None:
            out["patch_size"] = int(attrs["patch_size"])
        if attrs.get("patch_size_level0") is not None:
            out["patch_size_level0"] = int(attrs["patch_size_level0"])
        if attrs.get("level0_mpp"):
            out["level0_magnification"] = _magnification(attrs["level0_mpp"])
        if attrs.get("target_mpp"):
            out["target_magnification"] = _magnification(attrs["target_mpp"])
    except (TypeError, ValueError):
        return {}
    if out:
        out["overlap"] = 0  # this tool's grid never overlaps (slide/tiling.py)
    return out


def expected_size(n: int, dim: int) -> int:
    """About the bytes of a feature file of ``n`` patches of ``dim`` features (free-space checks)."""
    return int(n) * (int(dim) * 4 + 16) + 64 * 1024


def _rows(shape: tuple[int, ...], name: str) -> int:
    """Rows a dataset of ``shape`` holds once a leading batch dimension of 1 is dropped."""
    shape = tuple(shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if name == "features" and len(shape) == 1:
        return 1
    return int(shape[0]) if shape else 0


def cache_problem(path: str | Path, key: str, encoder: str, encoder_version: str, dim: int,
                  max_rows: int | None = None) -> str | None:
    """Why the feature file at ``path`` cannot serve as the cached result for ``key``, or None.

    Checks the content, not only the key: the cache key, the encoder name and version, ``features``
    N×D with D = ``dim``, ``coords`` N×2, the same N ≥ 1 (and at most ``max_rows``), floating-point
    features. Reads only metadata (no arrays).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                return "no features/coords datasets"
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
            if attrs.get("cache_key") != key:
                return "another cache key"
            if attrs.get("encoder") != encoder or str(attrs.get("encoder_version")) != str(encoder_version):
                return "other or missing encoder attributes"
            fs, cs = tuple(f["features"].shape), tuple(f["coords"].shape)
            if len(fs) != 2 or fs[1] != dim or f["features"].dtype.kind != "f":
                return f"features of shape {fs}, expected N×{dim} floats"
            if len(cs) != 2 or cs[1] != 2 or cs[0] != fs[0] or fs[0] < 1:
                return f"coords of shape {cs} do not match features {fs}"
            if max_rows is not None and fs[0] > max_rows:
                return f"{fs[0]} patches, more than {max_rows}"
    except (OSError, KeyError, ValueError, TypeError) as err:
        return f"unreadable ({type(err).__name__})"
    return None


def _squeeze_batch(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    # CLAM/TRIDENT sometimes store (1, N, D) / (1, N, 2): drop the leading batch dimension.
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 1 and name == "features":
        array = array[None, :]  # a single patch stored as (D,)
    if array.ndim != 2:
        raise FeatureFileError(f"{path}: dataset '{name}' has shape {array.shape}, expected 2-D; "
                               "re-extract the features with `msrl extract`")
    return array


def read_features(path: str | Path, *, load_features: bool = True, max_rows: int | None = None) -> FeatureFile:
    """Read a feature file written by this tool, CLAM or TRIDENT.

    Args:
        path: the ``.h5`` file.
        load_features: False reads only coords and attrs (features is then an empty (0, D) array),
            which is what cache checks need.
        max_rows: refuse (FeatureFileError) a file declaring more patches than this, before reading
            any array (a hostile or mistaken file cannot exhaust memory).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file not found; run `msrl extract` on the slide first")
    if path.suffix.lower() == ".pt":
        return _read_pt(path, load_features=load_features, max_rows=max_rows)
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise FeatureFileError(f"{path}: no 'features'/'coords' datasets; this is not a feature "
                                       "file from msrl, CLAM or TRIDENT")
            if max_rows is not None:
                n = max(_rows(f["features"].shape, "features"), _rows(f["coords"].shape, "coords"))
                if n > max_rows:
                    raise FeatureFileError(
                        f"{path}: {n} patches, more than the limit of {max_rows} per slide; check the "
                        "file (re-extract it with `msrl extract`) or raise the limit with --max-patches")
            attrs: dict[str, Any] = {}
            # Precedence: root attrs (ours) over coords attrs (CLAM/TRIDENT) over features attrs.
            for source in (f["features"].attrs, f["coords"].attrs, f.attrs):
                for key, value in source.items():
                    attrs[key] = _decode_attr(value)
            coords = _squeeze_batch(np.asarray(f["coords"][()]), "coords", path).astype(np.int64)
            dset = f["features"]
            if load_features:
                features = _squeeze_batch(np.asarray(dset[()]), "features", path).astype(np.float32)
            else:
                features = np.zeros((0, dset.shape[-1]), dtype=np.float32)
    except FeatureFileError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise FeatureFileError(f"{path}: cannot read the feature file ({err}); delete it and extract again") from err
    if coords.shape[1] != 2 or (load_features and len(features) != len(coords)):
        raise FeatureFileError(f"{path}: features {features.shape} and coords {coords.shape} disagree; "
                               "delete the file and extract again")
    _fill_defaults(attrs)
    return FeatureFile(features=features, coords=coords, attrs=attrs)


def _read_pt(path: Path, *, load_features: bool, max_rows: int | None) -> FeatureFile:
    """A ``.pt`` feature file (CLAM ``pt_files/``): a tensor N×D, or a dict with ``features`` [and
    ``coords``], loaded with ``weights_only=True`` only. Without coords, a stand-in square grid."""
    import pickle

    import torch

    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FeatureFileError(f"{path}: cannot read the .pt feature file with weights_only=True ({first}); "
                               "save the features as a plain torch tensor (N×D) or use the .h5 files") from err
    coords = None
    attrs: dict[str, Any] = {}
    if isinstance(obj, dict):
        coords, obj = obj.get("coords"), obj.get("features")
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point():
        raise FeatureFileError(f"{path}: a .pt feature file must hold a float tensor N×D (or a dict with "
                               f"'features'); found {type(obj).__name__}")
    features = _squeeze_batch(obj.detach().float().numpy(), "features", path)
    n = len(features)
    if max_rows is not None and n > max_rows:
        raise FeatureFileError(f"{path}: {n} patches, more than the limit of {max_rows} per slide; check the "
                               "file or raise the limit with --max-patches")
    if isinstance(coords, torch.Tensor):
        coords = _squeeze_batch(coords.detach().cpu().numpy(), "coords", path).astype(np.int64)
    else:  # no coordinates: a square stand-in grid (training only; no heat-map, no tiling check)
        side = max(1, int(np.ceil(np.sqrt(n))))
        index = np.arange(n)
        size = int(DEFAULT_ATTRS["patch_size"])
        coords = np.stack([(index % side) * size, (index // side) * size], axis=1).astype(np.int64)
        attrs["coords_synthetic"] = True
    if coords.shape != (n, 2):
        raise FeatureFileError(f"{path}: features {features.shape} and coords {coords.shape} disagree")
    if not load_features:
        features = np.zeros((0, features.shape[1]), dtype=np.float32)
    _fill_defaults(attrs)
    return FeatureFile(features=np.ascontiguousarray(features, dtype=np.float32), coords=coords, attrs=attrs)


def _fill_defaults(attrs: dict[str, Any]) -> None:
    """Complete the architecture §3 attributes from the other tools' names, else defaults."""
    if "target_mpp" not in attrs and attrs.get("target_magnification"):
        attrs["target_mpp"] = 10.0 / float(attrs["target_magnification"])  # 20× ≈ 0.5 µm/px
    if "level0_mpp" not in attrs and attrs.get("level0_magnification"):
        attrs["level0_mpp"] = 10.0 / float(attrs["level0_magnification"])
    for key, value in DEFAULT_ATTRS.items():
        attrs.setdefault(key, value)
    if "patch_size_level0" not in attrs:
        # CLAM stores patch_level + downsample; else assume the patch was cut at level 0.
        downsample = attrs.get("downsample")
        factor = float(np.ravel(downsample)[0]) if downsample is not None else 1.0
        attrs["patch_size_level0"] = int(round(int(attrs["patch_size"]) * factor))
    attrs.setdefault("level0_mpp", attrs["target_mpp"] * attrs["patch_size"] / attrs["patch_size_level0"])
