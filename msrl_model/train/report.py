"""Reports of a training run: ``cv_results.csv``, the CV table (Markdown, the paper's layout),
Kaplan–Meier curves of predicted risk groups (PNG) and the model card.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msrl_model.cohort import Cohort
from msrl_model.stats import kaplan_meier, logrank_test
from msrl_model.train.cv import CVResult
from msrl_model.train.variants import display_name

# Metric shown per task kind in the main table, in column order.
_METRIC_LABEL = {"c_index": "C-index", "auc": "AUC", "f1": "F1"}


def write_cv_csv(result: CVResult, path: str | Path) -> Path:
    """One row per (method, task, fold, metric): columns method, task, fold, metric, value."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "task", "fold", "metric", "value"])
        writer.writeheader()
        for row in result.rows:
            writer.writerow({**row, "value": f"{row['value']:.6f}"})
    return path


def _columns(result: CVResult, tasks: Sequence[str]) -> list[tuple[str, str]]:
    cols = []
    for task in tasks:
        metrics = {r["metric"] for r in result.rows if r["task"] == task}
        cols += [(task, m) for m in ("c_index", "auc", "f1") if m in metrics]
    return cols


def cv_table_markdown(result: CVResult, tasks: Sequence[str], methods: Sequence[str]) -> str:
    """Rows = methods, columns = task × metric, cells = mean ± std over folds; best mean in bold."""
    cols = _columns(result, tasks)
    cells: dict[tuple[str, str, str], tuple[float, float]] = {}
    for m in methods:
        for task, metric in cols:
            s = result.metric_summary(task, m).get(metric)
            if s is not None:
                cells[(m, task, metric)] = (s["mean"], s["std"])
    best = {}
    for task, metric in cols:
        means = [cells[(m, task, metric)][0] for m in methods if (m, task, metric) in cells]
        means = [v for v in means if math.isfinite(v)]
        best[(task, metric)] = max(means) if means else math.nan
    header = "| Method | " + " | ".join(f"{t} ({_METRIC_LABEL[m]})" for t, m in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 1)]
    for m in methods:
        row = [display_name(m)]
        for task, metric in cols:
            if (m, task, metric) not in cells:
                row.append("–")
                continue
            mean, std = cells[(m, task, metric)]
            text = f"{mean:.4f} ± {std:.4f}" if math.isfinite(mean) else "n/a"
            row.append(f"**{text}**" if math.isfinite(mean) and mean == best[(task, metric)] else text)
        lines.append("| " + " | ".join(row) + " |")
    n_folds = len(result.folds)
    lines.append("")
    lines.append(f"Mean ± standard deviation over {n_folds} cross-validation folds (test folds never seen "
                 "in training or pre-training); best mean per column in bold.")
    return "\n".join(lines) + "\n"


