"""The model bundle of a training run: the final MSRL network of every task and its buffer.

Everything the bundle needs is assembled here and handed to
:func:`msrl_model.infer.bundle.write_bundle` in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msrl_model.cohort import Cohort
from msrl_model.features.provenance import FeatureProvenance
from msrl_model.nn.config import MSRLConfig
from msrl_model.train.cv import CVResult


def case_table(cohort: Cohort, cases: np.ndarray) -> pd.DataFrame:
    """One row per buffer case: case_id, slide_id (first slide), project, survival, censorship, labels."""
    df = cohort.cases.iloc[cases]
    out = pd.DataFrame({
        "case_id": df["case_id"].astype(str).to_numpy(),
        "slide_id": [cohort.slides[c][0] for c in df["case_id"]],
        "project": df["project"].astype(str).to_numpy(),
        "survival_months": df["survival_months"].to_numpy(np.float64),
        "censorship": df["censorship"].to_numpy(np.int64),
    })
    for name in cohort.labels:
        values = df[name].tolist()
        out[name] = pd.Series([v if isinstance(v, str) and v else None for v in values], dtype="object")
    return out


def case_thumbnails(cohort: Cohort, cases: np.ndarray, max_size: int = 192) -> list[bytes] | None:
    """Small JPEG thumbnails of each buffer case's first slide (b"" where it has no slide file).

    None when the cohort has no slide files at all (features only): the bundle then has no thumbnails.
    """
    import io

    from PIL import Image

    from msrl_model.errors import SlideError
    from msrl_model.slide import open_slide

    if not any(cohort.slide_paths.values()):
        return None
    thumbs = []
    for case in cohort.cases["case_id"].iloc[cases]:
        path = cohort.slide_paths.get(cohort.slides[case][0])
        jpeg = b""
        if path is not None:
            try:
                with open_slide(path) as slide:
                    buf = io.BytesIO()
                    Image.fromarray(slide.thumbnail(max_size)).save(buf, format="JPEG", quality=85)
                    jpeg = buf.getvalue()
            except SlideError:
                jpeg = b""  # an unreadable slide keeps its buffer row, without a picture
        thumbs.append(jpeg)
    return thumbs


def expression_scale(cohort: Cohort) -> str:
    """"raw" or "log": how the cohort's expression table was given (the app treats a case's file alike).

    ``Cohort`` keeps the inferred scale only in its notes when cohort.json does not set it.
    """
    if cohort.config.expression_scale in ("raw", "log"):
        return cohort.config.expression_scale
    return "raw" if any("inferred as 'raw'" in n for n in cohort.notes) else "log"


def feature_provenance(cohort: Cohort) -> FeatureProvenance | None:
    """How the cohort's feature files were made: their common tiling, tissue parameters (where the
    files record them) and encoder, read from every ``.h5`` file (a CLAM ``.pt`` records nothing).
    None without such files. CohortError listing the files per tiling when they disagree (the
    cohort check refuses that at load already; this catches files changed since)."""
    from msrl_model.errors import CohortError
    from msrl_model.features.provenance import common_provenance, read_provenance

    files = [(str(path), read_provenance(path)) for case in cohort.case_ids
             for path in cohort.case_feature_paths(case) if Path(path).suffix.lower() != ".pt"]
    try:
        return common_provenance(files)
    except ValueError as err:
        raise CohortError(f"cohort {cohort.root}: {err}") from None


def feature_encoder(cohort: Cohort, dim: int) -> dict:
    """Encoder description {name, version, dim[, spec]} from the feature files' attributes (all agree)."""
    made = feature_provenance(cohort)
    if made is None:
        return {"name": "unknown", "version": "", "dim": int(dim)}
    encoder = {"name": made.encoder, "version": made.encoder_version, "dim": int(dim)}
    if made.encoder_spec:
        encoder["spec"] = made.encoder_spec
    encoder.update(made.encoder_extra())  # preprocessing, checkpoint file and SHA-256 where recorded
    return encoder


