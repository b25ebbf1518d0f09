"""Start-up: no torch at import, the msrl-app command line, the log file."""

from __future__ import annotations

import os
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