def risk_groups(risk: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """1 = high risk (above the median of its own fold's predicted risks), 0 = low risk.

    Medians are taken per fold because each fold's model has its own risk scale.
    """
    high = np.zeros(len(risk), dtype=np.int64)
    for f in np.unique(fold):
        sel = fold == f
        high[sel] = (risk[sel] > np.median(risk[sel])).astype(np.int64)
    return high


def plot_km(result: CVResult, cohort: Cohort, task: str, method: str, path: str | Path) -> float | None:
    """Kaplan–Meier curves of the high/low predicted-risk groups (out-of-fold); returns the log-rank p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = result.oof.get((task, method))
    if entry is None or "risk" not in entry:
        return None
    cases = entry["case"]
    times, censorship = cohort.times[cases], cohort.censorship[cases]
    groups = risk_groups(entry["risk"], entry["fold"])
    if len(np.unique(groups)) < 2:
        return None
    _, p = logrank_test(times, censorship, groups)
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    for g, label, colour in ((0, "low risk", "#2b7bba"), (1, "high risk", "#d7301f")):
        sel = groups == g
        t, s = kaplan_meier(times[sel], censorship[sel])
        ax.step(t, s, where="post", color=colour, label=f"{label} (n={int(sel.sum())})")
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{display_name(method)}: out-of-fold risk groups\nlog-rank p = {p:.2g}")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return p


def model_card(*, cohort: Cohort, result: CVResult, tasks: Sequence[str], methods: Sequence[str], encoder: dict,
               config_text: str, km_pvalues: dict[str, float], wall_seconds: float | None = None) -> str:
    """The model card (Markdown) of the bundle."""
    s = cohort.summary()
    synthetic = bool(s["synthetic"])
    tag = "SYNTHETIC " if synthetic else ""
    lines = [
        f"# MSRL model card — {s['name']}",
        "",
        "**Research use only. Not a medical device; not for diagnosis or treatment decisions.**",
        "",
    ]
    if synthetic:
        lines += ["> **This model was trained on a SYNTHETIC cohort** (simulated cases generated by "
                  "`msrl synth cohort`; no patient data). Its predictions on real slides are meaningless; "
                  "it exists to demonstrate and test the software.", ""]
    lines += [
        "## Intended use",
        "",
        "Predicting survival risk and the listed labels from an H&E whole-slide image alone (MSRL, "
        "WSI-only inference), by linking the slide to authentic training cases in a graph and "
        "reconstructing their genomics-informed representation. For research on cohorts similar "
        "to the training cohort (same projects, scanner/stain conditions, patch encoder).",
        "",
        f"## Training cohort ({tag.strip() or 'real'})",
        "",
        f"* {tag}cases: {s['cases']}, slides: {s['slides']}, censored: {s['censored_fraction']:.0%}",
        f"* projects: " + ", ".join(f"{p} ({n})" for p, n in s["projects"].items()),
        f"* genes: {s['genes']} in {s['gene_groups']} gene groups",
    ]
    for name, counts in s["labels"].items():
        lines.append(f"* {name}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    lines += [
        "",
        "## Model",
        "",
        f"* patch encoder: {encoder.get('name')} {encoder.get('version', '')} ({encoder.get('dim')}-d)",
        "* slide encoder: built-in [CLS] transformer φ_H (pre-trained in stage 1 on this cohort)",
        "* stage 1: self-supervised graph structure learning (intra/inter/fused InfoNCE, SUBLIME anchors)",
        "* stage 2: per-task online/EMA-target fine-tuning with a FIFO buffer of target features; "
        "plus a pathway-reconstruction loss (our addition) for the reconstructed pathway activity",
        f"* tasks: {', '.join(tasks)}; the bundle ships the MSRL (WSI-only) network per task, trained on "
        "all cases, with the buffer of all training cases",
        "",
        "## Cross-validated performance",
        "",
        cv_table_markdown(result, tasks, methods),
    ]
    if km_pvalues:
        lines += ["Kaplan–Meier log-rank p-values of out-of-fold high/low risk groups (per-fold median split): "
                  + ", ".join(f"{display_name(m)} {p:.2g}" for m, p in km_pvalues.items()), ""]
    if wall_seconds is not None:
        lines += [f"Training wall time: {wall_seconds / 60:.1f} min.", ""]
    lines += [
        "## Limitations",
        "",
        "* Cross-validation on one cohort overestimates performance on other sites, scanners and stains.",
        "* Small cohorts give wide fold-to-fold variation (see the ± columns).",
        "* The buffer holds the training cases' features and clinical data: share the bundle only "
        "where that is allowed.",
        "* Predictions depend on the patch encoder: features from another encoder are refused.",
    ]
    if synthetic:
        lines.append("* Trained on SYNTHETIC data: the numbers above describe the simulation, not any disease.")
    lines += ["", "## Configuration", "", "```toml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


__all__ = ["cv_table_markdown", "model_card", "plot_km", "risk_groups", "write_cv_csv"]
