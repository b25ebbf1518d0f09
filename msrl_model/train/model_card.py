"""The model card of a training run (Markdown, shipped in the bundle): the cohort, the model, the
cross-validated table with its significance marks, what the graph does, survival calibration,
conformal coverage, tasks no better than chance, limitations and the configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from msrl_model.cohort import Cohort
from msrl_model.cohort.labels import class_names
from msrl_model.train.cv import CVResult
from msrl_model.train.report import conformal_coverage, cv_table_markdown, graph_summary, survival_calibration
from msrl_model.train.variants import display_name

_GRAPH_LABELS = {
    "self_share": "query's own share of its first aggregation",
    "linked": "linked training cases",
    "output_change": "change of the prediction by the buffer (survival: |Δrisk| / SD(risk); classes: total variation)",
    "rank_agreement": "rank agreement with the query linked to nothing (Spearman)",
    "r2_prompt": "R² of the held-out case's true pathway scores by the model without the graph",
    "r2_graph": "R² of the same by the model with the graph",
    "r2_neighbours": "R² of the same by the linked cases' authentic pathway scores",
    "neighbour_extra": "what the neighbours add: corr(true − prompt, neighbours − prompt)",
    "grad_share_gsl": "share of the fine-tuning gradient norm reaching the GSL",
    "grad_share_gcn": "share reaching the GCN",
    "grad_share_skip": "share reaching the readout skip",
}


def _graph_lines(result: CVResult, sig: Sequence[dict], synthetic: bool) -> list[str]:
    """The model card's "what the graph does" section: the diagnostics table and what it measured, in
    words generated from the figures and the significance of the graph ablations (empty without
    diagnostics)."""
    summary = graph_summary(result)
    if not summary:
        return []
    tasks = list(summary)
    lines = ["### What the graph does (MSRL, held-out cases)", "",
             "Diagnostics of the trained MSRL network on each fold's test cases "
             "(`msrl_model.train.graphcheck`); mean ± SD over folds. \"Without the graph\" reads the network "
             "with the query linked to nothing, a state it was not trained in: its pathway R² understates what "
             "the prompt alone carries.", "",
             "| | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, label in _GRAPH_LABELS.items():
        cells = [summary[t][name] for t in tasks]
        lines.append(f"| {label} | " + " | ".join(
            "—" if not math.isfinite(c["mean"]) else f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells) + " |")
    lines += [""] + _graph_findings(summary, sig, synthetic)
    return lines + [""]


def _graph_findings(summary: dict, sig: Sequence[dict], synthetic: bool) -> list[str]:
    """What the diagnostics and the ablations say, as bullets (survival first, the paper's Table 3 task)."""
    task = "survival" if "survival" in summary else next(iter(summary))
    d = {name: v["mean"] for name, v in summary[task].items()}
    metric = "c_index" if task == "survival" else "auc"
    p_of = {r["method"]: r for r in sig if r["task"] == task and r["metric"] == metric}
    out = [f"What was measured ({task}):", ""]
    helped = [m for m in ("no_graph", "shuffled_buffer") if m in p_of
              and p_of[m]["mean_difference"] < 0 and math.isfinite(p_of[m]["p"]) and p_of[m]["p"] < 0.05]
    tested = [m for m in ("no_graph", "shuffled_buffer") if m in p_of]
    if tested:
        diffs = ", ".join(f"{display_name(m)} {p_of[m]['mean_difference']:+.4f} (p = {p_of[m]['p']:.2g})" for m in tested)
        verdict = ("the linked cases improved held-out accuracy" if len(helped) == len(tested)
                   else "the linked cases did not measurably improve held-out accuracy")
        out.append(f"* Against MSRL: {diffs} — {verdict}. The app says this next to the linked cases.")
    if math.isfinite(d.get("self_share", math.nan)) and math.isfinite(d.get("rank_agreement", math.nan)):
        out.append(f"* The neighbours hold {1 - d['self_share']:.0%} of a query's first aggregation, yet removing them "
                   f"keeps the ranking of held-out cases (Spearman {d['rank_agreement']:.3f}) and moves a risk by "
                   f"{d['output_change']:.2f} SD on average: what they bring is mostly what the query's own "
                   "features already say.")
    if math.isfinite(d.get("grad_share_gsl", math.nan)):
        skip = f", readout skip {d['grad_share_skip']:.0%}" if math.isfinite(d.get("grad_share_skip", math.nan)) else ""
        out.append(f"* The graph learner receives {d['grad_share_gsl']:.2%} of the fine-tuning gradient (GCN "
                   f"{d['grad_share_gcn']:.0%}{skip}): the learned graph barely moves from its stage-1 weights in "
                   "fine-tuning; compare Random GSL in the table.")
    if math.isfinite(d.get("r2_neighbours", math.nan)):
        out.append(f"* The linked cases' authentic pathway scores explain R² {d['r2_neighbours']:.2f} of a held-out "
                   f"case's measured ones (the network's reconstruction with the graph {d['r2_graph']:.2f}): the "
                   "neighbours do share genomics with the query.")
    if synthetic:
        out.append("* This cohort is SYNTHETIC and built so that part of the prognosis (its genomic factor, see the "
                   "cohort's README) is independent of everything a slide shows. Neighbours are chosen by their "
                   "slides, so they cannot know a query's value of it: what they share with the query is what its "
                   "slide shows already, and the graph can re-estimate but not add. The paper's claim is about real "
                   "cohorts, where genomics visible only faintly in slides may be recovered this way; test it on "
                   "yours with the same ablations.")
    return out


def _calibration_lines(cohort: Cohort, result: CVResult, tasks: Sequence[str]) -> list[str]:
    """The model card's survival calibration section (empty without out-of-fold survival curves)."""
    lines = []
    for task in tasks:
        cal = survival_calibration(result, cohort, task)
        if cal is None:
            continue
        ibs, ref = cal["ibs"], cal["ibs_reference"]
        lines += [f"### Survival calibration on held-out folds ({task}, MSRL)", "",
                  f"Integrated Brier score {ibs['mean']:.4f} ± {ibs['std']:.4f} over {cal['folds']} folds, against "
                  f"{ref['mean']:.4f} ± {ref['std']:.4f} for the training cases' Kaplan–Meier curve given to every "
                  "case (lower is better; scikit-survival, censoring weights from each fold's training cases).", "",
                  "| time (months) | Brier, MSRL | Brier, Kaplan–Meier |", "|---|---|---|",
                  *[f"| {b['time']:.1f} | {b['model']:.4f} | {b['reference']:.4f} |" for b in cal["brier"]], "",
                  "Predicted against observed (Kaplan–Meier) survival by out-of-fold risk tertile, at the bin edges "
                  f"(plotted in `calibration_{task}.png` of the training run):", "",
                  "| risk group | time (months) | predicted | observed |", "|---|---|---|---|",
                  *[f"| {g['group']} | {g['time']:.1f} | {g['predicted']:.3f} | {g['observed']:.3f} |"
                    for g in cal["groups"]], ""]
    return lines


def _coverage_lines(cohort: Cohort, result: CVResult, tasks: Sequence[str]) -> list[str]:
    """Empirical coverage of MSRL's 90 % conformal sets on held-out folds (:mod:`msrl_model.infer.conformal`)."""
    from msrl_model.infer.conformal import DEFAULT_COVERAGE

    rows = []
    for task in tasks:
        found = conformal_coverage(result, cohort, task, DEFAULT_COVERAGE)
        if found is not None:
            covered, size = found
            unit = "time bins" if task not in cohort.labels else "classes"
            rows.append(f"| {task} | {covered:.3f} | {size:.2f} {unit} |")
    if not rows:
        return []
    return [f"### Conformal prediction sets ({DEFAULT_COVERAGE:.0%})", "",
            "Split-conformal sets from out-of-fold MSRL predictions; each fold's sets calibrated on the other "
            "folds of its repeat. Classification: sets of classes. Survival: sets of the model's time bins for "
            "the event, calibrated on the observed events with censoring weights 1/Ĝ(T−), and the coverage "
            "censoring-weighted the same way (an estimate of P(event time in the set) for every case).", "",
            "| Task | empirical coverage | mean set size |", "|---|---|---|", *rows, ""]


def _informative_lines(result: CVResult, tasks: Sequence[str]) -> list[str]:
    """Which shipped (MSRL) tasks are informative in cross-validation (:mod:`msrl_model.infer.informative`)."""
    from msrl_model.infer.informative import informative

    lines = []
    for task in tasks:
        summary = result.metric_summary(task, "msrl")
        kind = "survival" if "c_index" in summary else "classification"
        known, note = informative(kind, summary)
        if known is False:
            lines.append(f"* {task}: {note.split(': ', 1)[-1]} — the app, the report and the result files "
                         "show it as not informative in cross-validation")
    if not lines:
        return []
    return ["### Tasks no better than chance", "", *lines, ""]


def model_card(*, cohort: Cohort, result: CVResult, tasks: Sequence[str], methods: Sequence[str], encoder: dict,
               config_text: str, km_pvalues: dict[str, float], wall_seconds: float | None = None,
               sig: Sequence[dict] = ()) -> str:
    """The model card (Markdown) of the bundle; ``sig``: :func:`significance` rows for the table's marks."""
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
        "* projects: " + ", ".join(f"{p} ({n})" for p, n in s["projects"].items()),
        f"* genes: {s['genes']} in {s['gene_groups']} gene groups",
    ]
    for name, counts in s["labels"].items():
        names = class_names(name, list(counts), (cohort.config.labels or {}).get(name))
        lines.append(f"* {name}: " + ", ".join(f"{c if shown == c else f'{shown} ({c})'} {n}"
                                               for (c, n), shown in zip(counts.items(), names)))
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
        cv_table_markdown(result, tasks, methods, sig),
    ]
    if km_pvalues:
        lines += ["Kaplan–Meier log-rank p-values of out-of-fold high/low risk groups (per-fold median split): "
                  + ", ".join(f"{display_name(m)} {p:.2g}" for m, p in km_pvalues.items()), ""]
    if wall_seconds is not None:
        lines += [f"Training wall time: {wall_seconds / 60:.1f} min.", ""]
    lines += _graph_lines(result, sig, synthetic)
    lines += _calibration_lines(cohort, result, tasks)
    lines += _informative_lines(result, tasks)
    lines += _coverage_lines(cohort, result, tasks)
    lines += [
        "## Limitations",
        "",
        "* Cross-validation on one cohort overestimates performance on other sites, scanners and stains.",
        "* Small cohorts give wide fold-to-fold variation (see the ± columns).",
        "* The buffer holds the training cases' features and clinical data: share the bundle only "
        "where that is allowed.",
        "* Predictions depend on the patch encoder: features from another encoder are refused.",
        "* A slide unlike every training slide (another tissue, stain or scanner) is flagged when it is analysed: "
        "its average standardised patch feature is farther from its 3 nearest training slides' than the "
        "training slides are from each other (conformal p < 0.05, leave-one-out over the training slides).",
    ]
    if synthetic:
        lines.append("* Trained on SYNTHETIC data: the numbers above describe the simulation, not any disease.")
    lines += ["", "## Configuration", "", "```toml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


__all__ = ["model_card"]
