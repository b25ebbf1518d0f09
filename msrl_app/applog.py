"""The app's log file: one per user, rotated, its path shown in Help ▸ About."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from PySide6.QtCore import QStandardPaths

LOG_DIR_ENV = "MSRL_STUDIO_LOG_DIR"  # overrides the folder (tests, portable installs)
LOG_NAME = "msrl-studio.log"


def log_file_path() -> Path:
    """``$MSRL_STUDIO_LOG_DIR/msrl-studio.log``, else the per-user state folder
    (Linux ``~/.local/state/msrl-studio``, macOS ``~/Library/Preferences/msrl-studio``,
    Windows ``%LOCALAPPDATA%/msrl-studio``)."""
    override = os.environ.get(LOG_DIR_ENV)
    if override:
        return Path(override) / LOG_NAME
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericStateLocation)
    folder = Path(base) / "msrl-studio" if base else Path.home() / ".local" / "state" / "msrl-studio"
    return folder / LOG_NAME


def setup_logging(path: Path | None = None, level: int = logging.INFO) -> Path | None:
    """Send ``msrl_app`` and ``msrl_model`` logs to a rotating file (1 MiB x 3); returns its path,
    or None when the folder cannot be written (the app then runs without a log file)."""
    path = path or log_file_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=2**20, backupCount=3, encoding="utf-8")
    except OSError as exc:
        logging.getLogger(__name__).warning("no log file (%s): %s", path, exc)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._msrl_app_file = True  # type: ignore[attr-defined] - marks ours, replaced on a second call
    for name in ("msrl_app", "msrl_model"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for old in [h for h in logger.handlers if getattr(h, "_msrl_app_file", False)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
    return path
