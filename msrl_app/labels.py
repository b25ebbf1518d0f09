"""Wording and label widgets shared by the results dock and its linked-cases tab."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QLabel

MODE_TITLES = {
    "msrl": "MSRL (slide only)",
    "msrl_multi": "MSRL_multi (with this case's expression)",
    "msrl_h": "MSRL_H (slide only, no genomics)",
}


def mode_title(mode: str) -> str:
    return MODE_TITLES.get(mode, mode)


def patches_text(result: Any) -> str:
    """How many patches the prediction read: ``"39 patches"``, or with regions of interest
    ``"32 of 39 tissue patches (inside 1 include region, outside 1 exclude region)"``."""
    n = len(result.coords)
    regions = getattr(result, "regions", None)
    if not regions:
        return f"{n:,} patches"
    parts = []
    for key, where in (("include", "inside"), ("exclude", "outside")):
        count = int(regions.get(key) or 0)
        if count:
            parts.append(f"{where} {count} {key} region{'s' if count != 1 else ''}")
    total = int(regions.get("patches_on_tissue") or n)
    return f"{n:,} of {total:,} tissue patches" + (f" ({', '.join(parts)})" if parts else "")


def task_title(name: str) -> str:
    """'EGFR_mut' -> 'EGFR mutation', 'HER2_status' -> 'HER2 status', 'stage' -> 'Stage'."""
    if name.endswith("_mut"):
        return f"{name[:-4]} mutation"
    return name.replace("_", " ")[:1].upper() + name.replace("_", " ")[1:]


def heading(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)  # never cut in a narrow column
    font = label.font()
    font.setBold(True)
    font.setPointSizeF(font.pointSizeF() * 1.05)
    label.setFont(font)
    label.setStyleSheet("color: #e3e5e8; padding-top: 6px;")
    return label


def muted(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #9aa0a8;")
    return label




def big_label(scale: float, object_name: str = "") -> QLabel:
    """A bold label ``scale`` times the default font size (titles, the risk group)."""
    label = QLabel()
    if object_name:
        label.setObjectName(object_name)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * scale)
    font.setBold(True)
    label.setFont(font)
    return label


METRIC_NAMES = {"c_index": "C-index", "auc": "AUC", "f1": "macro F1"}


def model_display_name(manifest: dict[str, Any] | None, fallback: str) -> str:
    """How the app names a model: its training cohort's name from the manifest (the model card's
    title), else ``fallback`` (the bundle's file or folder name)."""
    manifest = manifest or {}
    cohort = manifest.get("cohort") if isinstance(manifest.get("cohort"), dict) else {}
    return str(cohort.get("name") or fallback)


def metrics_line(metrics: dict[str, Any], prefix: str, sep: str) -> str:
    """``{"c_index": {"mean": .61, "std": .03}}`` -> ``prefix + "C-index 0.610 ± 0.030"``; '' without metrics.
    The graph ablations' entries (``"c_index@no_graph"``) are left out: the linked cases' note says them."""
    from msrl_app.controls import format_metric

    own = {k: v for k, v in metrics.items() if "@" not in k}
    if not own:
        return ""
    return prefix + sep.join(f"{METRIC_NAMES.get(k, k)} {format_metric(v)}" for k, v in own.items())


def survival_curves(task: Any) -> list[tuple[str, str, Any, Any]]:
    """(key, legend, times, S(t)) of a survival task's three curves: this slide, its linked cases, the cohort."""
    s = task.survival
    return [("slide", "This slide (predicted)", s.curve.times, s.curve.survival),
            ("neighbours", f"Linked cases (KM, n={len(task.linked_cases)})", s.neighbours_km.times,
             s.neighbours_km.survival),
            ("cohort", "Training cohort (KM)", s.cohort_km.times, s.cohort_km.survival)]
