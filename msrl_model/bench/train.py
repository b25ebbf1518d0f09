"""``bench train``: training at cohort scale — peak memory, seconds per epoch and per fold (issue 9).

    python -m msrl_model.bench train --cases 400 --patches 9000 --dim 1024 [--folds 2] [--device cpu|cuda]

1. Writes a SYNTHETIC cohort whose features are random float16 in TRIDENT's layout
   (:mod:`msrl_model.bench._trident`: ``<cohort>/trident/20x_256px_0px_overlap/features_random<D>/``,
   patches per slide uniform in [P/3, 5P/3]) as ``<workdir>/bench_cohort`` (``--workdir``, default a
   temporary folder; the cohort, the run ``bench_run`` and its config are deleted afterwards unless
   ``--keep``; a kept cohort is reused by the next run with the same ``--cases/--patches/--dim/--seed``).
2. Trains it in a child process, exactly as a user would:
   ``python -m msrl_model.train --cohort <cohort> --tasks survival --variants msrl --folds K --no-bundle
   --config <workdir>/bench_config.toml --out <workdir>/bench_run``. The config is the ``--scale``
   preset of :class:`~msrl_model.nn.config.MSRLConfig` with ``--pretrain-epochs`` /
   ``--finetune-epochs``, and ``--config TOML`` on top (model keys at the top level, ``[train]``
   settings). ``--first-fold-only`` stops the child once fold 1's record exists.
3. Reports the child's **peak RSS** (``ru_maxrss`` of that process from ``os.wait4``: the kernel's exact
   high-water mark of its resident memory), its wall time, and per fold the seconds of pre-training,
   fine-tuning and prediction and seconds per epoch, read from the run's ``folds/fold_<k>.json``
   (``{"seconds": {"pretrain", "finetune", "predict", "total"}, "epochs": {"pretrain", "finetune"}}``).
   When the run writes no such records, the only timing is the child's wall time (``timing_source``
   says which).

``--json`` prints one JSON object on stdout; the child's own output (progress lines, the CV table)
goes to stderr (``--quiet``: its errors only). Nothing is asserted here: the issue's targets are
checked by reading the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from msrl_model.errors import MSRLError

SCALES = ("tiny", "demo", "paper")  # MSRLConfig presets the bench config starts from
POLL_S = 0.5  # how often the child is checked while it runs
RSS_TARGET_GIB = 4.0  # issue 9: 400 cases × 9,000 patches × 1,024-d trains within this peak RSS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train on a generated TRIDENT-layout fp16 cohort: peak RSS, s/epoch, s/fold",
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=400, help="cases (one slide each; default 400)")
    p.add_argument("--patches", type=int, default=9000, help="mean patches per slide (uniform in [P/3, 5P/3]; "
                                                              "default 9000)")
    p.add_argument("--dim", type=int, default=1024, help="feature dimension (default 1024, as UNI)")
    p.add_argument("--folds", type=int, default=2, help="cross-validation folds of the run (default 2, the fewest)")
    p.add_argument("--first-fold-only", action="store_true",
                   help="stop the run once its first fold is recorded (folds/fold_0.json)")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the run (default: torch's)")
    p.add_argument("--scale", choices=SCALES, default="demo", help="model preset the run starts from (default demo)")
    p.add_argument("--pretrain-epochs", type=int, default=2, help="pre-training epochs (default 2)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--config", type=Path, default=None, metavar="TOML",
                   help="MSRLConfig keys (top level) and [train] settings applied last")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the cohort and the run go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the cohort and the run (a kept cohort is reused)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort and the run")
    p.add_argument("--quiet", action="store_true", help="no progress output (the run's included)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


# ---- the bench config -------------------------------------------------------------------------------


def _toml_scalar(value: Any) -> str:
    """A TOML literal for a [train] setting (bool, number or string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise MSRLError(f"[train] value {value!r} is not a number, boolean or string; fix the --config file")


def bench_config(args: argparse.Namespace, path: Path) -> Any:
    """Write the run's config TOML to ``path``; returns its MSRLConfig (ConfigError when invalid)."""
    from msrl_model.nn.config import MSRLConfig, read_toml

    base = getattr(MSRLConfig, args.scale)(pretrain_epochs=args.pretrain_epochs,
                                           finetune_epochs=args.finetune_epochs)
    values = read_toml(args.config, "--config") if args.config else {}
    train = values.pop("train", {})
    cfg = MSRLConfig.from_dict({**base.to_dict(), **values})
    cfg.to_toml(path)
    if train:
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n[train]\n" + "".join(f"{k} = {_toml_scalar(v)}\n" for k, v in train.items()))
    return cfg


# ---- the child ----------------------------------------------------------------------------------


def train_command(args: argparse.Namespace, cohort: Path, config: Path, out: Path) -> list[str]:
    """The training command line (``python -m msrl_model.train …``)."""
    cmd = [sys.executable, "-m", "msrl_model.train", "--cohort", str(cohort), "--tasks", "survival",
           "--variants", "msrl", "--folds", str(args.folds), "--no-bundle", "--config", str(config),
           "--device", args.device, "--seed", str(args.seed), "--out", str(out)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.quiet:
        cmd.append("--quiet")
    return cmd


def run_child(cmd: list[str], stop_when: Path | None, quiet: bool) -> dict[str, Any]:
    """Run ``cmd``; its exit code, wall seconds, peak RSS (KiB, from ``os.wait4``) and whether it was
    stopped because ``stop_when`` appeared. Its stdout goes to this process's stderr (nowhere when
    ``quiet``), its stderr to this process's stderr. Interrupted here, the child is killed too."""
    t0 = time.perf_counter()
    # file descriptor 2: this process's stderr as the OS has it (also when sys.stderr is replaced)
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet else 2, stderr=None)
    stopped, reaped = False, None
    try:
        while reaped is None:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid == child.pid:
                reaped = status, usage
                break
            if stop_when is not None and not stopped and stop_when.is_file():
                child.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(POLL_S)
    finally:
        if reaped is None:
            child.kill()
            child.wait()
    status, usage = reaped
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"exit_code": child.returncode, "wall_s": time.perf_counter() - t0, "stopped": stopped,
            "peak_rss_kib": int(usage.ru_maxrss)}


