"""Start-up: no torch at import, the msrl-app command line, the log file."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from msrl_app.main import parse_args


def test_start_up_never_imports_torch():
    """Nor pyqtgraph (the results dock) nor superqt (the first background job): the window shows at once."""
    code = ("import msrl_app.main, msrl_app.window, msrl_app.viewer, sys\n"
            "lazy = ('torch', 'torch_geometric', 'pyqtgraph', 'superqt')\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in lazy)\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_stored_foundation_model_weights_reach_the_resolver_without_torch(tmp_path):
    """A window built with checkpoints stored in Settings ▸ Foundation models hands them to the
    resolver at start-up, and still imports no torch (the resolver is a torch-free module)."""
    code = ("import os, sys\n"
            "from PySide6.QtCore import QSettings\n"
            "from PySide6.QtWidgets import QApplication\n"
            "app = QApplication([])\n"
            "from msrl_app.window import MainWindow\n"
            f"s = QSettings({str(tmp_path / 's.ini')!r}, QSettings.Format.IniFormat)\n"
            "s.setValue('foundation_models/uni_v1', '/data/uni/pytorch_model.bin')\n"
            "w = MainWindow(settings=s)\n"
            "from msrl_model import weights\n"
            "assert weights._app_weights == {'uni_v1': '/data/uni/pytorch_model.bin'}, weights._app_weights\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric'))\n"
            "assert not heavy, heavy\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr


def test_parse_args():
    args = parse_args(["slide.svs", "--quit"])
    assert str(args.slide) == "slide.svs" and args.quit
    assert parse_args([]).slide is None
    args = parse_args(["s.svs", "--bundle", "b.msrl", "--analyze", "--export", "o.pdf", "--quit"])
    assert args.analyze and str(args.export) == "o.pdf" and str(args.bundle) == "b.msrl"
    with pytest.raises(SystemExit):
        parse_args(["--analyse-everything"])  # unknown options are refused, not silently ignored


def _run_app(args, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MSRL_STUDIO_LOG_DIR=str(tmp_path / "logs"),
               HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_STATE_HOME=str(tmp_path / "state"))
    return subprocess.run([sys.executable, "-m", "msrl_app", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_msrl_app_opens_a_slide_and_quits(tmp_path, cmu_slide):
    out = _run_app([str(cmu_slide), "--quit"], tmp_path)
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "logs" / "msrl-studio.log").read_text()
    assert "starting" in log and f"opened {cmu_slide}" in log and "Traceback" not in log


def test_msrl_app_reports_a_bad_slide(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"\x00" * 100)
    out = _run_app([str(bad), "--quit"], tmp_path)
    assert out.returncode == 1
    assert "error: Cannot open bad.svs" in out.stderr


def _self_test(args, tmp_path, timeout=300):
    """``msrl-app --self-test`` as an installer runs it: no QT_QPA_PLATFORM (it goes offscreen by itself)."""
    env = dict(os.environ, MSRL_STUDIO_LOG_DIR=str(tmp_path / "logs"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               XDG_STATE_HOME=str(tmp_path / "state"), TMPDIR=str(tmp_path))
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("MSRL_STUDIO_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "msrl_app", "--self-test", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


SELF_TEST_PASSED = re.compile(r"^self-test passed: analysed a 2048×1536 synthetic slide with model (.+) in "
                              r"\d+\.\d s, report (\d+) pages?$")


def _assert_passed_and_left_nothing(run, tmp_path) -> re.Match:
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, run.stdout
    match = SELF_TEST_PASSED.match(lines[0])
    assert match, lines[0]
    assert "Traceback" not in run.stderr
    # throw-away settings, cache and slide: nothing of the user's changed, no temporary folder left
    assert not (tmp_path / "config").exists() and not (tmp_path / "cache").exists()
    assert not list(tmp_path.glob("msrl-self-test-*"))
    return match


def test_self_test_with_the_shipped_bundle(tmp_path):
    """What installers/build.sh runs on the built folder (~15 s here)."""
    run = _self_test([], tmp_path)
    match = _assert_passed_and_left_nothing(run, tmp_path)
    assert "synthetic-300c-3p-seed0" in match.group(1) and int(match.group(2)) >= 2


def test_self_test_with_a_given_bundle(tmp_path):
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle

    enc = build_encoder("builtin-he")
    bundle = make_random_bundle(tmp_path / "tiny", patch_dim=enc.dim,
                                encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})
    run = _self_test(["--bundle", str(bundle), "--device", "cpu"], tmp_path)
    _assert_passed_and_left_nothing(run, tmp_path)


@pytest.mark.parametrize("bundle", ["missing.msrl", "empty-folder"])
def test_self_test_fails_in_one_line(tmp_path, bundle):
    path = tmp_path / bundle
    if bundle == "empty-folder":
        path.mkdir()  # exists, but is no bundle: the analysis path reports it
    run = _self_test(["--bundle", str(path)], tmp_path)
    assert run.returncode == 1
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("self-test failed: ") and " — " in lines[0], run.stdout
    assert str(path) in lines[0]
    assert "Traceback" not in run.stdout + run.stderr
    assert not list(tmp_path.glob("msrl-self-test-*"))


def test_self_test_refuses_a_slide(tmp_path):
    run = _self_test(["slide.svs"], tmp_path)
    assert run.returncode == 2 and "--self-test" in run.stderr and not run.stdout
