"""The schema of ``manifest.json``, checked field by field before any code indexes the manifest.

:func:`validate_manifest` walks every field the reader, the predictor and the app use and checks its
type (and the few ranges that matter: sizes ≥ 0, dimensions ≥ 1, a SHA-256 of 64 hex digits). The
first problem is one :class:`~msrl_model.errors.BundleError` line naming the field as a path, e.g.
``manifest field tasks[1].classes must be a list of strings; the bundle is damaged — rebuild or
re-download it``. Fields this version does not know are allowed (they are never read).

Hand-written rather than JSON Schema: the manifest is small, the messages must be one plain line,
and no dependency is needed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from msrl_model.errors import BundleError
from msrl_model.infer.bundle.contents import BUFFER, MANIFEST, MODEL_CARD, WEIGHTS
from msrl_model.infer.bundle.manifest import bundle_error

# A listed file is a plain name inside the bundle: no directory part, no leading dot, no drive letter.
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
TASK_KINDS = ("survival", "classification")
VARIANTS = ("msrl", "msrl_h")
EXPRESSION_SCALES = ("raw", "log")
FEATURES_MADE_FROM = ("feature files", "defaults")  # where a bundle's tiling/tissue/encoder entries come from
MAX_FILES = 32  # a bundle lists 2-4 files; far more is not a bundle
BUNDLE_FILES = (WEIGHTS, BUFFER, MODEL_CARD)  # what format 1 lists (architecture §3); anything else is refused
MAX_MODEL_CARD_BYTES = 8 << 20  # the model card is kept in memory and shown; other files are hashed in blocks
DAMAGED = "the bundle is damaged — rebuild or re-download it"


class _Invalid(Exception):
    """One schema violation: the field path and what it must be."""

    def __init__(self, field: str, must: str) -> None:
        super().__init__(field, must)
        self.field, self.must = field, must


# ---- primitive checks ---------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _obj(v: Any, field: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Invalid(field, "an object")
    return v


def _get(obj: dict[str, Any], key: str, field: str) -> Any:
    if key not in obj:
        raise _Invalid(f"{field}.{key}" if field else key, "present")
    return obj[key]


def _str(v: Any, field: str, *, nonempty: bool = False, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(v, str):
        raise _Invalid(field, "a string")
    if nonempty and not v:
        raise _Invalid(field, "a non-empty string")
    if choices and v not in choices:
        raise _Invalid(field, "one of " + ", ".join(repr(c) for c in choices))
    return v


def _int(v: Any, field: str, minimum: int | None = None) -> int:
    if not _is_int(v):
        raise _Invalid(field, "an integer" + (f" ≥ {minimum}" if minimum is not None else ""))
    if minimum is not None and v < minimum:
        raise _Invalid(field, f"an integer ≥ {minimum}")
    return v


def _number(v: Any, field: str, *, nullable: bool = False, positive: bool = False) -> float | None:
    if v is None and nullable:
        return None
    if not _is_number(v) or (positive and v <= 0):
        kind = "a positive number" if positive else "a number"
        raise _Invalid(field, kind + (" or null" if nullable else ""))
    return float(v)


def _bool(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise _Invalid(field, "true or false")
    return v


def _str_list(v: Any, field: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _Invalid(field, "a list of strings")
    return v


# ---- sections -----------------------------------------------------------------------------------


def _check_encoder(v: Any) -> None:
    enc = _obj(v, "encoder")
    _str(_get(enc, "name", "encoder"), "encoder.name", nonempty=True)
    _str(_get(enc, "version", "encoder"), "encoder.version")
    _int(_get(enc, "dim", "encoder"), "encoder.dim", 1)
    if "spec" in enc:
        _str(enc["spec"], "encoder.spec", nonempty=True)


def _check_params(v: Any, field: str, cls: type) -> None:
    """``tiling`` / ``tissue``: fields of ``cls`` (TilingParams, TissueParams), typed; a missing one
    takes its default (as the predictor builds ``cls(**values)``)."""
    from msrl_model.nn.config import ConfigError, typed_fields

    obj = _obj(v, field)
    try:
        typed = typed_fields(cls, obj, f"{field} parameter")
    except ConfigError as err:
        raise _Invalid(field, f"valid ({err})") from None
    for name, value in typed.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid(f"{field}.{name}", "a finite number")
        if not isinstance(value, bool) and isinstance(value, (int, float)) and value < 0:
            raise _Invalid(f"{field}.{name}", "a number ≥ 0")


def _check_features_made(v: Any) -> None:
    """Optional ``features_made``: where tiling, tissue and encoder were read from, and from how many files."""
    made = _obj(v, "features_made")
    for key in ("tiling_from", "tissue_from", "encoder_from"):
        if key in made:
            _str(made[key], f"features_made.{key}", choices=FEATURES_MADE_FROM)
    if "files" in made:
        _int(made["files"], "features_made.files", 0)


def _check_metrics(v: Any, field: str) -> None:
    metrics = _obj(v, field)
    for name, value in metrics.items():
        if isinstance(value, dict):
            for key, x in value.items():
                _number(x, f"{field}.{name}.{key}", nullable=True)
        else:
            _number(value, f"{field}.{name}", nullable=True)


def _check_task(v: Any, i: int) -> str:
    field = f"tasks[{i}]"
    task = _obj(v, field)
    name = _str(_get(task, "name", field), f"{field}.name", nonempty=True)
    if "/" in name or name.startswith("."):
        raise _Invalid(f"{field}.name", "a task name without '/' and not starting with '.'")
    kind = _str(_get(task, "kind", field), f"{field}.kind", choices=TASK_KINDS)
    _str(_get(task, "variant", field), f"{field}.variant", choices=VARIANTS)
    classes = _str_list(_get(task, "classes", field), f"{field}.classes")
    edges = _get(task, "bin_edges_months", field)
    if not isinstance(edges, list):
        raise _Invalid(f"{field}.bin_edges_months", "a list of numbers (null for the open last edge)")
    for j, e in enumerate(edges):
        if e is None and j == len(edges) - 1:
            continue
        _number(e, f"{field}.bin_edges_months[{j}]")
    if kind == "classification" and len(classes) < 2:
        raise _Invalid(f"{field}.classes", "a list of at least 2 class names for a classification task")
    if "class_names" in task and len(_str_list(task["class_names"], f"{field}.class_names")) != len(classes):
        raise _Invalid(f"{field}.class_names", f"a list of {len(classes)} names, one per class")
    for key in ("conformal_scores", "conformal_weights"):
        if key in task:
            values = task[key]
            if not isinstance(values, list):
                raise _Invalid(f"{field}.{key}", "a list of numbers")
            for j, s in enumerate(values):
                _number(s, f"{field}.{key}[{j}]")
    if "conformal_weights" in task and len(task["conformal_weights"]) != len(task.get("conformal_scores") or []):
        raise _Invalid(f"{field}.conformal_weights", "one weight per conformal score")
    if kind == "survival" and len(edges) < 2:
        raise _Invalid(f"{field}.bin_edges_months", "a list of at least 2 edges for a survival task")
    _int(_get(task, "n_buffer", field), f"{field}.n_buffer", 1)
    _str_list(_get(task, "label_columns", field), f"{field}.label_columns")
    _bool(_get(task, "thumbnails", field), f"{field}.thumbnails")
    _check_metrics(_get(task, "metrics", field), f"{field}.metrics")
    return name


def _check_applicability(v: Any) -> None:
    """Optional ``applicability``: the calibration of the out-of-distribution check (infer/applicability.py)."""
    block = _obj(v, "applicability")
    _str(_get(block, "statistic", "applicability"), "applicability.statistic", nonempty=True)
    level = _number(_get(block, "level", "applicability"), "applicability.level", positive=True)
    if level is not None and level >= 1:
        raise _Invalid("applicability.level", "a number between 0 and 1")
    if "k" in block:
        _int(block["k"], "applicability.k", 1)
    scores = _get(block, "scores", "applicability")
    if not isinstance(scores, list):
        raise _Invalid("applicability.scores", "a list of numbers")
    for j, s in enumerate(scores):
        _number(s, f"applicability.scores[{j}]")


def _check_cohort(v: Any) -> None:
    cohort = _obj(v, "cohort")
    _bool(_get(cohort, "synthetic", "cohort"), "cohort.synthetic")
    if "n_cases" in cohort:
        _int(cohort["n_cases"], "cohort.n_cases", 0)
    projects = cohort.get("projects", [])
    if isinstance(projects, dict):
        for key, n in projects.items():
            _int(n, f"cohort.projects.{key}", 0)
    elif not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise _Invalid("cohort.projects", "a list of project names or an object of project → case count")
    for key in ("source", "name"):
        if key in cohort:
            _str(cohort[key], f"cohort.{key}")
    if "censored_fraction" in cohort:
        _number(cohort["censored_fraction"], "cohort.censored_fraction", nullable=True)


def _check_genomics(v: Any, variants: dict[str, str], n_groups: int | None) -> None:
    if v is None:
        needs = [name for name, variant in variants.items() if variant == "msrl"]
        if needs:
            raise _Invalid("genomics", f"an object (task {needs[0]!r} uses variant msrl, which needs genomics), "
                                       "not null")
        return
    g = _obj(v, "genomics")
    _str(_get(g, "expression_scale", "genomics"), "genomics.expression_scale", choices=EXPRESSION_SCALES)
    _int(_get(g, "n_genes", "genomics"), "genomics.n_genes", 1)
    names = _str_list(_get(g, "group_names", "genomics"), "genomics.group_names")
    if n_groups is not None and len(names) != n_groups:
        raise _Invalid("genomics.group_names", f"a list of {n_groups} names, one per gene group of config.group_sizes")


def _check_files(v: Any) -> None:
    files = _obj(v, "files")
    if len(files) > MAX_FILES:
        raise _Invalid("files", f"an object of at most {MAX_FILES} files")
    for name, info in files.items():
        if not FILE_NAME.match(name) or name == MANIFEST:
            raise _Invalid(f"files[{name!r}]", "a plain file name inside the bundle (no path, no leading dot)")
        if name not in BUNDLE_FILES:  # never read, so never worth hashing (a 2 GiB member of zeros, say)
            raise _Invalid(f"files[{name!r}]", "one of the files of a bundle (" + ", ".join(BUNDLE_FILES) + ")")
        field = f"files[{name!r}]"
        entry = _obj(info, field)
        sha = _get(entry, "sha256", field)
        if not isinstance(sha, str) or not SHA256_HEX.match(sha):
            raise _Invalid(f"{field}.sha256", "a SHA-256 of 64 lowercase hex digits")
        size = _int(_get(entry, "bytes", field), f"{field}.bytes", 0)
        if name == MODEL_CARD and size > MAX_MODEL_CARD_BYTES:
            raise _Invalid(f"{field}.bytes", f"at most {MAX_MODEL_CARD_BYTES} (a Markdown model card; it is read "
                                             "into memory)")
    for name in (WEIGHTS, BUFFER):
        if name not in files:
            raise _Invalid(f"files[{name!r}]", "present (every bundle holds it)")


def _check_manifest(m: dict[str, Any]) -> None:
    from msrl_model.nn.config import ConfigError, MSRLConfig
    from msrl_model.slide.tiling import TilingParams
    from msrl_model.slide.tissue import TissueParams

    software = _obj(_get(m, "software", ""), "software")
    _str(_get(software, "name", "software"), "software.name")
    _str(_get(software, "version", "software"), "software.version")
    _str(_get(m, "created", ""), "created")
    _check_files(_get(m, "files", ""))
    _check_encoder(_get(m, "encoder", ""))
    slide_encoder = _obj(_get(m, "slide_encoder", ""), "slide_encoder")
    _str(_get(slide_encoder, "name", "slide_encoder"), "slide_encoder.name")
    _check_params(_get(m, "tiling", ""), "tiling", TilingParams)
    _check_params(_get(m, "tissue", ""), "tissue", TissueParams)
    if m["tiling"].get("patch_size", 1) < 1 or m["tiling"].get("target_mpp", 1) <= 0:
        raise _Invalid("tiling", "valid (patch_size ≥ 1 and target_mpp > 0)")
    if "features_made" in m:  # optional (bundles before it lack it)
        _check_features_made(m["features_made"])
    if "applicability" in m:  # optional (bundles before it lack it)
        _check_applicability(m["applicability"])
    config = _obj(_get(m, "config", ""), "config")
    try:
        n_groups: int | None = len(MSRLConfig.from_dict(config).group_sizes)
    except (ConfigError, TypeError, ValueError) as err:
        raise _Invalid("config", f"a valid model configuration ({err})") from None
    tasks = _get(m, "tasks", "")
    if not isinstance(tasks, list) or not tasks:
        raise _Invalid("tasks", "a non-empty list of task objects")
    names = [_check_task(t, i) for i, t in enumerate(tasks)]
    if len(set(names)) != len(names):
        raise _Invalid("tasks", f"a list of tasks with distinct names (got {names})")
    _check_cohort(_get(m, "cohort", ""))
    _check_genomics(_get(m, "genomics", ""), {t["name"]: t["variant"] for t in tasks}, n_groups)


def validate_manifest(manifest: dict[str, Any], path: Path | str) -> None:
    """Raise one-line :class:`BundleError` naming the first field of ``manifest`` that is missing or
    of the wrong type (``format`` and ``format_version`` were checked by ``parse_manifest``)."""
    try:
        _check_manifest(manifest)
    except _Invalid as bad:
        raise bundle_error(path, f"manifest field {bad.field} must be {bad.must}; {DAMAGED}") from None


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest about to be written ("field F must be …"), or None."""
    try:
        _check_manifest(manifest)
    except _Invalid as bad:
        return f"field {bad.field} must be {bad.must}"
    return None


def validation_error(path: Path | str, field: str, must: str) -> BundleError:
    """The same one-line error for a field found wrong elsewhere (e.g. a signature file)."""
    return bundle_error(path, f"{field} must be {must}; {DAMAGED}")


__all__ = ["FILE_NAME", "manifest_problem", "validate_manifest", "validation_error"]