def feature_tiling(cohort: Cohort) -> tuple[dict, dict]:
    """``(tiling, tissue)`` parameter dicts the bundle records: the feature files' tiling (patch size
    at the target level, target µm/px, min tissue fraction where recorded) and tissue parameters where
    recorded; ``TilingParams()`` / ``TissueParams()`` defaults for what the files do not say."""
    tiling, tissue, _ = _made(feature_provenance(cohort), 0)
    return tiling, tissue


def _made(made: FeatureProvenance | None, n_files: int) -> tuple[dict, dict, dict]:
    """(tiling, tissue, the manifest's features_made) from the common provenance."""
    from msrl_model.slide.tiling import TilingParams
    from msrl_model.slide.tissue import TissueParams

    tissue = made.tissue_params() if made is not None else None
    source = {"tiling_from": "feature files" if made is not None and made.tiling_recorded else "defaults",
              "tissue_from": "feature files" if tissue is not None else "defaults",
              "encoder_from": "feature files" if made is not None and made.encoder_recorded else "defaults",
              "files": int(n_files)}
    return (made.tiling() if source["tiling_from"] == "feature files" else TilingParams().to_dict(),
            tissue if tissue is not None else TissueParams().to_dict(), source)


def oof_conformal_scores(cohort: Cohort, result: CVResult, task: str) -> tuple[list[float] | None, list[float] | None]:
    """(scores, weights) of MSRL's out-of-fold predictions of ``task`` (:mod:`msrl_model.infer.conformal`):
    classification, 1 − p̂(true class) of the labelled cases and no weights; survival, 1 − p̂(the
    event's time bin, in its fold's bins) of the observed events with their censoring weights
    (infinite weights left out). (None, None) when the run kept no such predictions."""
    from msrl_model.infer.conformal import censoring_weights, scores_of, survival_scores

    oof = result.oof.get((task, "msrl"))
    if oof is None:
        return None, None
    if "probs" in oof:
        return [float(s) for s in scores_of(oof["probs"], cohort.label_codes(task)[oof["case"]])], None
    if "survival" not in oof:
        return None, None
    cases = oof["case"]
    edges = [np.asarray(result.bin_edges[(task, int(r), int(f))]) for r, f in zip(oof["repeat"], oof["fold"])]
    weights = censoring_weights(cohort.times, cohort.censorship)[cases]
    scores, w = survival_scores(oof["survival"], edges, cohort.times[cases], cohort.censorship[cases], weights)
    keep = np.isfinite(w)
    return [float(s) for s in scores[keep]], [float(v) for v in w[keep]]


def applicability_calibration(cohort: Cohort, mean: np.ndarray, std: np.ndarray
                              ) -> tuple[dict[str, Any], np.ndarray] | None:
    """The calibration of the out-of-distribution check: the profile of every training slide's
    feature file (one per slide, as a new slide is analysed) and its leave-one-out score
    (:func:`msrl_model.infer.applicability.calibration`); None with fewer than two slides."""
    from msrl_model.features.h5io import read_features
    from msrl_model.infer.applicability import calibration

    bags = (read_features(path).features for case in cohort.case_ids for path in cohort.case_feature_paths(case))
    return calibration(bags, mean, std)


