"""How a feature file was made: its tiling (patch size at the target level, target µm/px), its tissue
parameters where recorded, and its encoder — read from the attributes a feature file carries
(architecture §3: this tool's ``patch_size``/``target_mpp``/``tiling_params``/``tissue_params``/
``encoder*``; TRIDENT's magnifications and CLAM's defaults as :func:`~msrl_model.features.h5io.read_features`
fills them in).

Used three ways: a training cohort's feature files must all agree (:func:`disagreements`, checked when
the cohort loads); a bundle records the common tiling, tissue parameters and encoder
(``train/export.py``); and the predictor refuses a feature file made at another tiling
(:func:`tiling_mismatch`) before it predicts from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MPP_REL_TOL = 1e-3  # target µm/px equal within 0.1 % (TRIDENT's 10 / magnification is exact for 20x, 40x)


@dataclass(frozen=True)
class FeatureProvenance:
    """How one feature file was made (what its attributes say)."""

    patch_size: int  # patch side at the target level (px the encoder saw)
    target_mpp: float  # µm per pixel of the patches
    encoder: str  # encoder name ("unknown" when not recorded)
    encoder_version: str  # encoder version ("" when not recorded)
    encoder_spec: str | None = None  # build_encoder spec when recorded (this tool)
    min_tissue_fraction: float | None = None  # TilingParams.min_tissue_fraction when recorded (this tool)
    tissue: tuple[tuple[str, Any], ...] | None = None  # TissueParams fields when recorded (this tool)
    tiling_recorded: bool = True  # False: the file names no µm/px or magnification (CLAM); size/mpp are defaults
    encoder_details: str | None = None  # JSON of the encoder's full spec (PatchEncoder.spec()) when recorded

    def encoder_extra(self) -> dict[str, Any]:
        """The recorded spec beyond name/version/dim — preprocessing, checkpoint file and SHA-256 — for a
        bundle's encoder entry (empty when not recorded)."""
        details = json.loads(self.encoder_details) if self.encoder_details else {}
        return {k: v for k, v in details.items() if k in ("preprocessing", "checkpoint_file", "checkpoint_sha256")}

    @property
    def tiling_text(self) -> str:
        """E.g. ``256 px / 0.5 µm/px``."""
        return tiling_text(self.patch_size, self.target_mpp)

    @property
    def encoder_recorded(self) -> bool:
        return self.encoder != "unknown"

    @property
    def encoder_text(self) -> str:
        return f"{self.encoder} {self.encoder_version}".strip()

    def tiling(self) -> dict[str, Any]:
        """``TilingParams`` fields (min_tissue_fraction: the recorded one, else the default)."""
        from msrl_model.slide.tiling import TilingParams

        values: dict[str, Any] = {"patch_size": int(self.patch_size), "target_mpp": float(self.target_mpp)}
        if self.min_tissue_fraction is not None:
            values["min_tissue_fraction"] = float(self.min_tissue_fraction)
        return dataclasses.replace(TilingParams(), **values).to_dict()

    def tissue_params(self) -> dict[str, Any] | None:
        """``TissueParams`` fields as recorded (defaults for fields not recorded), None when none are."""
        from msrl_model.slide.tissue import TissueParams

        if self.tissue is None:
            return None
        return dataclasses.replace(TissueParams(), **dict(self.tissue)).to_dict()


def tiling_text(patch_size: Any, target_mpp: Any) -> str:
    """``256 px / 0.5 µm/px``."""
    return f"{int(patch_size)} px / {float(target_mpp):g} µm/px"


