"""``msrl_model`` must import and run without Qt: servers and CI have no display."""

import pkgutil
import subprocess
import sys

import msrl_model


def test_msrl_model_never_imports_qt():
    modules = [m.name for m in pkgutil.walk_packages(msrl_model.__path__, "msrl_model.")
               if not m.name.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('PySide6', 'PyQt5', 'PyQt6', 'pyqtgraph', 'qtpy', 'shiboken6'))\n"
        "assert not bad, bad\n"
        "print(len(" + repr(modules) + "))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 1
