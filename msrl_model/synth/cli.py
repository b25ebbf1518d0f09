"""``msrl synth slide|cohort``: synthetic slides and cohorts (documented as synthetic everywhere)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser("synth", help="generate synthetic slides and cohorts")
    kinds = synth.add_subparsers(dest="synth_command", required=True)

    slide = kinds.add_parser("slide", help="write one synthetic H&E Aperio SVS file")
    slide.add_argument("out", help="output path, e.g. demo.svs")
    slide.add_argument("--width", type=int, default=8192, help="level-0 width in pixels")
    slide.add_argument("--height", type=int, default=6144, help="level-0 height in pixels")
    slide.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    slide.add_argument("--kind", default="tissue",
                       help="what the slide shows: tissue (default) or blank")
    slide.set_defaults(func=_run_slide)

    cohort = kinds.add_parser("cohort", help="write a synthetic cohort directory (architecture §3 format)")
    cohort.add_argument("out", help="output cohort directory")
    cohort.add_argument("--cases", type=int, default=200, help="number of cases")
    cohort.add_argument("--projects", type=int, default=3, help="number of cancer projects")
    cohort.add_argument("--seed", type=int, default=0, help="random seed")
    cohort.add_argument("--render-slides", action="store_true",
                        help="render SVS slides and extract features from them (slow) instead of "
                             "sampling feature bags directly")
    cohort.set_defaults(func=_run_cohort)


def _run_slide(args: argparse.Namespace) -> int:
    from msrl_model.synth.slides import run_slide_command

    return run_slide_command(args)


def _run_cohort(args: argparse.Namespace) -> int:
    from msrl_model.synth.cohort import run_cohort_command

    return run_cohort_command(args)
