"""``python -m msrl_model.train`` / ``msrl train``: cross-validate MSRL and build a model bundle.

    python -m msrl_model.train --preset tiny --out runs/tiny
    python -m msrl_model.train --cohort /data/tcga-brca --tasks survival,stage,HER2_status \\
        --variants msrl,msrl_multi,abmil --folds 5 --device auto --out runs/brca

Writes to ``--out``: ``bundle/`` (or ``model.msrl`` with ``--zip``), ``cv_results.csv``, ``cv_table.md``
(with † / ‡ where a method differs from MSRL), ``cv_significance.csv``, ``cv_summary.json``,
``km_<task>_<method>.png``, ``calibration_<task>.png`` (survival), ``model_card.md``, ``config.toml``, ``train.log`` (and ``cohort/`` for a
preset: the SYNTHETIC cohort it generated) — and, as each fold ends, ``folds/fold_<k>.json`` and
``oof_predictions.csv`` (:mod:`msrl_model.train.foldstore`). The same command run again with the same
``--out`` resumes after the last finished fold; other settings in an ``--out`` holding folds are
refused. A cohort that fails validation is reported in full (every problem: the tables, every
feature file opened and scanned, the requested tasks) within seconds, before any feature bag is
read; nothing is trained and nothing is written to ``--out`` (exit code 2).

``--cohort`` runs pick their model scale and schedule from the cohort size and the device
(``--scale auto``, :func:`~msrl_model.train.presets.cohort_scale`; ``--scale paper`` for the paper's);
``--config`` overrides any of it; the choice is logged and written at the top of ``config.toml``.

Several processes (one machine or many) with ``torchrun``: :data:`EPILOG`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from msrl_model.errors import MSRLError

log = logging.getLogger("msrl_model.train")

EPILOG = """\
several processes (torchrun):
  torchrun --nproc_per_node 2 -m msrl_model.train --preset tiny --out DIR
  torchrun --nnodes 2 --node_rank N --master_addr HOST --nproc_per_node 4 -m msrl_model.train ...
  Pre-training and MSRL fine-tuning split each batch across the processes (gloo on CPU, NCCL with
  one GPU per process: --device cuda uses cuda:LOCAL_RANK). The config's batch_size is the global
  batch, so the models equal those of one process up to float rounding (as long as slide_dropout
  is 0; with dropout the masks depend on the split). Rank 0 alone writes DIR.

folds in parallel (independent processes, one --out):
  the same command started several times with the same --out (one machine: one per core with
  --threads 1; a cluster: one job per node on a shared folder) splits the folds by claim files in
  DIR/folds; each process trains the folds nobody else holds and waits for the rest; one of them
  builds the final models and writes the tables and the bundle. The table equals a one-process run's.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--cohort", type=Path, help="cohort directory (clinical.csv, expression.csv, *.gmt, features/)")
    src.add_argument("--preset", choices=("tiny", "demo"),
                     help="generate a SYNTHETIC cohort and train with the preset's settings")
    parser.add_argument("--tasks", help="comma-separated: survival and/or label columns "
                                        "(default: the preset's, or survival + stage when the cohort has stage)")
    parser.add_argument("--variants", help="comma-separated methods: msrl, msrl_h, msrl_multi, abmil, snn, "
                                           "knn_cos, knn_euc, random_gsl, online_buffer, no_graph, shuffled_buffer "
                                           "(default: the preset's / all)")
    parser.add_argument("--ablation-tasks",
                        help="comma-separated tasks on which the trained ablations (msrl_h, knn_cos, knn_euc, "
                             "random_gsl, online_buffer) run, each costing a fine-tuning per task and fold "
                             "(default: the preset's, e.g. survival as in the paper's Table 3; else every task)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeat the cross-validation with other fold seeds (default 1)")
    parser.add_argument("--scale", choices=("auto", "demo", "large", "paper"),
                        help="model scale of a --cohort run: auto (default: from the cohort size and the "
                             "device), demo, large or paper; --config overrides it")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: 1 for the presets, whose small models gain "
                             "nothing from more; otherwise the CPUs this process may use, from affinity and "
                             "the cgroup quota, or MSRL_THREADS / OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same results)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--config", type=Path,
                        help="TOML: MSRLConfig keys at the top level, TrainSettings keys under [train]")
    parser.add_argument("--zip", action="store_true", help="write the bundle as one model.msrl file")
    parser.add_argument("--no-bundle", action="store_true", help="cross-validation only (no final models)")
    parser.add_argument("--sign-key", type=_sign_key, metavar="KEY.pem",
                        help="sign the bundle with this Ed25519 private key (make one with: msrl keygen KEY.pem); "
                             "the signer name is the key file's name unless --signer is given")
    parser.add_argument("--signer", help="name the bundle's signature carries (with --sign-key)")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                        help="the foundation-model checkpoint that made the cohort's features, e.g. "
                             "uni_v1=/data/uni/pytorch_model.bin: TRIDENT's features do not record it, so the "
                             "bundle pins its SHA-256 and refuses other weights at analysis (else found as "
                             "msrl analyze finds it: MSRL_WEIGHTS_<NAME>, local_ckpts.json, the HF cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``msrl train`` to the ``msrl`` dispatcher."""
    parser = subparsers.add_parser("train", help="cross-validate MSRL and build a model bundle",
                                   description=__doc__.splitlines()[0], epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_train)


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _read_config(path: Path | None, base: tuple) -> tuple:
    """(MSRLConfig, TrainSettings) from a TOML file on top of the preset's / default values."""
    from msrl_model.nn.config import MSRLConfig, read_toml
    from msrl_model.train.settings import TrainSettings

    cfg, settings = base
    if path is None:
        return cfg, settings
    values = read_toml(path)
    train = values.pop("train", {})
    merged = {**cfg.to_dict(), **values}
    merged.pop("group_sizes", None)  # always from the cohort
    return MSRLConfig.from_dict(merged), TrainSettings.from_dict({**settings.to_dict(), **train})