# ---- figures ------------------------------------------------------------------------------------


def _per_epoch(seconds: Any, epochs: Any) -> float | None:
    if isinstance(seconds, (int, float)) and isinstance(epochs, int) and epochs > 0:
        return round(seconds / epochs, 3)
    return None


def fold_records(run_dir: Path) -> list[dict[str, Any]]:
    """Per fold (in fold order) the seconds and epochs of ``folds/fold_<k>.json``, and s/epoch (a file
    that is not a JSON object is skipped)."""
    found = []
    for path in (run_dir / "folds").glob("fold_*.json"):
        suffix = path.stem.removeprefix("fold_")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if suffix.isdigit() and isinstance(record, dict):
            found.append((int(suffix), record))
    out = []
    for k, record in sorted(found, key=lambda item: item[0]):
        seconds, epochs = record.get("seconds") or {}, record.get("epochs") or {}
        out.append({"fold": k, **{f"{part}_s": seconds.get(part) for part in ("pretrain", "finetune", "predict",
                                                                               "total")},
                    "pretrain_epochs": epochs.get("pretrain"), "finetune_epochs": epochs.get("finetune"),
                    "pretrain_s_per_epoch": _per_epoch(seconds.get("pretrain"), epochs.get("pretrain")),
                    "finetune_s_per_epoch": _per_epoch(seconds.get("finetune"), epochs.get("finetune"))})
    return out


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return round(sum(numbers) / len(numbers), 3) if numbers else None


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def summarise(cohort: Any, cfg: Any, args: argparse.Namespace, child: dict[str, Any],
              folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's record (one JSON object)."""
    peak_mb = child["peak_rss_kib"] / 1024
    patches = cohort.patches
    fold_s = _mean([f["total_s"] for f in folds])
    record: dict[str, Any] = {
        "benchmark": "train",
        "cases": cohort.cases, "patches_mean": round(float(patches.mean()), 1), "patches_min": int(patches.min()),
        "patches_max": int(patches.max()), "patches_total": int(patches.sum()), "dim": cohort.dim,
        "dtype": "float16", "layout": "trident", "features_gb": round(cohort.bytes / 1e9, 3),
        "cohort_write_s": round(cohort.write_s, 2), "cohort_reused": cohort.reused,
        "device": args.device, "threads": args.threads, "folds": args.folds,
        "scale": args.scale, "d": cfg.d, "max_patches_train": cfg.max_patches_train, "batch_size": cfg.batch_size,
        "pretrain_epochs": cfg.pretrain_epochs, "finetune_epochs": cfg.finetune_epochs,
        "exit_code": child["exit_code"], "stopped_after_first_fold": child["stopped"],
        "wall_s": round(child["wall_s"], 2),
        "peak_rss_mb": round(peak_mb, 1), "peak_rss_gib": round(peak_mb / 1024, 3),
        "peak_rss_within_4gib": peak_mb / 1024 <= RSS_TARGET_GIB,
        "peak_rss_over_features": _ratio(peak_mb * 2**20, cohort.bytes),
        "timing_source": "fold files" if folds else "wall clock",
        "folds_recorded": len(folds),
        "pretrain_s_per_epoch": _mean([f["pretrain_s_per_epoch"] for f in folds]),
        "finetune_s_per_epoch": _mean([f["finetune_s_per_epoch"] for f in folds]),
        "fold_s": fold_s if folds else round(child["wall_s"] / args.folds, 2),
    }
    record["fold_s_per_case"] = _ratio(record["fold_s"], cohort.cases, 4)
    record["pretrain_epoch_ms_per_case"] = _ratio(
        None if record["pretrain_s_per_epoch"] is None else record["pretrain_s_per_epoch"] * 1e3, cohort.cases)
    record["finetune_epoch_ms_per_case"] = _ratio(
        None if record["finetune_s_per_epoch"] is None else record["finetune_s_per_epoch"] * 1e3, cohort.cases)
    record["fold_records"] = folds
    return record


def _fmt(value: Any, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def print_human(r: dict[str, Any]) -> None:
    """The record as a few lines for people."""
    made = "reused" if r["cohort_reused"] else f"written in {r['cohort_write_s']:.1f} s"
    print(f"cohort: {r['cases']} cases, patches/slide {r['patches_mean']:,.0f} mean ({r['patches_min']:,}-"
          f"{r['patches_max']:,}), {r['patches_total']:,} patches x {r['dim']}-d float16, TRIDENT layout, "
          f"{r['features_gb']:.2f} GB ({made})")
    print(f"run: {r['scale']} scale (d={r['d']}, {r['max_patches_train']} patches/bag/step, batch {r['batch_size']}), "
          f"{r['pretrain_epochs']} pre-train + {r['finetune_epochs']} fine-tune epochs, {r['folds']} folds, "
          f"device {r['device']}, threads {r['threads'] or 'torch default'}; "
          f"{'stopped after fold 1' if r['stopped_after_first_fold'] else 'ran to the end'}, "
          f"{r['wall_s']:.1f} s wall")
    print(f"peak RSS: {r['peak_rss_mb']:,.0f} MB = {r['peak_rss_gib']:.2f} GiB "
          f"({'within' if r['peak_rss_within_4gib'] else 'OVER'} 4 GiB; {_fmt(r['peak_rss_over_features'])}x the "
          "fp16 features on disk)")
    for f in r["fold_records"]:
        print(f"fold {f['fold']}: pre-train {_fmt(f['pretrain_s'], ' s')} "
              f"({_fmt(f['pretrain_s_per_epoch'], ' s/epoch')} x {_fmt(f['pretrain_epochs'])}), "
              f"fine-tune {_fmt(f['finetune_s'], ' s')} "
              f"({_fmt(f['finetune_s_per_epoch'], ' s/epoch')} x {_fmt(f['finetune_epochs'])}), "
              f"predict {_fmt(f['predict_s'], ' s')}, total {_fmt(f['total_s'], ' s')}")
    if not r["fold_records"]:
        print("no per-fold records (folds/fold_<k>.json) from the run: timings are its wall clock only")
    print(f"per fold {_fmt(r['fold_s'], ' s')} ({_fmt(r['fold_s_per_case'], ' s/case')}); per epoch and case: "
          f"pre-train {_fmt(r['pretrain_epoch_ms_per_case'], ' ms')}, "
          f"fine-tune {_fmt(r['finetune_epoch_ms_per_case'], ' ms')}", flush=True)


def _check(args: argparse.Namespace) -> None:
    """MSRLError for sizes that cannot make a run, and for a device this machine lacks — before the
    cohort is written."""
    from msrl_model.device import resolve_device

    for name, least in (("cases", 4), ("patches", 1), ("dim", 1), ("folds", 2), ("pretrain_epochs", 1),
                        ("finetune_epochs", 1)):
        if getattr(args, name) < least:
            raise MSRLError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least {least}")
    if args.folds > args.cases // 2:
        raise MSRLError(f"--folds {args.folds} needs at least {2 * args.folds} cases; give more --cases")
    resolve_device(args.device)


def run(args: argparse.Namespace) -> int:
    """The benchmark; 0 when the run finished (or was stopped after its first fold as asked)."""
    from msrl_model.bench._trident import write_cohort_job
    from msrl_model.progress import drive

    _check(args)
    work = args.workdir if args.workdir is not None else Path(tempfile.mkdtemp(prefix="msrl-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    made = [work / name for name in ("bench_cohort", "bench_run", "bench_config.toml")]
    try:
        cfg = bench_config(args, made[2])
        cohort = drive(write_cohort_job(made[0], args.cases, args.patches, args.dim, args.seed), show=not args.quiet)
        if made[1].exists():
            shutil.rmtree(made[1])
        stop = made[1] / "folds" / "fold_0.json" if args.first_fold_only else None
        child = run_child(train_command(args, cohort.root, made[2], made[1]), stop, args.quiet)
        if child["exit_code"] != 0 and not child["stopped"]:
            raise MSRLError(f"the training run failed (exit code {child['exit_code']}); its messages are above"
                            + ("" if args.keep else "; rerun with --keep to inspect its folder"))
        record = summarise(cohort, cfg, args, child, fold_records(made[1]))
    finally:
        if not args.keep:
            for path in made:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(record, allow_nan=False), flush=True)
    else:
        print_human(record)
    return 0
