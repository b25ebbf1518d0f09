r"""The one prediction API the app and the CLI use: :class:`Predictor`.

``Predictor.from_bundle(path)`` loads and validates a bundle, builds each task's
:class:`~msrl_model.nn.msrl.MSRLNet` from the manifest config and the weights, and (lazily, once per
task) an :class:`~msrl_model.infer.engine.ExactEngine` over that task's buffer plus the cohort
statistics below. ``predict`` runs one slide's patch features through every task:

.. math::
    h, a = φ_H(X), \quad f = [\mathrm{Inductor}(h); h] \ \text{(MSRL)} \ \text{or}\
    [φ_G(\mathrm{scale}(x_{expr})); h] \ \text{(MSRL\_multi)} \ \text{or}\ h \ \text{(MSRL\_H)},
    \quad z = \mathrm{GCN}(\mathrm{GSL}([F_{buffer}; f]))_{query}

Decisions (documented here and in the result JSON's docstring, :mod:`msrl_model.infer.results`):

* **Cohort risks** (percentile and risk group) are the buffer cases' own outputs in the graph of the
  buffer alone: ``head(GCN(A_buffer, F_buffer))``, one sparse pass at load. The buffer nodes carry
  authentic genomics, so these are the training cases as the trained graph sees them; the cheaper
  alternative to a leave-one-out query per case, and stable (no case links to itself as a query).
* **Percentile** = % of buffer cases with a lower risk, ties counting half. **Risk group** = tertiles
  of the cohort risks: low (< first tertile), intermediate, high (> second tertile).
  ``percentile_in_project`` uses only the buffer cases of the given project.
* **Survival curve**: S_j = P(alive at the end of bin j), a step function at the bin edges: 1 on
  [0, e_1), S_j on [e_j, e_{j+1}); the open last bin has no finite end, so S_J is only in
  ``bin_survival``. Median survival = the first edge e_j with S_j ≤ 0.5, else None (not reached).
* **Neighbours' KM**: unweighted Kaplan–Meier of the linked cases (each neighbour counts once); the
  edge weights are listed next to each case. Pathway ``neighbours_mean`` is edge-weighted.
* **Influence and graph contribution**: :meth:`~msrl_model.infer.engine.ExactEngine.explain` gives z
  on [buffer; q], on [q] alone and on [buffer without r; q] for each linked row r, exactly; the 2 + M
  outputs go through the readout as one batch (the node features of the slide are the same in all),
  so influence_r = f(with) - f(without r) and the graph contribution f(with) - f(alone) are differences
  of identically computed numbers (f: the risk, or the class probabilities; float64 after the head).
  Cost: M ≲ 2K more local GCNs and O(N) reads each (engine docstring), no second pass over E_b.
* **What the neighbours say**: the edge-weighted event rate (status known) and the KM median of the
  linked cases; for a classification task the edge-weighted class shares of the linked cases whose
  label (the case-table column named as the task, integer codes read as '1') is one of its classes.
* **Suggested project**: the edge-weighted majority project among the linked cases. The graph always
  uses the whole buffer, as trained; ``project`` only selects the within-project percentile.
* **Readable classes**: each classification result carries the bundle's class names next to the codes
  (``class_names``: TP53_mut "0" reads "wild-type"; :mod:`msrl_model.cohort.labels`).
* **Prediction sets**: with the bundle's out-of-fold conformal scores a classification result carries
  the split-conformal set at ``Predictor.coverage`` (default 90 %, :mod:`msrl_model.infer.conformal`),
  a survival result the set of time bins for the event (censoring-weighted conformal).
* **Informative tasks**: ``TaskResult.informative`` is False when the task's cross-validated C-index or
  AUC does not exceed chance with confidence (:mod:`msrl_model.infer.informative`).
* **Applicability**: every slide's patch features are checked against the training slides
  (:mod:`msrl_model.infer.applicability`, a conformal p-value); a flagged slide's result leads its
  warnings with "This slide is unlike the training cohort …" and carries ``applicability``.
* **MSRL_multi**: with ``expression`` the genomics node half comes from φ_G on the real expression
  (log1p first when the bundle's scale is "raw", then the bundle's z-scaler; missing genes set to
  the training mean, i.e. z = 0, with a warning). Each task result says its ``mode``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msrl_model import __version__
from msrl_model.errors import BundleError, MSRLError
from msrl_model.infer.bundle import Bundle, TaskBundle, check_encoder, json_safe, load_bundle
from msrl_model.infer.applicability import bundle_check
from msrl_model.infer.conformal import DEFAULT_COVERAGE
from msrl_model.infer.graph_evidence import graph_evidence
from msrl_model.infer.informative import informative
from msrl_model.infer.neighbours import percentile_of, survival_curve, weighted_majority
from msrl_model.infer.results import LinkedCase, PathwayActivity, PredictionResult, TaskResult
from msrl_model.infer.task_runtime import TaskRuntime, classification_prediction, survival_prediction
from msrl_model.nn.genomics import gather_groups
from msrl_model.nn.msrl import SlideBatch
from msrl_model.progress import Job, Progress, Stage


class Predictor:
    """Predictions for slides from a loaded bundle (see the module docstring for the decisions).

    Args:
        bundle: a loaded bundle (:func:`~msrl_model.infer.bundle.load_bundle`).
        device: "auto" (CUDA when available), "cpu" or "cuda[:N]".
        coverage: of the conformal prediction sets of classification tasks (:mod:`msrl_model.infer.conformal`);
            an attribute, so a caller may change it between predictions.
    """

    def __init__(self, bundle: Bundle, device: str = "auto", coverage: float = DEFAULT_COVERAGE) -> None:
        from msrl_model.device import resolve_device

        self.bundle = bundle
        self.coverage = float(coverage)
        self.device = resolve_device(device)
        self.device_name = str(self.device)
        try:
            self._tasks = {name: TaskRuntime(bundle, t, self.device) for name, t in bundle.tasks.items()}
        except (RuntimeError, ValueError) as err:
            raise BundleError(f"model bundle {bundle.path}: cannot build its networks ({err}); "
                              "rebuild the bundle") from None
        self._encoder: Any = None
        self._encoder_lock = threading.Lock()  # the app may warm the encoder while an analysis asks for it
        phi_h = next(iter(self._tasks.values())).net.slide_encoder  # every task's μ, σ: the training patches'
        self.applicability = bundle_check(bundle, phi_h.patch_mean.double().cpu().numpy(),
                                          phi_h.patch_std.double().cpu().numpy())

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "auto", expected_encoder: dict | None = None) -> Predictor:
        """Load, validate and prepare a bundle (BundleError when it cannot be used)."""
        return cls(load_bundle(path, expected_encoder=expected_encoder), device=device)

    @property
    def tasks(self) -> list[str]:
        """Task names, bundle order."""
        return list(self._tasks)

    def cohort_risks(self) -> dict[str, np.ndarray]:
        """Per survival task, the cohort risks (N,) behind percentiles and risk groups (computed once)."""
        out = {}
        for name, rt in self._tasks.items():
            if rt.task.spec.kind == "survival":
                rt.prepare()
                out[name] = np.array(rt.cohort_risk, dtype=np.float64)
        return out

    # ---- inputs -----------------------------------------------------------------------------

    def expression_input(self, expression: Mapping[str, float] | Any) -> tuple[np.ndarray, list[str]]:
        """Packed, scaled genomics input (1, Σ group sizes) from gene -> value, and warnings.

        ``expression`` is a pandas Series or a dict of gene symbol -> value on the scale the bundle's
        genomics block names ("raw": log1p is applied; "log": used as is). Genes the bundle needs but
        the input lacks (or gives as NaN) are set to the training mean (z = 0).
        """
        g = self.bundle.genomics
        if g is None:
            raise MSRLError("this bundle has no genomics block, so it cannot use expression data (MSRL_multi); "
                            "analyse without --expression")
        values = {str(k): v for k, v in dict(expression).items()}
        x = np.array([float(values.get(gene, np.nan)) for gene in g.genes], dtype=np.float64)  # (G,)
        present = np.isfinite(x)
        if not present.any():
            raise MSRLError(f"none of the bundle's {len(g.genes)} genes has a value in the expression data "
                            f"(e.g. {', '.join(g.genes[:3])}); check the gene symbols")
        if g.expression_scale == "raw":
            x = np.log1p(np.maximum(x, 0.0))
        x = np.where(present, x, g.scaler_mean)
        z = ((x - g.scaler_mean) / g.scaler_std).astype(np.float32)  # (G,) z-scores
        packed = gather_groups(torch.from_numpy(z)[None], g.groups).numpy()  # (1, Σ s_i)
        warnings = []
        if not present.all():
            warnings.append(f"expression: {int((~present).sum())} of {len(g.genes)} genes missing; "
                            "set to the training mean (z = 0)")
        return packed, warnings

    # ---- prediction ---------------------------------------------------------------------------

    def predict(self, features: np.ndarray, coords: np.ndarray, patch_size_level0: int, project: str | None = None,
                expression: Mapping[str, float] | Any = None, *, slide_id: str = "slide") -> PredictionResult:
        """Predict every task for one slide.

        Args:
            features: (N, P) patch features from the bundle's encoder (P = config.patch_dim).
            coords: (N, 2) level-0 top-left pixel of each patch.
            patch_size_level0: patch side in level-0 pixels (the feature file's attribute).
            project: the slide's project (e.g. "TCGA-LUAD"), for the within-project percentile.
            expression: gene -> value (pandas Series or dict) to run MSRL_multi; None = WSI only.
            slide_id: the id recorded in the result.
        """
        job = self.predict_job(features, coords, patch_size_level0, project, expression, slide_id=slide_id)
        while True:
            try:
                next(job)
            except StopIteration as stop:
                return stop.value

    def predict_job(self, features: np.ndarray, coords: np.ndarray, patch_size_level0: int,
                    project: str | None = None, expression: Mapping[str, float] | Any = None, *,
                    slide_id: str = "slide", slide_path: str | None = None,
                    slide_sha256_head: str | None = None,
                    warnings: list[str] | None = None) -> Job[PredictionResult]:
        """:meth:`predict` as a job: yields Progress(Stage.PREDICT, i, n_tasks, task) and returns the result.

        ``warnings`` (e.g. the slide's and the feature file's: an assumed mpp, decoder warnings) lead
        the result's warnings."""
        cfg = self.bundle.config
        features = np.asarray(features, dtype=np.float32)
        coords = np.asarray(coords, dtype=np.int64)
        if features.ndim != 2 or features.shape[1] != cfg.patch_dim:
            raise BundleError(f"the features are {features.shape[-1] if features.ndim else 0}-d but the bundle "
                              f"expects {cfg.patch_dim}-d features from {self.bundle.encoder.get('name')}; "
                              "extract with the bundle's encoder")
        if len(features) == 0 or coords.shape != (len(features), 2):
            raise MSRLError(f"{slide_id}: need at least one patch with (N, 2) coords; got features "
                            f"{features.shape} and coords {coords.shape}")
        warnings = [str(w) for w in warnings or []]
        applicability = self.applicability.check(features)
        if applicability.flagged:
            warnings.insert(0, applicability.message)
        packed = None
        if expression is not None:
            packed_np, more = self.expression_input(expression)
            packed = torch.from_numpy(packed_np).to(self.device)
            warnings += more
        batch = SlideBatch.from_bags([torch.from_numpy(features)], [torch.from_numpy(coords)],
                                     [int(patch_size_level0)]).to(self.device)
        results: dict[str, TaskResult] = {}
        for i, (name, rt) in enumerate(self._tasks.items()):
            yield Progress(Stage.PREDICT, i, len(self._tasks), name)
            rt.prepare()
            results[name] = self._predict_task(rt, batch, packed, project, warnings)
        yield Progress(Stage.PREDICT, len(self._tasks), len(self._tasks), "done")
        modes = {t.mode for t in results.values()}
        mode = "msrl_multi" if "msrl_multi" in modes else ("msrl" if "msrl" in modes else "msrl_h")
        first = next((t for t in results.values() if t.kind == "survival"), next(iter(results.values())))
        if project is not None and not any(t.survival and t.survival.project_cases for t in results.values()):
            warnings.append(f"project {project!r} has no cases in the training cohort; "
                            "percentiles are against the whole cohort only")
        return PredictionResult(
            slide_id=slide_id, slide_path=slide_path, slide_sha256_head=slide_sha256_head,
            bundle_path=str(self.bundle.path), bundle_sha256=self.bundle.fingerprint,
            encoder={k: self.bundle.encoder.get(k) for k in ("name", "version", "dim")}, mode=mode,
            project=project, suggested_project=first.suggested_project, patch_size_level0=int(patch_size_level0),
            coords=coords.tolist(), tasks=results, warnings=list(dict.fromkeys(warnings)),
            synthetic_training_cohort=self.bundle.synthetic, software_version=__version__,
            bundle_provenance=self.bundle.provenance, applicability=applicability)

    @torch.no_grad()
    def _predict_task(self, rt: TaskRuntime, batch: SlideBatch, packed: torch.Tensor | None,
                      project: str | None, warnings: list[str]) -> TaskResult:
        net, task = rt.net, rt.task
        h, attn = net.encode_slides(batch)  # (1, d), (1, N)
        use_expr = packed is not None and net.uses_genomics
        if packed is not None and not net.uses_genomics:
            warnings.append(f"task {task.spec.name!r} is MSRL_H (no genomics); its expression input was ignored")
        mode = "msrl_h" if not net.uses_genomics else ("msrl_multi" if use_expr else "msrl")
        nodes = net.node_features(h, packed if use_expr else None)  # (1, node_dim)
        ex = rt.engine.explain(nodes[0])
        q = ex.full
        z = torch.stack([q.z, ex.alone.z, *[w.z for w in ex.without]])  # (2 + M, gcn_out)
        logits = net.readout(z, nodes.expand(z.shape[0], -1))  # one batch: the rows differ only in z
        rows = q.linked.cpu().numpy()
        weights = q.linked_weights.double().cpu().numpy()
        cases = task.cases
        projects = cases["project"].tolist() if "project" in cases.columns else []
        suggested = weighted_majority([projects[r] for r in rows], weights) if projects else None

        survival = classification = None
        if task.spec.kind == "survival":
            survival, risk_influence = survival_prediction(rt, logits, project, rows, weights, self.coverage)
            influences: list[tuple[float | None, list[float] | None]] = [(v, None) for v in risk_influence]
        else:
            classification, prob_influence = classification_prediction(rt, logits, rows, weights, self.coverage)
            influences = [(None, v) for v in prob_influence]
        linked = [LinkedCase(int(r), float(w), json_safe(cases.iloc[int(r)].to_dict()),
                             [float(v) for v in task.pathways[int(r)]], ir, ip)
                  for r, w, (ir, ip) in zip(rows, weights, influences)]
        pathways = None
        if net.pathway_decoder is not None:
            pathways = self._pathway_activity(task, net.pathways(z[:1], nodes)[0], rows, weights)
        known, evidence = informative(task.spec.kind, task.metrics)
        earned, graph_note = graph_evidence(task.spec.kind, task.metrics)
        return TaskResult(
            name=task.spec.name, kind=task.spec.kind, variant=task.variant, mode=mode, survival=survival,
            classification=classification, linked_cases=linked, self_weight=float(q.self_weight),
            attention=[float(v) for v in attn[0].double().cpu().numpy()], pathways=pathways,
            suggested_project=suggested, metrics=json_safe(task.metrics), informative=known,
            informative_note=evidence, graph_evidence=earned, graph_evidence_note=graph_note)

    def _pathway_activity(self, task: TaskBundle, reconstructed: torch.Tensor, rows: np.ndarray,
                          weights: np.ndarray) -> PathwayActivity:
        """The slide's reconstructed pathway scores (n_groups,) beside the edge-weighted mean of its
        linked cases' authentic scores, Σ_j w_j p_j / Σ_j w_j (NaN without links)."""
        g = self.bundle.genomics
        names = list(g.group_names) if g is not None else [f"group_{i}" for i in range(task.pathways.shape[1])]
        mean = (weights @ task.pathways[rows].astype(np.float64) / weights.sum()) if len(rows) \
            else np.full(len(names), np.nan)
        return PathwayActivity(names, [float(v) for v in reconstructed.double().cpu().numpy()], json_safe(mean))

    # ---- files and slides ---------------------------------------------------------------------

    def _check_feature_attrs(self, attrs: dict[str, Any], dim: int, path: str | Path) -> list[str]:
        """BundleError when the feature file ``path``'s encoder (name, version, dim) or tiling (patch
        size at the target level, target µm/px) is not the bundle's; returns warnings for tissue
        parameters it records that differ from the bundle's, or for a tiling it does not record (CLAM)."""
        from msrl_model.features.provenance import (RESOLUTION_ATTRS, detection_differences, provenance_of,
                                                    recorded_attr_names, tiling_mismatch, tiling_text)
        from msrl_model.slide import TilingParams, TissueParams

        check_encoder(self.bundle.encoder, {"name": attrs.get("encoder"), "version": attrs.get("encoder_version"),
                                            "dim": dim}, self.bundle.path)
        made = provenance_of(attrs, tiling_recorded=bool(recorded_attr_names(path) & set(RESOLUTION_ATTRS)))
        tiling = {**TilingParams().to_dict(), **self.bundle.tiling}  # a field the manifest omits: its default
        need = tiling_text(tiling["patch_size"], tiling["target_mpp"])
        if not made.tiling_recorded:
            return [f"{Path(path).name} does not record the resolution it was made at; this model needs "
                    f"{need} — check that it was made so"]
        if tiling_mismatch(tiling, made):
            raise BundleError(
                f"{path} was made at {made.tiling_text}; this model needs {need} — extract again with this "
                f"model (`msrl analyze SLIDE --bundle {self.bundle.path}` tiles the slide at {need}) or with "
                f"your extractor at {int(tiling['patch_size'])} px and {10.0 / float(tiling['target_mpp']):g}x")
        diffs = detection_differences(tiling, {**TissueParams().to_dict(), **self.bundle.tissue}, made)
        return [f"{Path(path).name} was made with other tissue parameters than this model's training "
                f"features ({', '.join(diffs)}); its patches may differ from training"] if diffs else []

    def predict_features_file(self, path: str | Path, project: str | None = None,
                              expression: Mapping[str, float] | Any = None, *,
                              max_patches: int | None = None) -> PredictionResult:
        """Predict from a feature file; BundleError when it comes from another encoder or version, or
        was made at another patch size or µm/px than the bundle's tiling (the message says what differs).

        A file of more than ``max_patches`` rows (None: the default cap) is refused before it is read."""
        from msrl_model.features.h5io import read_features

        ff = read_features(path, max_rows=_max_rows(max_patches))
        made = self._check_feature_attrs(ff.attrs, ff.features.shape[1], path)
        job = self.predict_job(ff.features, ff.coords, int(ff.attrs["patch_size_level0"]), project, expression,
                               slide_id=str(ff.attrs.get("slide_id") or Path(path).stem),
                               warnings=[*_file_warnings(ff.attrs), *made])
        while True:
            try:
                next(job)
            except StopIteration as stop:
                return stop.value

    def encoder_notice(self) -> str | None:
        """What to tell the user before :meth:`encoder` when building it takes long this once (numba
        compiling builtin-he's CPU kernel after installing), else None (also once it is built)."""
        if self._encoder is not None:
            return None
        from msrl_model.encoders import build_notice

        return build_notice(str(self.bundle.encoder.get("spec") or self.bundle.encoder["name"]), self.device_name)

    def encoder(self) -> Any:
        """The bundle's patch encoder, built once on this predictor's device (thread-safe); BundleError on a
        version mismatch."""
        with self._encoder_lock:
            if self._encoder is None:
                from msrl_model.encoders import build_encoder, check_checkpoint

                spec = str(self.bundle.encoder.get("spec") or self.bundle.encoder["name"])
                enc = build_encoder(spec, device=self.device_name)
                check_checkpoint(self.bundle.encoder, enc, f"model bundle {self.bundle.path}")  # other weights: refused
                check_encoder(self.bundle.encoder, {"name": enc.name, "version": enc.version, "dim": enc.dim},
                              self.bundle.path)
                self._encoder = enc
            return self._encoder

    def predict_slide(self, slide_path: str | Path, cache_dir: str | Path, project: str | None = None,
                      expression: Mapping[str, float] | Any = None, *, workers: int | None = None,
                      batch_size: int | None = None, max_patches: int | None = None,
                      regions: Any = None) -> Job[PredictionResult]:
        """Extract (cached in ``cache_dir``) with the bundle's encoder, tiling and tissue parameters, then
        predict. A job: yields the extraction's Progress stages, then "predict"; returns the result.

        ``regions`` (a :class:`~msrl_model.slide.regions.RegionSet`; None or empty: the whole tissue) chooses
        the patches that are analysed among the tissue patches of the (cached, full-slide) feature file, so
        drawing other regions never extracts again; the result records the selection (``regions``).

        The result's warnings start with the slide's and the extraction's (assumed mpp, upsampling,
        tiles with decoder warnings), also on a cache hit. More than ``max_patches`` patches (None:
        the default cap) are refused, for a cached feature file too, before it is read."""
        from msrl_model.features.h5io import read_features
        from msrl_model.features.pipeline import extract_slide
        from msrl_model.slide import TilingParams, TissueParams

        try:
            tiling = TilingParams(**self.bundle.tiling)
            tissue = TissueParams(**self.bundle.tissue)
        except TypeError as err:
            raise BundleError(f"model bundle {self.bundle.path}: tiling/tissue parameters not understood ({err}); "
                              "update MSRL Studio") from None
        from msrl_model.features.pipeline import ExtractStats

        notice = self.encoder_notice()
        if notice:
            yield Progress(Stage.NOTICE, 0, None, notice)
        encoder = self.encoder()
        stats = ExtractStats()
        cap = _max_rows(max_patches)
        h5 = yield from extract_slide(slide_path, cache_dir, encoder, self.device_name, workers, batch_size,
                                      tissue, tiling, stats=stats, max_patches=cap)
        ff = read_features(h5, max_rows=cap)
        made = self._check_feature_attrs(ff.attrs, ff.features.shape[1], h5)  # a cache file made otherwise: refused
        features, coords, selection = ff.features, ff.coords, None
        if regions:
            features, coords, selection = regions.apply(ff.features, ff.coords, int(ff.attrs["patch_size_level0"]))
        result = yield from self.predict_job(
            features, coords, int(ff.attrs["patch_size_level0"]), project, expression,
            slide_id=str(ff.attrs.get("slide_id") or Path(slide_path).stem), slide_path=str(slide_path),
            slide_sha256_head=str(ff.attrs.get("slide_sha256_head") or "") or None,
            warnings=[*stats.warnings, *_file_warnings(ff.attrs), *made])
        result.regions = selection
        return result


def _max_rows(max_patches: int | None) -> int:
    """The patch cap in force: ``max_patches``, else the default of the tiling."""
    from msrl_model.slide.tiling import DEFAULT_MAX_PATCHES

    return DEFAULT_MAX_PATCHES if max_patches is None else int(max_patches)


def _file_warnings(attrs: Mapping[str, Any]) -> list[str]:
    """The warnings a feature file recorded at extraction (a list, or one string)."""
    stored = attrs.get("warnings")
    if isinstance(stored, str):
        return [stored] if stored else []
    return [str(w) for w in stored] if isinstance(stored, list) else []


__all__ = ["Predictor", "percentile_of", "survival_curve"]