def run_train(args: argparse.Namespace) -> int:
    """The whole run; returns the exit code (MSRLError propagates to the caller's handler).

    Under ``torchrun`` every process runs it: they join one process group here, rank 0 writes the
    outputs (and a preset's cohort) while the others wait.
    """
    start = time.perf_counter()
    from msrl_model.cohort import load_cohort
    from msrl_model.device import resolve_device
    from msrl_model.nn.config import MSRLConfig
    from msrl_model.train import distributed
    from msrl_model.train.presets import cohort_scale, preset
    from msrl_model.train.settings import TrainSettings
    from msrl_model.weights import parse_weights_args, use_weights

    run_preset = preset(args.preset) if args.preset else None
    out: Path = args.out
    if args.folds < 2:
        raise MSRLError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    if args.repeats < 1:
        raise MSRLError(f"--repeats {args.repeats}: use 1 or more")
    if run_preset is not None and args.scale is not None:
        raise MSRLError(f"--scale applies to --cohort runs; the {args.preset} preset has its own scale "
                        "(change it with --config)")
    if run_preset is not None:
        cfg, settings = _read_config(args.config, (run_preset.config, run_preset.settings))
        scale_note = f"preset {run_preset.name}"
    else:
        _read_config(args.config, (MSRLConfig.paper(), TrainSettings()))  # a bad --config: refused before any work
    _variants(args, run_preset)  # unknown variants: refused before any work
    use_weights(parse_weights_args(args.weights))  # a malformed --weights: refused before any work
    device = distributed.setup(resolve_device(args.device))
    main_rank = distributed.is_main()
    try:
        if run_preset is None:
            # CohortValidationError lists every problem — clinical, expression, every feature file
            # (opened and scanned), the requested tasks — before anything is written to --out and
            # before any feature bag is loaded for training
            cohort = load_cohort(args.cohort, tasks=_requested_tasks(args, None), require_features=True)
            _tasks_variants(args, cohort, None)  # unknown tasks / variants: nothing written either
            scale = cohort_scale(args.scale or "auto", cohort.n_cases, device, args.folds)
            cfg, settings = _read_config(args.config, (scale.config, scale.settings))
            scale_note = f"{scale.name} ({scale.reason})" + (f"; then --config {args.config}, whose values win" if args.config else "")
            if main_rank:
                out.mkdir(parents=True, exist_ok=True)
        else:
            from msrl_model.progress import drive
            from msrl_model.synth.cohort import SynthCohortConfig, synth_cohort_job

            if main_rank:
                out.mkdir(parents=True, exist_ok=True)
                synth = SynthCohortConfig(n_cases=run_preset.n_cases, n_projects=run_preset.n_projects,
                                          seed=args.seed, feature_dim=run_preset.feature_dim,
                                          patches=run_preset.patches, render_slides=run_preset.render_slides,
                                          slide_size=run_preset.slide_size)
                drive(synth_cohort_job(out / "cohort", synth), show=not args.quiet)
            distributed.barrier()  # the cohort is written
            cohort = load_cohort(out / "cohort", tasks=_requested_tasks(args, run_preset), require_features=True)
        return _train(args, cohort, cfg, settings, run_preset, device, start, scale_note)
    finally:
        distributed.cleanup()