def export_bundle(out: str | Path, *, cohort: Cohort, result: CVResult, config: MSRLConfig, encoder: dict,
                  model_card: str, sign_key: Any = None, significance: Sequence[dict] = ()) -> Path:
    """Write the bundle of ``result.final`` to ``out`` (directory or ``.msrl``) with ``write_bundle``;
    ``sign_key`` (a :class:`msrl_model.infer.bundle.SigningKey`) signs its manifest. The manifest's
    tiling and tissue parameters are those the cohort's feature files were made with
    (:func:`feature_tiling`), so the app and ``msrl analyze`` tile a new slide the same way.

    The manifest also gets each classification task's readable class names
    (:func:`msrl_model.cohort.labels.class_names`) and the conformal scores of its out-of-fold
    predictions (:func:`oof_conformal_scores`), each metric's number of folds (``n_folds``, for
    :mod:`msrl_model.infer.informative`) and the calibration of the out-of-distribution check: the
    profiles of the training slides against the final networks' training-patch μ, σ
    (:func:`applicability_calibration`, :mod:`msrl_model.infer.applicability`). With the run's
    ``significance`` rows (:func:`msrl_model.train.report.significance`), each task's metrics also
    hold those of the no_graph and shuffled_buffer ablations with their p-values against MSRL
    (:func:`msrl_model.infer.graph_evidence.ablation_metrics`): whether the linked cases earned
    their place, which the app states next to them."""
    from msrl_model.cohort.labels import class_names
    from msrl_model.infer.bundle import TaskBundle, write_bundle
    from msrl_model.infer.graph_evidence import ABLATIONS, ablation_metrics

    fg = result.final_genomics
    if fg is None or not result.final:
        raise ValueError("the CV result has no final models; run cv_job(..., final=True)")
    tasks = []
    for name, final in result.final.items():
        res = final.result
        metrics = {m: {"mean": s["mean"], "std": s["std"], "n_folds": s["n_folds"]}
                   for m, s in result.metric_summary(name, "msrl").items()}
        metrics.update(ablation_metrics({a: result.metric_summary(name, a) for a in ABLATIONS}, significance, name))
        spec = res.online.task
        conformal = oof_conformal_scores(cohort, result, name)
        tasks.append(TaskBundle(
            spec=spec, variant=res.online.variant,
            state_dict={k: v.detach().cpu() for k, v in res.online.state_dict().items()},
            buffer_nodes=res.buffer.detach().cpu().numpy().astype(np.float32),
            cases=case_table(cohort, res.buffer_cases),
            pathways=fg.pathways[res.buffer_cases].numpy().astype(np.float32),
            metrics=metrics, thumbnails=case_thumbnails(cohort, res.buffer_cases),
            class_names=class_names(name, spec.classes, (cohort.config.labels or {}).get(name))
            if spec.kind == "classification" else None,
            conformal_scores=conformal[0], conformal_weights=conformal[1]))
    scale = expression_scale(cohort)
    genomics = {"genes": list(cohort.genes), "group_names": list(cohort.group_names),
                "groups": [g.tolist() for g in cohort.gene_groups],
                "scaler_mean": fg.scaler.mean, "scaler_std": fg.scaler.std,
                "expression_scale": scale}
    summary = cohort.summary()
    cohort_summary = {"n_cases": summary["cases"], "projects": summary["projects"],
                      "synthetic": summary["synthetic"], "source": str(cohort.root.name),
                      "name": summary["name"], "censored_fraction": summary["censored_fraction"]}
    n_files = sum(len(cohort.case_feature_paths(c)) for c in cohort.case_ids)
    tiling, tissue, made = _made(feature_provenance(cohort), n_files)  # how the training features were made
    encoder_net = next(iter(result.final.values())).result.online.slide_encoder  # μ, σ: every task's are the same
    calibrated = applicability_calibration(cohort, encoder_net.patch_mean.detach().cpu().numpy(),
                                           encoder_net.patch_std.detach().cpu().numpy())
    block, profiles = calibrated if calibrated is not None else (None, None)
    return write_bundle(out, config=config, tasks=tasks, encoder=encoder, tiling=tiling,
                        tissue=tissue, genomics=genomics, cohort_summary=cohort_summary,
                        model_card=model_card, sign_key=sign_key, features_made=made,
                        applicability=block, slide_profiles=profiles)


__all__ = ["applicability_calibration", "case_table", "oof_conformal_scores", "case_thumbnails", "export_bundle", "expression_scale", "feature_encoder",
           "feature_provenance", "feature_tiling"]
