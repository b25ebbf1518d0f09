"""Feature files of a cohort (architecture §3): every ``features/<slide_id>.h5`` a case uses is opened
and checked while the cohort loads, so that every problem of every file is listed with the rest of
the cohort's problems, before any training starts or any output is written.

Per file: an HDF5 file (this tool's, TRIDENT's or CLAM's layout, as
:func:`~msrl_model.features.h5io.read_features` reads them) with a numeric 2-D ``features`` dataset
(a leading batch dimension of 1 allowed) and ``coords`` (N×2) of the same N, at least one patch,
finite values only (NaN / ±inf rows counted) — scanned in row chunks, so memory stays bounded by a
chunk whatever the cohort's size — and attributes the reader accepts. Across files: one feature
dimension; the expected one is the most common, so the odd files are named, never the first one
just because it came first. Files are the ones :mod:`msrl_model.cohort.featuresource` resolves (the
same training reads); a CLAM ``.pt`` (a bare N×D tensor, ``weights_only=True``) is read whole and
checked for rows, dimension and finite values — it has no coords, so no tiling check applies to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msrl_model.cohort.format import Problems
from msrl_model.errors import MSRLError
from msrl_model.features.provenance import FeatureProvenance, disagreements, read_provenance

# Rows per chunk when scanning features; also bounded in bytes (a hostile D must not blow memory).
CHUNK_ROWS = 8192
CHUNK_BYTES = 64 << 20


@dataclass
class FeatureCheck:
    """The problems of one feature file (empty = usable) and its dimension when its shape is valid."""

    name: str  # how the file is named in messages, e.g. "features/S1.h5"
    n_rows: int | None = None  # patches (rows of features) when the shape is readable
    dim: int | None = None  # feature dimension D when the shape is readable
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, sentence)
    made: FeatureProvenance | None = None  # tiling, tissue parameters and encoder, when the reader accepts it


def _squeezed_shape(shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """The shape the reader sees: leading batch dimensions of 1 dropped; a 1-D ``features`` is one patch."""
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 1 and name == "features":
        shape = (1, shape[0])
    return shape


def _row_reader(dset):
    """``read(a, b)`` -> rows a..b of the (squeezed) 2-D features dataset, reading only those rows."""
    lead = 0
    shape = dset.shape
    while len(shape) > 2 and shape[0] == 1:
        shape, lead = shape[1:], lead + 1
    if len(shape) == 1:
        return lambda a, b: np.asarray(dset[()]).reshape(1, -1)[a:b]
    prefix = (0,) * lead
    return lambda a, b: np.asarray(dset[prefix + (slice(a, b),)])


def _scan_finite(dset, n_rows: int, dim: int, check: FeatureCheck) -> None:
    """Count the rows holding NaN or ±inf, one chunk of rows at a time."""
    if dset.dtype.kind not in "fc":
        return  # integers are always finite
    rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(1, dim * dset.dtype.itemsize)))
    read = _row_reader(dset)
    bad, first = 0, -1
    for a in range(0, n_rows, rows):
        b = min(n_rows, a + rows)
        try:
            chunk = read(a, b)
        except (OSError, ValueError, TypeError) as err:
            check.problems.append(("unreadable", f"cannot be read at rows {a}-{b - 1} "
                                   f"({_first_line(err)}); delete it and extract the slide again"))
            return
        finite = np.isfinite(chunk)
        if finite.all():
            continue
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        if first < 0:
            first = a + int(bad_rows[0])
        bad += len(bad_rows)
    if bad:
        check.problems.append(("nonfinite", f"has non-finite features (NaN or ±inf) in {bad} of its "
                               f"{n_rows} rows, the first at row {first}; extract the slide again"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_feature_file(path: Path, name: str) -> FeatureCheck:
    """Open one feature file and list its problems (never raises for a bad file)."""
    import h5py

    check = FeatureCheck(name)
    if path.suffix.lower() == ".pt":
        return _check_pt(path, check)
    size = path.stat().st_size if path.is_file() else -1
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        try:
            is_h5 = h5py.is_hdf5(path)
        except OSError:
            is_h5 = False
        if not is_h5:
            what = "an empty file (0 bytes)" if size == 0 else f"not an HDF5 file ({size} bytes)"
            check.problems.append(("not_hdf5", f"is {what}; put the .h5 feature file from `msrl extract`, "
                                   "CLAM or TRIDENT there, or extract the slide again"))
        else:
            check.problems.append(("unreadable", f"cannot be opened ({_first_line(err)}); delete it and "
                                   "extract the slide again"))
        return check
    with f:
        missing = [d for d in ("features", "coords") if not isinstance(f.get(d), h5py.Dataset)]
        if missing:
            kind = "no_coords" if missing == ["coords"] else "no_features"
            check.problems.append((kind, f"has no {' and no '.join(repr(m) for m in missing)} dataset "
                                   f"(datasets there: {', '.join(sorted(f.keys())) or 'none'}; {size} bytes); "
                                   "not a feature file from msrl, CLAM or TRIDENT"))
            return check
        dset, cset = f["features"], f["coords"]
        fshape, cshape = _squeezed_shape(dset.shape, "features"), _squeezed_shape(cset.shape, "coords")
        if dset.dtype.kind not in "fiuc" or cset.dtype.kind not in "fiu":
            bad = [f"{n} is {d.dtype}" for n, d in (("features", dset), ("coords", cset))
                   if d.dtype.kind not in ("fiuc" if n == "features" else "fiu")]
            check.problems.append(("dtype", f"holds no numbers ({', '.join(bad)}); extract the slide again"))
            return check
        if len(fshape) != 2:
            check.problems.append(("shape", f"has a 'features' dataset of shape {dset.shape}, expected "
                                   "N×D; extract the slide again"))
            return check
        check.n_rows, check.dim = int(fshape[0]), int(fshape[1])
        if len(cshape) != 2 or cshape[1] != 2:
            check.problems.append(("shape", f"has a 'coords' dataset of shape {cset.shape}, expected "
                                   "N×2; extract the slide again"))
            return check
        if cshape[0] != fshape[0]:
            check.problems.append(("mismatch", f"has {fshape[0]} feature rows but {cshape[0]} coords rows; "
                                   "delete it and extract the slide again"))
            return check
        if fshape[0] == 0:
            check.problems.append(("empty", "has no patches (0 rows); extract the slide again or "
                                   "leave the slide out of clinical.csv"))
            return check
        if check.dim == 0:
            check.problems.append(("shape", f"has 0-d features ({fshape[0]} rows); extract the slide again"))
            return check
        _scan_finite(dset, check.n_rows, check.dim, check)
    if not check.problems:
        _check_reader(path, check)
    return check


def _check_pt(path: Path, check: FeatureCheck) -> FeatureCheck:
    """A ``.pt`` feature file (CLAM ``pt_files/``), read as training reads it (``weights_only=True``):
    a float N×D tensor, at least one row, finite values. It has no coords (training only)."""
    from msrl_model.features.h5io import read_features

    try:
        ff = read_features(path)
    except MSRLError as err:
        check.problems.append(("unreadable", "is refused by the feature reader: "
                               + _first_line(err).removeprefix(f"{path}: ")))
        return check
    check.n_rows, check.dim = int(ff.features.shape[0]), int(ff.features.shape[1])
    if check.n_rows == 0:
        check.problems.append(("empty", "has no patches (0 rows); extract the slide again or "
                               "leave the slide out of clinical.csv"))
    elif check.dim == 0:
        check.problems.append(("shape", f"has 0-d features ({check.n_rows} rows); extract the slide again"))
    else:
        bad = np.flatnonzero(~np.isfinite(ff.features).all(axis=1))
        if len(bad):
            check.problems.append(("nonfinite", f"has non-finite features (NaN or ±inf) in {len(bad)} of its "
                                   f"{check.n_rows} rows, the first at row {int(bad[0])}; extract the slide again"))
    return check


def _check_reader(path: Path, check: FeatureCheck) -> None:
    """The reader training uses must accept the file (attributes, coords) as it is."""
    try:
        check.made = read_provenance(path)  # read_features, and the tiling/encoder it records
    except MSRLError as err:
        check.problems.append(("unreadable", "is refused by the feature reader: "
                               + _first_line(err).removeprefix(f"{path}: ")))
    except (OSError, ValueError, TypeError, KeyError, IndexError) as err:
        check.problems.append(("unreadable", f"has attributes the reader cannot use ({_first_line(err)}); "
                               "extract the slide again"))


_SUMMARIES = {
    "not_hdf5": "not HDF5 feature files; extract these slides again",
    "no_coords": "no 'coords' dataset; not feature files from msrl, CLAM or TRIDENT",
    "no_features": "no 'features' dataset; not feature files from msrl, CLAM or TRIDENT",
    "dtype": "datasets that hold no numbers; extract these slides again",
    "shape": "datasets of the wrong shape; extract these slides again",
    "mismatch": "features and coords of different lengths; extract these slides again",
    "empty": "no patches (0 rows); extract these slides again",
    "nonfinite": "non-finite features (NaN or ±inf); extract these slides again",
    "unreadable": "files that cannot be read; extract these slides again",
    "dimension": "a feature dimension other than the majority's; extract every slide with the same encoder",
    "tiling": "feature files made at different tilings or with different encoders; extract every slide alike",
}


def _dimension_problems(checks: list[FeatureCheck]) -> list[tuple[str, str, str]]:
    """(file, kind, sentence) for files whose dimension differs from the most common one."""
    dims = Counter(c.dim for c in checks if c.dim)
    if len(dims) < 2:
        return []
    ranked = dims.most_common()
    total = sum(dims.values())
    if ranked[0][1] == ranked[1][1]:  # no majority: name every group, blame none
        groups = "; ".join(f"{n} file(s) have {d}-d features ({_names([c.name for c in checks if c.dim == d])})"
                           for d, n in sorted(ranked, key=lambda dn: (-dn[1], dn[0])))
        return [("", "dimension", f"feature files disagree in dimension with no majority: {groups}; "
                 "extract every slide with the same encoder")]
    expected, n_expected = ranked[0]
    return [(c.name, "dimension", f"has {c.dim}-d features, but {n_expected} of the {total} readable "
             f"feature files have {expected}-d (the most common); extract every slide with the same encoder")
            for c in checks if c.dim and c.dim != expected]


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_feature_files(paths: Iterable[tuple[str, Path]], problems: Problems) -> dict[str, int]:
    """Check every ``(name, path)`` feature file; their problems go to ``problems`` (grouped by kind,
    one line per file, many files of one kind collapsed into one line). Returns name -> D of the
    files that passed."""
    checks = [check_feature_file(path, name) for name, path in paths]
    entries: dict[str, list[tuple[str, str]]] = {}
    for c in checks:
        for kind, text in c.problems:
            entries.setdefault(kind, []).append((c.name, text))
    odd = _dimension_problems(checks)
    for name, kind, text in odd:
        entries.setdefault(kind, []).append((name, text))
    # one tiling, tissue parameters and encoder for every other file (a bundle records them; architecture §3)
    named = {name for name, _, _ in odd}  # "": no majority dimension, nothing to compare the rest with
    comparable = [] if "" in named else [(c.name, c.made) for c in checks
                                         if c.made is not None and not c.problems and c.name not in named]
    for text in disagreements(comparable):
        entries.setdefault("tiling", []).append(("", text))
    for kind, items in entries.items():
        problems.per_file(items, _SUMMARIES.get(kind, "problems"))
    bad = {name for items in entries.values() for name, _ in items}
    return {c.name: c.dim for c in checks if c.name not in bad and c.dim is not None}


__all__ = ["CHUNK_BYTES", "CHUNK_ROWS", "FeatureCheck", "check_feature_file", "check_feature_files"]