def _known_fields(value: Any, cls: type) -> dict[str, Any] | None:
    """The fields of dataclass ``cls`` in a recorded dict (a JSON string is decoded), typed like the
    defaults; None when nothing usable is recorded."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, Mapping):
        return None
    defaults = cls()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in value:
            continue
        v, want = value[f.name], type(getattr(defaults, f.name))
        if want is bool:
            if isinstance(v, bool):
                out[f.name] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f.name] = want(v)
    return out or None


def provenance_of(attrs: Mapping[str, Any], tiling_recorded: bool = True) -> FeatureProvenance:
    """The provenance of a feature file from its attributes as ``read_features`` returns them
    (``tiling_recorded``: whether the file itself names its µm/px or magnification)."""
    from msrl_model.slide.tiling import TilingParams
    from msrl_model.slide.tissue import TissueParams

    tiling = _known_fields(attrs.get("tiling_params"), TilingParams) or {}
    tissue = _known_fields(attrs.get("tissue_params"), TissueParams)
    spec = attrs.get("encoder_spec")
    details = attrs.get("encoder_details")
    return FeatureProvenance(
        patch_size=int(attrs.get("patch_size", TilingParams.patch_size)),
        target_mpp=float(attrs.get("target_mpp", TilingParams.target_mpp)),
        encoder=str(attrs.get("encoder") or "unknown"), encoder_version=str(attrs.get("encoder_version") or ""),
        encoder_spec=str(spec) if isinstance(spec, str) and spec else None,
        min_tissue_fraction=tiling.get("min_tissue_fraction"),
        tissue=None if tissue is None else tuple(sorted(tissue.items())), tiling_recorded=tiling_recorded,
        encoder_details=_json_object_text(details))


def _json_object_text(value: Any) -> str | None:
    """``value`` when it is the JSON text of an object, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return value if isinstance(json.loads(value), dict) else None
    except json.JSONDecodeError:
        return None


RESOLUTION_ATTRS = ("target_mpp", "target_magnification", "tiling_params")  # a file naming one records its tiling