def _default_tasks(label_columns: list[str]) -> list[str]:
    """Without --tasks or a preset: survival, and stage when the cohort has a stage column."""
    return ["survival"] + (["stage"] if "stage" in label_columns else [])


def _requested_tasks(args: argparse.Namespace, run_preset):
    """The tasks asked for, as :func:`~msrl_model.cohort.load_cohort` checks them: --tasks, else the
    preset's, else the default rule (applied to the cohort's label columns)."""
    return _split(args.tasks) or (list(run_preset.tasks) if run_preset else _default_tasks)


def _variants(args: argparse.Namespace, run_preset) -> list[str]:
    """The run's variants (a user error for unknown ones)."""
    from msrl_model.train.variants import available_variants, unknown_variants

    variants = _split(args.variants) or list(run_preset.variants if run_preset else available_variants())
    bad = unknown_variants(variants)
    if bad:
        raise MSRLError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(available_variants())}")
    return variants


def _tasks_variants(args: argparse.Namespace, cohort, run_preset) -> tuple[list[str], list[str]]:
    """The run's tasks and variants (user errors for unknown ones)."""
    requested = _requested_tasks(args, run_preset)
    tasks = _default_tasks(list(cohort.labels)) if callable(requested) else requested
    variants = _variants(args, run_preset)
    for task in tasks:
        if task != "survival" and task not in cohort.labels:
            raise MSRLError(f"task {task!r} is not a label column of the cohort; available: survival, "
                            + ", ".join(sorted(cohort.labels)))
    return tasks, variants


def _train(args: argparse.Namespace, cohort, cfg, settings, run_preset, device, start: float,
           scale_note: str) -> int:
    import torch

    from msrl_model.device import apply_threads
    from msrl_model.progress import Stage, drive
    from msrl_model.train import distributed
    from msrl_model.train.cv import cv_job
    from msrl_model.train.data import load_bags
    from msrl_model.train.foldstore import FoldStore, run_identity

    out: Path = args.out
    main_rank = distributed.is_main()  # the other ranks train the same models and write nothing
    show = not args.quiet and main_rank
    handler = None
    if main_rank:
        handler = logging.FileHandler(out / "train.log", mode="a", encoding="utf-8")  # a resumed run appends
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        plan = apply_threads(args.threads or (1 if run_preset is not None else None), torch)
        log.info(plan.line())
        tasks, variants = _tasks_variants(args, cohort, run_preset)
        log.info("cohort %s: %d cases (%s)", cohort.root, cohort.n_cases,
                 "SYNTHETIC" if cohort.config.synthetic else "real")
        for note in cohort.notes + cohort.warnings:
            log.info("cohort: %s", note)
        log.info("scale: %s", scale_note)
        bags = drive(load_bags(cohort, cache_mb=settings.bag_cache_mb), show=show)
        cfg = dataclasses.replace(cfg, patch_dim=bags.patch_dim,
                                  group_sizes=tuple(len(g) for g in cohort.gene_groups))
        # another run's folds in --out: refused before config.toml is overwritten
        ablation_tasks = _split(args.ablation_tasks) or (list(run_preset.ablation_tasks) if run_preset
                                                         and run_preset.ablation_tasks is not None else None)
        stray = [t for t in ablation_tasks or () if t not in tasks]
        if stray:
            raise MSRLError(f"--ablation-tasks {','.join(stray)}: not among the run's tasks ({','.join(tasks)})")
        FoldStore(out, run_identity(cohort, cfg, settings, seed=args.seed, tasks=tasks, variants=variants,
                                    n_folds=args.folds, ablation_tasks=ablation_tasks), write=False).check()
        if main_rank:
            _write_config(out / "config.toml", cfg, settings, scale_note)
        log.info("device %s, torch threads %d, processes %d, tasks %s, variants %s, %d folds x %d repeats, seed %d",
                 device, torch.get_num_threads(), distributed.world_size(), tasks, variants, args.folds,
                 args.repeats, args.seed)

        def on_event(event) -> None:
            if event.stage == Stage.CROSS_VALIDATION or (event.done == event.total and event.stage != Stage.EMBED):
                log.info("%s %s/%s %s", event.stage, event.done, event.total, event.message)

        result = drive(cv_job(cohort, bags, cfg, tasks=tasks, variants=variants, n_folds=args.folds,
                              repeats=args.repeats, settings=settings, seed=args.seed, device=device,
                              final=not args.no_bundle, out_dir=out, ablation_tasks=ablation_tasks),
                       show=show, on_event=on_event)
        if not main_rank:
            return 0
        if result.final_by is not None:
            note = (f"this process's folds are done; the final models, tables and bundle in {out} are "
                    f"written by {result.final_by}, which runs the same command")
            log.info(note)
            print(note)
            return 0
        table = _write_outputs(args, cohort, bags.patch_dim, cfg, result, tasks, variants, start)
        log.info("done in %.1f s", time.perf_counter() - start)
        print(table, end="")
        print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
        return 0
    except Exception:
        log.exception("training failed")
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        distributed.barrier()  # the other ranks wait until rank 0 has written every output


