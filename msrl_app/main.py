"""``msrl-app [SLIDE] [--worklist DIR] [--bundle PATH] [--analyze] [--export OUT.pdf|OUT.json] [--quit]
[--self-test]``: start MSRL Studio.

Start-up imports only Qt, numpy and the light ``msrl_model`` modules; torch is imported when a model is
first needed (the bundle is loaded on a worker thread once the window
is shown), so the window shows in well under two seconds.

Model bundle: ``--bundle PATH``, else the one chosen last (File ▸ Open model bundle…), else the
bundle shipped in ``resources/`` (``resources/bundle`` or ``resources/*.msrl``).

Demo slide: started without a slide (and without ``--quit``/``--no-demo``), the app opens a demo
slide — a synthetic H&E-like Aperio SVS (4096 × 3072 px, fixed seed) rendered once on a worker
thread into the cache folder (``<cache>/demo/msrl-demo-slide.svs``, see :mod:`msrl_app.analysis`).

Automation (installer smoke tests, batch use): ``msrl-app SLIDE --bundle B --analyze --export
OUT.pdf --quit`` runs the same GUI path without a person: opens the slide, analyses it, writes the
report (``.pdf``) or the results (``.json`` plus CSVs) and exits 0; on any error it prints
``error: ...`` on stderr and exits 1. No dialog ever waits for a click in ``--quit`` mode.

Self-test (``msrl-app --self-test``, the installed ``msrl-studio --self-test``; installers run it on
the built folder): offscreen unless ``QT_QPA_PLATFORM`` is set, it renders a small synthetic slide
into a temporary folder, analyses it through the automation path above with the shipped bundle (or
``--bundle PATH``), exports the PDF report there, and prints one line on stdout — ``self-test
passed: …`` (exit 0) or ``self-test failed: <what> — <what to do>`` (exit 1). It uses throw-away
settings and feature cache in that folder, so it changes nothing of the user's.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from msrl_model import __version__

log = logging.getLogger("msrl_app")

SELF_TEST_SLIDE = dict(width=2048, height=1536, seed=20240612)  # the self-test's synthetic slide


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="msrl-app", description="MSRL Studio: view a whole-slide image (research use only).")
    parser.add_argument("slide", nargs="?", type=Path,
                        help="slide to open (.svs or any OpenSlide format; a DICOM series: its folder or one "
                             "of its .dcm files)")
    parser.add_argument("--bundle", type=Path, help="model bundle (a bundle folder or a .msrl file)")
    parser.add_argument("--project", help="the slide's cancer type (a project of the bundle, e.g. TCGA-LUAD)")
    parser.add_argument("--expression", type=Path, help="this case's expression CSV (runs MSRL_multi)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="analysis device (default: the setting)")
    parser.add_argument("--analyze", action="store_true", help="analyze the slide once it is open")
    parser.add_argument("--export", type=Path, metavar="OUT",
                        help="after --analyze, write the report (OUT.pdf) or the results (OUT.json + CSVs)")
    parser.add_argument("--no-demo", action="store_true", help="do not open the demo slide when no slide is given")
    parser.add_argument("--worklist", type=Path, metavar="DIR",
                        help="open a folder of slides (or a text file listing them) as the worklist")
    parser.add_argument("--quit", action="store_true",
                        help="quit when done: after opening the slide, or after --analyze/--export "
                             "(smoke tests, batch); exit status 1 and the message on stderr on any error")
    parser.add_argument("--self-test", action="store_true",
                        help="check this installation: analyse a small synthetic slide with the shipped "
                             "bundle (or --bundle), export a PDF, offscreen; one line on stdout, exit 0/1")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _install_excepthook(window) -> None:
    """Unexpected exceptions in Qt callbacks become a log entry and a dialog, never a dead app."""
    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        log.error("unhandled exception\n%s", "".join(traceback.format_exception(kind, value, tb)))
        if threading.current_thread() is not threading.main_thread():
            return  # widgets only on the GUI thread; the log has it
        try:
            window.report_error("Unexpected error", value)
        except Exception:  # noqa: BLE001 - the hook itself must never raise
            sys.__excepthook__(kind, value, tb)
    sys.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    """Run the app; returns the process exit status."""
    from msrl_model.device import passive_openmp_waits

    passive_openmp_waits()  # before the worker imports torch
    args = parse_args(argv)
    if args.export is not None and not args.analyze:
        print("error: --export needs --analyze", file=sys.stderr)
        return 2
    if args.self_test:
        if args.slide is not None or args.analyze or args.export is not None or args.expression is not None:
            print("error: --self-test makes its own slide and report; give it only --bundle and --device",
                  file=sys.stderr)
            return 2
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before the QApplication exists
        # ignore_cleanup_errors: on Windows the slide may still be open when the folder goes
        with tempfile.TemporaryDirectory(prefix="msrl-self-test-", ignore_cleanup_errors=True) as folder:
            args.self_test_dir = Path(folder)
            return _run(args)
    return _run(args)


def _warm_model_imports() -> None:
    """Import torch and pandas (the model's heaviest imports) on a background thread while the window is built:
    the model's warm-up job then finds them loaded. Only third-party packages the GUI thread never imports
    itself: two threads importing the same project modules at once can deadlock on Python's import locks.
    A failure is left to the warm-up job, which imports them again and reports it."""
    def load() -> None:
        try:
            import pandas  # noqa: F401
            import torch  # noqa: F401
        except Exception:  # noqa: BLE001 - reported by the warm-up job
            log.debug("background import of torch/pandas failed", exc_info=True)

    threading.Thread(target=load, name="msrl-warm-imports", daemon=True).start()


def _run(args: argparse.Namespace) -> int:
    _warm_model_imports()
    from msrl_app.applog import setup_logging
    from msrl_app.window import APP, ORG, MainWindow, apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    app.setApplicationVersion(__version__)
    apply_theme(app)
    log_path = setup_logging()
    log.info("MSRL Studio %s starting", __version__)
    self_test_dir = getattr(args, "self_test_dir", None)
    settings = None
    if self_test_dir is not None:  # throw-away settings: the self-test leaves the user's alone
        settings = QSettings(str(self_test_dir / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, log_path=log_path)
    unattended = args.quit or self_test_dir is not None
    window.show_dialogs = not unattended  # a smoke run must not wait on a dialog: errors go to stderr
    _install_excepthook(window)
    if args.device:
        window.set_device(args.device, remember=False)
    window.show()
    log.info("window shown")
    status = {"code": 0}

    def start() -> None:
        if self_test_dir is not None:
            status["code"] = run_self_test(window, args, self_test_dir)
        else:
            status["code"] = run_startup(window, args)
        if unattended:
            window.close()
            app.quit()

    QTimer.singleShot(0, start)
    code = app.exec()
    return code or status["code"]


def run_startup(window, args: argparse.Namespace) -> int:
    """What the command line asks for, as a sequence of actions on the window's state; the exit
    status (1 after any error, which was reported on stderr in ``--quit`` mode)."""
    state = window.state
    bundle = args.bundle or _remembered_bundle(window)
    if bundle is not None:
        window.set_bundle(bundle, remember=args.bundle is not None and not args.quit)
    if args.worklist is not None and not window.worklist.open(args.worklist):
        return 1
    if args.slide is None:
        if args.analyze:
            print("error: --analyze needs a slide", file=sys.stderr)
            return 1
        if not args.quit and not args.no_demo and args.worklist is None:
            state.open_demo_slide()
        return 0
    if not window.open_slide(args.slide):
        return 1
    if args.expression is not None and not state.load_expression(args.expression):
        return 1
    if args.project:
        state.set_project(args.project)
    if not args.analyze:
        return 0
    outcome = window.analyze_and_wait()  # runs the event loop until the analysis ends
    if outcome != "done":
        if outcome == "cancelled":
            print("error: the analysis was cancelled", file=sys.stderr)
        return 1
    if args.export is not None and not state.export(args.export):
        return 1
    return 0


def run_self_test(window, args: argparse.Namespace, folder: Path) -> int:
    """``--self-test``: a synthetic slide in ``folder``, analysed and reported by :func:`run_startup`
    (the ``SLIDE --analyze --export OUT.pdf --quit`` path) with the shipped bundle or ``--bundle``;
    prints the one-line summary on stdout and returns the exit status (0 passed, 1 failed)."""
    from msrl_app.analysis import default_bundle

    started = time.perf_counter()
    bundle = args.bundle if args.bundle is not None else default_bundle()
    if bundle is None:
        return _self_test_failed("no model bundle is shipped with this installation (resources/ has none)",
                                 "reinstall MSRL Studio, or run the self-test with --bundle PATH")
    bundle = Path(bundle).expanduser().absolute()
    if not bundle.exists():
        return _self_test_failed(f"the model bundle {bundle} does not exist",
                                 "pass --bundle an existing bundle folder or .msrl file, or reinstall MSRL Studio")
    width, height = SELF_TEST_SLIDE["width"], SELF_TEST_SLIDE["height"]
    try:
        from msrl_model.synth.slides import make_slide

        slide = make_slide(folder / "self-test-slide.svs", width, height, seed=SELF_TEST_SLIDE["seed"])
    except OSError as exc:
        log.error("self-test: cannot render the synthetic slide", exc_info=exc)
        return _self_test_failed(f"cannot write a synthetic slide into {folder} ({exc})",
                                 "free some disk space or point TMPDIR at a writable folder")
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        log.error("self-test: cannot render the synthetic slide", exc_info=exc)
        return _self_test_failed(f"cannot render a synthetic slide ({type(exc).__name__}: {exc})",
                                 "this installation is incomplete: reinstall MSRL Studio")
    window.state.cache = folder / "features"  # a throw-away feature cache
    report = folder / "self-test-report.pdf"
    automation = argparse.Namespace(**{**vars(args), "slide": slide, "bundle": bundle, "analyze": True,
                                       "export": report, "quit": True, "project": None, "expression": None})
    code = run_startup(window, automation)
    if code != 0 or not report.is_file() or not report.read_bytes().startswith(b"%PDF"):
        error = window.state.last_error
        what = (f"{error.title}: {error.text.strip().splitlines()[0]}" if error is not None
                else "the analysis did not produce a report")
        where = f" (details: {window.log_path})" if window.log_path else ""
        return _self_test_failed(what, f"reinstall MSRL Studio or check the model bundle {bundle}{where}")
    elapsed = time.perf_counter() - started
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", report.read_bytes()))
    predictor = window.state.predictors.current()
    manifest = window.state.bundle_manifest or getattr(getattr(predictor, "bundle", None), "manifest", None)
    name = _model_name(manifest, bundle)
    line = (f"self-test passed: analysed a {width}×{height} synthetic slide with {name} in {elapsed:.1f} s, "
            f"report {pages} page{'s' if pages != 1 else ''}")
    log.info(line)
    print(line, flush=True)
    return 0


def _self_test_failed(what: str, todo: str) -> int:
    line = f"self-test failed: {what} — {todo}"
    log.error(line)
    print(line, flush=True)
    return 1


def _model_name(manifest: dict | None, bundle: Path) -> str:
    """How the summary names the model: the training cohort's name (the bundle's name without one)."""
    from msrl_app.labels import model_display_name

    manifest = manifest or {}
    cohort = manifest.get("cohort") if isinstance(manifest.get("cohort"), dict) else {}
    name = model_display_name(manifest, bundle.name)
    encoder = manifest.get("encoder") if isinstance(manifest.get("encoder"), dict) else {}
    details = [str(encoder["name"])] if encoder.get("name") else []
    if cohort.get("synthetic"):
        details.append("synthetic cohort")
    return f"model {name}" + (f" ({', '.join(details)})" if details else "")


def _remembered_bundle(window) -> Path | None:
    """The bundle chosen last if it still exists, else the shipped one."""
    from msrl_app.analysis import default_bundle

    remembered = window.settings.value("bundle/path")
    if remembered and Path(str(remembered)).exists():
        return Path(str(remembered))
    return default_bundle()


if __name__ == "__main__":
    sys.exit(main())