def recorded_attr_names(path: Any) -> set[str]:
    """The attribute names an ``.h5`` feature file itself holds (root, ``coords``, ``features``);
    empty for other files (a ``.pt`` records none)."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() == ".pt":
        return set()
    import h5py

    with h5py.File(path, "r") as f:
        names = set(f.attrs.keys())
        for dataset in ("coords", "features"):
            if dataset in f:
                names.update(f[dataset].attrs.keys())
    return names


def read_provenance(path: Any) -> FeatureProvenance:
    """The provenance of the feature file at ``path`` (FeatureFileError when it cannot be read)."""
    from pathlib import Path

    from msrl_model.features.h5io import read_features

    attrs = read_features(path, load_features=False).attrs
    made = provenance_of(attrs, tiling_recorded=bool(recorded_attr_names(path) & set(RESOLUTION_ATTRS)))
    return made if made.encoder_recorded else _encoder_from_folder(made, Path(path).parent.name)


def _encoder_from_folder(made: FeatureProvenance, folder: str) -> FeatureProvenance:
    """TRIDENT names its feature folder ``features_<encoder>/`` and records the encoder nowhere else: a
    file there that records none is taken as made by that encoder when it is one of ours (version "",
    not recorded; the adapter's preprocessing, no checkpoint hash)."""
    from msrl_model.encoders import available_encoders
    from msrl_model.encoders.release import static_spec

    name = folder.removeprefix("features_")
    if not folder.startswith("features_") or name not in available_encoders():
        return made
    static = static_spec(name) or {}
    details = json.dumps({"name": name, "version": "", **static}) if static else None
    return dataclasses.replace(made, encoder=name, encoder_version="", encoder_spec=name, encoder_details=details)


def _mpp_key(mpp: float) -> str:
    return f"{float(mpp):.4g}"


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _groups_text(groups: dict[Any, list[str]], describe: Any) -> str:
    """Each group with its files, largest first; the largest (the odd ones are the others) names 10."""
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    return "; ".join(f"{describe(key)}: {len(names)} file(s) ({_names(names, 10 if i == 0 else 50)})"
                     for i, (key, names) in enumerate(ranked))


def disagreements(files: list[tuple[str, FeatureProvenance]]) -> list[str]:
    """One sentence per way the feature files ``(name, provenance)`` disagree (empty: they agree).

    The tiling (patch size, target µm/px), the encoder (name, version), the tissue parameters and
    the minimum tissue fraction must each be equal among the files that record them (a CLAM file
    names no resolution and no encoder; TRIDENT's records no tissue parameters)."""
    out = []
    tilings: dict[tuple[int, str], list[str]] = {}
    encoders: dict[str, list[str]] = {}
    for name, p in files:
        if p.tiling_recorded:
            tilings.setdefault((p.patch_size, _mpp_key(p.target_mpp)), []).append(name)
        if p.encoder_recorded:
            encoders.setdefault(p.encoder_text, []).append(name)
    if len(tilings) > 1:
        out.append("the feature files were not all made at one tiling (a model is trained on one): "
                   f"{_groups_text(tilings, lambda key: tiling_text(*key))}; extract every slide at one patch "
                   "size and resolution")
    if len(encoders) > 1:
        out.append("the feature files were not all made with one encoder: "
                   f"{_groups_text(encoders, lambda key: f'encoder {key}')}; extract every slide with one encoder")
    recorded = []  # (name, {field: value}) of the files recording tissue parameters / min tissue fraction
    for name, p in files:
        fields = dict(p.tissue or ())
        if p.min_tissue_fraction is not None:
            fields["min_tissue_fraction"] = p.min_tissue_fraction
        if fields:
            recorded.append((name, fields))
    differ = sorted({k for _, d in recorded for k in d
                     if len({repr(e[k]) for _, e in recorded if k in e}) > 1})  # compared where recorded
    if differ:
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, d in recorded:
            if any(k in d for k in differ):
                groups.setdefault(tuple(d.get(k, "not recorded") for k in differ), []).append(name)
        out.append("the feature files were made with different tissue parameters: "
                   + _groups_text(groups, lambda key: ", ".join(f"{k} {v}" for k, v in zip(differ, key)))
                   + "; extract every slide with the same tissue parameters")
    return out


def common_provenance(files: list[tuple[str, FeatureProvenance]]) -> FeatureProvenance | None:
    """The one provenance the files share (each part from the files that record it; defaults when
    none does); None without files. ValueError (the :func:`disagreements`) when they disagree."""
    if not files:
        return None
    problems = disagreements(files)
    if problems:
        raise ValueError("; ".join(problems))
    first = next((p for _, p in files if p.tiling_recorded), files[0][1])
    encoder = next((p for _, p in files if p.encoder_recorded), first)
    first = dataclasses.replace(first, encoder=encoder.encoder, encoder_version=encoder.encoder_version)
    tissue = next((p.tissue for _, p in files if p.tissue is not None), None)
    fraction = next((p.min_tissue_fraction for _, p in files if p.min_tissue_fraction is not None), None)
    spec = next((p.encoder_spec for _, p in files if p.encoder_spec), None)
    details = next((p.encoder_details for _, p in files if p.encoder_details), None)
    return dataclasses.replace(first, tissue=tissue, min_tissue_fraction=fraction, encoder_spec=spec,
                               encoder_details=details)


def tiling_mismatch(tiling: Mapping[str, Any], made: FeatureProvenance) -> bool:
    """True when a feature file ``made`` so does not have the patch size and µm/px of ``tiling``
    (a bundle's ``TilingParams`` fields)."""
    from msrl_model.slide.tiling import TilingParams

    want_size = int(tiling.get("patch_size", TilingParams.patch_size))
    want_mpp = float(tiling.get("target_mpp", TilingParams.target_mpp))
    return made.patch_size != want_size or not math.isclose(made.target_mpp, want_mpp, rel_tol=MPP_REL_TOL)


def detection_differences(tiling: Mapping[str, Any], tissue: Mapping[str, Any],
                          made: FeatureProvenance) -> list[str]:
    """``name file-value (model: value)`` for each recorded tissue parameter / min tissue fraction of
    ``made`` that differs from the bundle's ``tiling``/``tissue`` (unrecorded ones are not compared)."""
    diffs = []
    if made.min_tissue_fraction is not None and "min_tissue_fraction" in tiling and not math.isclose(
            made.min_tissue_fraction, float(tiling["min_tissue_fraction"]), rel_tol=1e-6):
        diffs.append(f"min_tissue_fraction {made.min_tissue_fraction:g} (model: {tiling['min_tissue_fraction']})")
    for key, value in made.tissue or ():
        want = tissue.get(key)
        if want is None:
            continue
        same = (value == want) if isinstance(value, bool) or isinstance(want, bool) else math.isclose(
            float(value), float(want), rel_tol=1e-6)
        if not same:
            diffs.append(f"{key} {value} (model: {want})")
    return diffs


__all__ = ["FeatureProvenance", "common_provenance", "detection_differences", "disagreements", "provenance_of",
           "read_provenance", "recorded_attr_names", "tiling_mismatch", "tiling_text"]
