"""Reports of a training run: ``cv_results.csv``, the CV table (Markdown, the paper's layout) with
the paired significance of every method against MSRL (``cv_significance.csv``, ``cv_summary.json``),
Kaplan–Meier curves of predicted risk groups (PNG), MSRL's graph diagnostics and its survival
calibration on held-out folds. The model card: :mod:`msrl_model.train.model_card`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msrl_model.cohort import Cohort
from msrl_model.files import atomic_write
from msrl_model.stats import kaplan_meier, logrank_test
from msrl_model.stats.paired import (
    BootstrapResult, PairedFold, PairTerms, auc_terms, c_index_terms, corrected_resampled_ttest, paired_bootstrap)
from msrl_model.train.cv import CVResult
from msrl_model.train.variants import display_name

# Metric shown per task kind in the main table, in column order.
_METRIC_LABEL = {"c_index": "C-index", "auc": "AUC", "f1": "F1"}
# Metrics that are sums over pairs of cases, tested by the paired bootstrap too.
_BOOTSTRAPPED = ("c_index", "auc")


def write_cv_csv(result: CVResult, path: str | Path) -> Path:
    """One row per (method, task, repeat, fold, metric): columns method, task, repeat, fold, metric, value."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["method", "task", "repeat", "fold", "metric", "value"],
                            lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({**row, "value": f"{row['value']:.6f}"})
    return atomic_write(path, text.getvalue())


def _metric_terms(cohort: Cohort, task: str, metric: str, cases: np.ndarray, entry: dict[str, np.ndarray],
                  sel: np.ndarray) -> PairTerms:
    """The pair terms of one method's C-index / AUC on the out-of-fold rows ``sel`` of ``entry``."""
    if metric == "c_index":
        return c_index_terms(entry["risk"][sel], cohort.times[cases], cohort.censorship[cases])
    return auc_terms(cohort.label_codes(task)[cases], entry["probs"][sel], len(cohort.labels[task]))


def _bootstrap(result: CVResult, cohort: Cohort, task: str, metric: str, method: str, reference: str,
               n_resamples: int, seed: int) -> BootstrapResult | None:
    """The paired bootstrap of ``method`` − ``reference`` over the out-of-fold cases, per (repeat, fold)."""
    a, b = result.oof.get((task, method)), result.oof.get((task, reference))
    if a is None or b is None:
        return None
    folds = []
    for rep, fold in sorted(set(zip(a["repeat"].tolist(), a["fold"].tolist()))):
        sel_a = np.flatnonzero((a["repeat"] == rep) & (a["fold"] == fold))
        sel_b = np.flatnonzero((b["repeat"] == rep) & (b["fold"] == fold))
        cases = a["case"][sel_a]
        if not np.array_equal(cases, b["case"][sel_b]):
            return None  # not predicted on the same cases: no pairing
        folds.append(PairedFold(cases, _metric_terms(cohort, task, metric, cases, a, sel_a),
                                _metric_terms(cohort, task, metric, cases, b, sel_b)))
    return paired_bootstrap(folds, n_resamples=n_resamples, seed=seed) if folds else None


