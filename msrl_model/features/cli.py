"""``msrl extract SLIDE_OR_DIR… --out DIR``: patch features for one slide, many slides or directories.

``--patch-size`` and ``--mpp`` choose the tiling (:class:`~msrl_model.slide.tiling.TilingParams`): the
patch side the encoder sees and the µm per pixel of the patches (0.5 ≈ 20×, 0.25 ≈ 40×). The feature
files record it, a model trained on them records it in its bundle, and ``msrl analyze`` / the app tile
new slides the same way (architecture §3).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

from msrl_model.errors import MSRLError

if TYPE_CHECKING:
    from msrl_model.device import ThreadPlan
    from msrl_model.slide.tiling import TilingParams


def add_encoding_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of every command that encodes slides (``msrl extract``, ``msrl analyze``): foundation-model
    weights, reader and torch threads, encoder batch size."""
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="checkpoint of a foundation-model encoder, e.g. uni_v1=/data/uni/pytorch_model.bin "
                        "(repeatable; else MSRL_WEIGHTS_<NAME>, a TRIDENT local_ckpts.json named by "
                        "MSRL_WEIGHTS_JSON, or the Hugging Face cache)")
    p.add_argument("--workers", type=int, default=None, help="tile reader threads (default: as --threads)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: the CPUs this process may use, from affinity and the "
                        "cgroup quota, less those other processes keep busy; MSRL_THREADS / OMP_NUM_THREADS "
                        "override)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per encoder batch (default: planned from the free GPU memory on CUDA, halved on "
                        "out-of-memory; 64 on the CPU)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract", help="extract patch features into DIR/<slide_id>.h5 (cached, resumable)",
        description="Tissue detection, tiling at the target mpp and patch encoding. The feature files record "
                    "the tiling (--patch-size, --mpp); a model trained on them tiles new slides the same way. "
                    "Re-running skips slides whose features are up to date; bad slides are reported and skipped.")
    p.add_argument("inputs", nargs="+", metavar="SLIDE_OR_DIR", help="slide files and/or directories of slides")
    p.add_argument("--out", required=True, metavar="DIR", help="feature directory")
    p.add_argument("--encoder", default="builtin-he",
                   help="patch encoder: builtin-he (default), uni_v1, uni_v2, virchow2, hoptimus0, hoptimus1, "
                        "gigapath (weights: --weights) or timm:<arch>@/path")
    # defaults: TilingParams' (not imported here: the slide stack is slow to import for --help)
    p.add_argument("--patch-size", type=int, default=None, metavar="PX",
                   help="patch side in pixels at the target resolution, what the encoder sees (default 256)")
    p.add_argument("--mpp", type=float, default=None, metavar="UM_PER_PX",
                   help="target resolution of the patches in µm per pixel (default 0.5 ≈ 20x; 0.25 ≈ 40x)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    add_encoding_arguments(p)
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="process every n-th slide starting at i (default: torchrun RANK/WORLD_SIZE, else all)")
    p.add_argument("--max-patches", type=int, default=None, metavar="N",
                   help="refuse slides with more than N tissue patches (default 100000; a 40x TCGA slide has "
                        "10k-40k)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)


def tiling_of(args: argparse.Namespace) -> TilingParams:
    """The tiling of ``--patch-size`` / ``--mpp`` (``TilingParams`` defaults for those not given);
    MSRLError saying what to give when they are invalid."""
    from msrl_model.slide.tiling import TilingParams

    size = TilingParams.patch_size if args.patch_size is None else args.patch_size
    mpp = TilingParams.target_mpp if args.mpp is None else args.mpp
    if size < 8:
        raise MSRLError(f"--patch-size {size}: give the patch side in pixels, at least 8 (usually 256 or 224)")
    if not (math.isfinite(mpp) and 0.05 <= mpp <= 100.0):
        raise MSRLError(f"--mpp {mpp:g}: give the target resolution in µm per pixel, between 0.05 and 100 "
                        "(0.5 ≈ 20x, 0.25 ≈ 40x)")
    return TilingParams(patch_size=size, target_mpp=mpp)


def check_positive(args: argparse.Namespace) -> None:
    """MSRLError when ``--batch-size`` or ``--workers`` is given below 1."""
    if any(value is not None and value < 1 for value in (args.batch_size, args.workers)):
        raise MSRLError("--batch-size and --workers must be at least 1")


def thread_plan(args: argparse.Namespace) -> ThreadPlan:
    """Apply the thread policy (``--threads``, ``--workers``; :mod:`msrl_model.device`): logged, and printed on
    a terminal's stderr unless ``--quiet`` (piped stderr keeps its one line per error)."""
    from msrl_model.device import apply_threads

    check_positive(args)
    plan = apply_threads(args.threads, readers=args.workers)
    if not args.quiet and sys.stderr.isatty():
        print(plan.line(), file=sys.stderr)
    return plan


def run_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from msrl_model.features.pipeline import ExtractStats, extract_many, extract_slide, parse_shard
    from msrl_model.progress import drive
    from msrl_model.slide.tiling import DEFAULT_MAX_PATCHES

    from msrl_model.weights import parse_weights_args, use_weights

    use_weights(parse_weights_args(args.weights))
    args.workers = thread_plan(args).readers
    tiling = tiling_of(args)
    max_patches = DEFAULT_MAX_PATCHES if args.max_patches is None else args.max_patches
    if max_patches < 1:
        raise MSRLError("--max-patches must be at least 1")
    show = not args.quiet  # tqdm bars on a terminal, plain lines otherwise (progress.drive)
    inputs = [Path(p) for p in args.inputs]
    shard = parse_shard(args.shard) if args.shard else None
    if len(inputs) == 1 and not inputs[0].is_dir() and shard is None:
        # One slide: its error is the command's error (one line, non-zero exit, via the dispatcher).
        stats = ExtractStats()
        out = drive(extract_slide(inputs[0], args.out, args.encoder, args.device, args.workers,
                                  args.batch_size, tiling=tiling, stats=stats, max_patches=max_patches),
                    show=show)
        for warning in stats.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(out)
        return 0
    report = drive(extract_many(inputs, args.out, args.encoder, args.device, args.workers,
                                args.batch_size, tiling=tiling, shard=shard, max_patches=max_patches),
                   show=show)
    for result in report.slides:
        for warning in result.warnings:
            print(f"warning: {result.slide}: {warning}", file=sys.stderr)
    for failed in report.failed:
        print(f"error: {failed.slide}: {failed.message}", file=sys.stderr)
    print(report.summary())
    return 3 if report.failed else 0
