"""Where the files shipped with MSRL Studio are (the model bundle in ``resources/``), found without importing
torch: the app looks for its bundle on the GUI thread at start-up."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]  # the folder holding msrl_model/ (source tree or site-packages)


def resource_dirs() -> list[Path]:
    """Where shipped resources may be: a frozen app's folder, ``msrl_app/resources``, the source tree's
    ``resources``."""
    dirs = [_ROOT / "msrl_app" / "resources", _ROOT / "resources"]
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        dirs.insert(0, Path(frozen) / "resources")
    return dirs


def shipped_bundle() -> Path | None:
    """The bundle shipped with MSRL Studio: ``<resources>/bundle`` (a directory) or ``<resources>/*.msrl``."""
    for folder in resource_dirs():
        if (folder / "bundle" / "manifest.json").is_file():
            return folder / "bundle"
        shipped = sorted(folder.glob("*.msrl")) if folder.is_dir() else []
        if shipped:
            return shipped[0]
    return None


__all__ = ["resource_dirs", "shipped_bundle"]