def significance(result: CVResult, cohort: Cohort, tasks: Sequence[str], methods: Sequence[str], *,
                 reference: str = "msrl", n_resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Paired significance of every method against ``reference`` (MSRL), per task and metric.

    Per (task, metric, method): the corrected resampled t-test across the (repeat, fold) pairs
    (:func:`~msrl_model.stats.paired.corrected_resampled_ttest`, overlap correction n_test/n_train
    of the folds) and, for the C-index and the AUC, the paired bootstrap over out-of-fold cases
    (:func:`~msrl_model.stats.paired.paired_bootstrap`, ``n_resamples`` resamples from ``seed``).
    ``p`` is the p-value that marks the CV table: the larger of the two (a mark means both tests
    agree; undefined when either is), the fold test's alone for F1. Differences are method − reference. Empty when
    ``reference`` is not among ``methods``.
    """
    if reference not in methods:
        return []
    out = []
    for task, metric in _columns(result, tasks):
        ref_values = result.fold_values(task, reference, metric)
        for method in methods:
            if method == reference:
                continue
            values = result.fold_values(task, method, metric)
            pairs = sorted(set(values) & set(ref_values))
            test = corrected_resampled_ttest([values[k] for k in pairs], [ref_values[k] for k in pairs],
                                             result.test_train_ratio)
            boot = (_bootstrap(result, cohort, task, metric, method, reference, n_resamples, seed)
                    if metric in _BOOTSTRAPPED else None)
            p = test.p_value if boot is None else float(np.max([test.p_value, boot.p_value]))  # NaN if either is
            out.append({
                "task": task, "metric": metric, "method": method, "reference": reference,
                "n_pairs": test.n_pairs, "mean_difference": test.mean_difference, "fold_t": test.statistic,
                "fold_p": test.p_value,
                "boot_difference": boot.difference if boot else math.nan,
                "boot_ci_low": boot.ci_low if boot else math.nan, "boot_ci_high": boot.ci_high if boot else math.nan,
                "boot_p": boot.p_value if boot else math.nan, "n_resamples": boot.n_resamples if boot else 0,
                "p": p})
    return out


_SIGNIFICANCE_FIELDS = ["task", "metric", "method", "reference", "n_pairs", "mean_difference", "fold_t", "fold_p",
                        "boot_difference", "boot_ci_low", "boot_ci_high", "boot_p", "n_resamples", "p"]


def write_significance_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """:func:`significance` as CSV (columns of ``_SIGNIFICANCE_FIELDS``; empty where undefined)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_SIGNIFICANCE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else
                             f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write(path, text.getvalue())


def write_cv_summary_json(result: CVResult, tasks: Sequence[str], methods: Sequence[str],
                          sig: Sequence[dict], path: str | Path, cohort: Cohort | None = None) -> Path:
    """``cv_summary.json``: the folds and repeats, per task/method/metric mean ± std over folds,
    :func:`significance` (p-values and bootstrap CIs) and MSRL's graph diagnostics
    (:func:`graph_summary`) and, given the ``cohort``, the survival calibration on held-out folds
    (:func:`survival_calibration`) and the held-out coverage of the 90 % conformal sets
    (:func:`conformal_coverage`); strict JSON (``null`` where undefined)."""
    from msrl_model.infer.bundle.manifest import json_safe

    summary = [{"task": t, "method": m, "metric": metric, **s}
               for t in tasks for m in methods for metric, s in result.metric_summary(t, m).items()]
    data = {"n_folds": result.n_folds, "repeats": result.repeats, "tasks": list(tasks), "methods": list(methods),
            "summary": summary, "significance": list(sig), "graph_diagnostics": graph_summary(result)}
    if cohort is not None:
        from msrl_model.infer.conformal import DEFAULT_COVERAGE

        calibration = {t: survival_calibration(result, cohort, t) for t in tasks}
        data["survival_calibration"] = {t: c for t, c in calibration.items() if c is not None}
        coverage = {t: conformal_coverage(result, cohort, t, DEFAULT_COVERAGE) for t in tasks}
        data["conformal_coverage"] = {t: {"level": DEFAULT_COVERAGE, "coverage": c[0], "set_size": c[1]}
                                      for t, c in coverage.items() if c is not None}
    return atomic_write(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")


def graph_summary(result: CVResult) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {diagnostic: {"mean", "std", "n_folds"}}} of MSRL's graph diagnostics over the folds
    (:mod:`msrl_model.train.graphcheck`; NaN folds left out)."""
    from msrl_model.train.graphcheck import DIAGNOSTICS

    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in dict.fromkeys(t for t, _ in result.graph):
        folds = [d for t, d in result.graph if t == task]
        out[task] = {}
        for name in DIAGNOSTICS:
            vals = np.array([d.get(name, math.nan) for d in folds], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            out[task][name] = {"mean": float(vals.mean()) if vals.size else math.nan,
                               "std": float(vals.std()) if vals.size else math.nan, "n_folds": int(vals.size)}
    return out


def survival_calibration(result: CVResult, cohort: Cohort, task: str, method: str = "msrl") -> dict | None:
    """Held-out survival calibration of ``method`` (:mod:`msrl_model.stats.survival_calibration`):
    ``{"folds", "ibs": {mean, std}, "ibs_reference": {mean, std}, "brier": [{time, model, reference}],
    "groups": [{group, time, predicted, observed}]}`` with per-edge values averaged over the folds
    (the j-th interior bin edge of each fold; their times differ a little between folds, the mean
    time is given); None without out-of-fold survival curves (folds written before they were kept)."""
    from msrl_model.stats.survival_calibration import calibration_by_group, evaluation_times, fold_brier

    oof = result.oof.get((task, method))
    if oof is None or "survival" not in oof:
        return None
    times, cens = cohort.times, cohort.censorship
    ibs, ibs_ref, per_edge, groups = [], [], {}, {}
    for i, (train, _) in enumerate(result.folds):
        rep, fold = divmod(i, result.n_folds)
        edges = result.bin_edges.get((task, rep, fold))
        sel = np.flatnonzero((oof["repeat"] == rep) & (oof["fold"] == fold))
        if edges is None or sel.size < 3:
            continue
        cases = oof["case"][sel]
        b = fold_brier(oof["survival"][sel], edges, times[cases], cens[cases], times[train], cens[train])
        if b is None:
            continue
        if math.isfinite(b.integrated_model):
            ibs.append(b.integrated_model)
            ibs_ref.append(b.integrated_reference)
        for j, t in enumerate(b.times):
            per_edge.setdefault(j, []).append((t, b.model[j], b.reference[j]))
        at = evaluation_times(edges, times[train], times[cases])
        for g, (pred, obs) in enumerate(calibration_by_group(oof["survival"][sel], edges, oof["risk"][sel],
                                                             times[cases], cens[cases], at)):
            for j, t in enumerate(at):
                groups.setdefault((g, j), []).append((t, pred[j], obs[j]))
    if not per_edge:
        return None
    names = ("low", "intermediate", "high")
    return {
        "folds": len(ibs),
        "ibs": {"mean": float(np.mean(ibs)) if ibs else math.nan, "std": float(np.std(ibs)) if ibs else math.nan},
        "ibs_reference": {"mean": float(np.mean(ibs_ref)) if ibs_ref else math.nan,
                          "std": float(np.std(ibs_ref)) if ibs_ref else math.nan},
        "brier": [{"time": float(np.mean([v[0] for v in vals])), "model": float(np.mean([v[1] for v in vals])),
                   "reference": float(np.mean([v[2] for v in vals]))} for _, vals in sorted(per_edge.items())],
        "groups": [{"group": names[g] if g < len(names) else str(g), "time": float(np.mean([v[0] for v in vals])),
                    "predicted": float(np.mean([v[1] for v in vals])), "observed": float(np.mean([v[2] for v in vals]))}
                   for (g, _), vals in sorted(groups.items())],
    }


def conformal_coverage(result: CVResult, cohort: Cohort, task: str, coverage: float,
                       method: str = "msrl") -> tuple[float, float] | None:
    """(empirical coverage, mean set size) of ``method``'s conformal sets on held-out folds, the mean
    over repeats of :func:`~msrl_model.infer.conformal.cross_coverage` (classification) or
    :func:`~msrl_model.infer.conformal.survival_cross_coverage` (survival) within each repeat (a case's
    other-repeat predictions never calibrate its own set). None without out-of-fold predictions."""
    from msrl_model.infer.conformal import censoring_weights, cross_coverage, survival_cross_coverage

    oof = result.oof.get((task, method))
    if oof is None or not ("probs" in oof or "survival" in oof):
        return None
    weights = censoring_weights(cohort.times, cohort.censorship)
    found = []
    for rep in np.unique(oof["repeat"]):
        sel = np.flatnonzero(oof["repeat"] == rep)
        cases = oof["case"][sel]
        if "probs" in oof:
            found.append(cross_coverage(oof["probs"][sel], cohort.label_codes(task)[cases], oof["fold"][sel], coverage))
        else:
            edges = [np.asarray(result.bin_edges[(task, int(rep), int(f))]) for f in oof["fold"][sel]]
            found.append(survival_cross_coverage(oof["survival"][sel], edges, cohort.times[cases],
                                                 cohort.censorship[cases], weights[cases], oof["fold"][sel], coverage))
    return float(np.mean([c for c, _ in found])), float(np.mean([s for _, s in found]))


def _columns(result: CVResult, tasks: Sequence[str]) -> list[tuple[str, str]]:
    cols = []
    for task in tasks:
        metrics = {r["metric"] for r in result.rows if r["task"] == task}
        cols += [(task, m) for m in ("c_index", "auc", "f1") if m in metrics]
    return cols


def significance_mark(p: float) -> str:
    """‡ for p < 0.01, † for p < 0.05, nothing otherwise (or when p is undefined)."""
    if not math.isfinite(p):
        return ""
    return "‡" if p < 0.01 else "†" if p < 0.05 else ""


def cv_table_markdown(result: CVResult, tasks: Sequence[str], methods: Sequence[str],
                      sig: Sequence[dict] = ()) -> str:
    """Rows = methods, columns = task × metric, cells = mean ± std over folds (and repeats); best mean
    in bold; † / ‡ where :func:`significance` rows ``sig`` find a method different from MSRL."""
    cols = _columns(result, tasks)
    marks = {(r["method"], r["task"], r["metric"]): significance_mark(r["p"]) for r in sig}
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
            text = f"**{text}**" if math.isfinite(mean) and mean == best[(task, metric)] else text
            row.append(text + marks.get((m, task, metric), ""))
        lines.append("| " + " | ".join(row) + " |")
    runs = f"{result.n_folds} cross-validation folds" + (f" × {result.repeats} repeats" if result.repeats > 1 else "")
    lines.append("")
    lines.append(f"Mean ± standard deviation over {runs} (test folds never seen in training or pre-training); "
                 "best mean per column in bold.")
    if sig:
        n_boot = max((r["n_resamples"] for r in sig), default=0)
        lines.append(f"† p < 0.05, ‡ p < 0.01: differs from {display_name(sig[0]['reference'])} in both a paired "
                     f"t-test across the {len(result.folds)} folds (corrected for their overlapping training sets) "
                     f"and a paired bootstrap over out-of-fold cases ({n_boot} resamples); F1 by the fold test "
                     "alone. p-values and 95 % intervals: cv_significance.csv of the training run.")
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


def plot_survival_calibration(calibration: dict, path: str | Path, title: str) -> Path:
    """The calibration plot of :func:`survival_calibration`: per risk tertile, mean predicted survival
    against the group's Kaplan–Meier survival at the bin edges, with the diagonal (perfect calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], color="#9ca3af", linestyle="--", linewidth=1, label="perfect calibration")
    colours = {"low": "#1a9850", "intermediate": "#e0a030", "high": "#d73027"}
    for group in dict.fromkeys(g["group"] for g in calibration["groups"]):
        points = [g for g in calibration["groups"] if g["group"] == group]
        ax.plot([g["predicted"] for g in points], [g["observed"] for g in points], marker="o",
                color=colours.get(group, "#4b5563"), label=f"{group} risk")
        for g in points:
            ax.annotate(f"{g['time']:.0f} mo", (g["predicted"], g["observed"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="#4b5563")
    ax.set_xlabel("predicted survival (mean of the group, out of fold)")
    ax.set_ylabel("observed survival (Kaplan–Meier of the group)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_km(result: CVResult, cohort: Cohort, task: str, method: str, path: str | Path) -> float | None:
    """Kaplan–Meier curves of the high/low predicted-risk groups (out-of-fold, the first repeat: each
    case once); returns the log-rank p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = result.oof.get((task, method))
    if entry is None or "risk" not in entry:
        return None
    first = entry["repeat"] == 0
    cases = entry["case"][first]
    times, censorship = cohort.times[cases], cohort.censorship[cases]
    groups = risk_groups(entry["risk"][first], entry["fold"][first])
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


__all__ = ["conformal_coverage", "cv_table_markdown", "graph_summary", "plot_survival_calibration",
           "survival_calibration", "plot_km", "risk_groups", "significance", "significance_mark",
           "write_cv_csv", "write_cv_summary_json", "write_significance_csv"]