def _write_config(path: Path, cfg, settings, scale_note: str) -> None:
    """``config.toml``: the model configuration, the ``[train]`` settings and, as a comment on top, the
    scale and why it was chosen (the file reads back with ``--config``)."""
    from msrl_model.files import atomic_write

    cfg.to_toml(path)
    text = path.read_text(encoding="utf-8")
    atomic_write(path, f"# scale: {scale_note}\n" + text + "\n[train]\n"
                 + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.to_dict().items()))


def _write_outputs(args: argparse.Namespace, cohort, patch_dim: int, cfg, result, tasks: list[str],
                   variants: list[str], start: float) -> str:
    """Rank 0's outputs of a finished run in ``args.out`` (CSV, table, Kaplan-Meier plots, model card,
    bundle); returns the CV table."""
    from msrl_model.files import atomic_write
    from msrl_model.encoders.release import pin_checkpoint
    from msrl_model.train.export import export_bundle, feature_encoder
    from msrl_model.train.model_card import model_card
    from msrl_model.train.report import (
        cv_table_markdown, plot_km, plot_survival_calibration, significance, survival_calibration, write_cv_csv,
        write_cv_summary_json, write_significance_csv)

    out: Path = args.out
    write_cv_csv(result, out / "cv_results.csv")
    sig = significance(result, cohort, tasks, variants, seed=args.seed)
    write_significance_csv(sig, out / "cv_significance.csv")
    write_cv_summary_json(result, tasks, variants, sig, out / "cv_summary.json", cohort)
    table = cv_table_markdown(result, tasks, variants, sig)
    atomic_write(out / "cv_table.md", table)
    km = {}
    for task in tasks:
        calibration = survival_calibration(result, cohort, task)
        if calibration is not None:
            plot_survival_calibration(calibration, out / f"calibration_{task}.png",
                                      f"MSRL {task}: held-out calibration at the bin edges")
        for v in variants:
            p = plot_km(result, cohort, task, v, out / f"km_{task}_{v}.png")
            if p is not None and task == "survival":
                km[v] = p
    encoder, pin_note = pin_checkpoint(feature_encoder(cohort, patch_dim))
    if pin_note:
        log.info(pin_note)
    wall = time.perf_counter() - start
    card = model_card(cohort=cohort, result=result, tasks=tasks, methods=variants, encoder=encoder,
                      config_text=(out / "config.toml").read_text(encoding="utf-8"), km_pvalues=km,
                      wall_seconds=wall, sig=sig)
    atomic_write(out / "model_card.md", card)
    if not args.no_bundle:
        bundle = export_bundle(out / ("model.msrl" if args.zip else "bundle"), cohort=cohort, result=result,
                               config=cfg, encoder=encoder, model_card=card, sign_key=_signing_key(args),
                               significance=sig)
        log.info("bundle written to %s", bundle)
    return table


def _sign_key(text: str) -> Path:
    """``--sign-key``: the key is read and checked at once, so a bad key fails before any training."""
    from msrl_model.infer.bundle.signing import load_signing_key

    try:
        load_signing_key(text)
    except MSRLError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return Path(text)


def _signing_key(args: argparse.Namespace):
    """The SigningKey of ``--sign-key`` / ``--signer`` (None: unsigned)."""
    from msrl_model.infer.bundle.signing import load_signing_key

    path = getattr(args, "sign_key", None)
    return None if path is None else load_signing_key(path, getattr(args, "signer", None))


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m msrl_model.train``: user errors print one message, exit non-zero."""
    from msrl_model.device import passive_openmp_waits

    passive_openmp_waits()  # before anything imports torch
    parser = argparse.ArgumentParser(prog="python -m msrl_model.train", description=__doc__.splitlines()[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except MSRLError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume after the last finished fold",
              file=sys.stderr)
        return 130


__all__ = ["add_arguments", "main", "register", "run_train"]
