"""Synthetic Aperio SVS slides: readable by OpenSlide and tiffslide, deterministic, H&E-like."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from msrl_model.synth.slides import make_slide


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_openslide_reports_aperio(tmp_path):
    openslide = pytest.importorskip("openslide")
    path = make_slide(tmp_path / "s.svs", 2048, 1536, seed=3)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.objective-power"]) == pytest.approx(20)
        assert slide.dimensions == (2048, 1536)
        assert slide.level_count >= 2
        assert slide.level_dimensions[1] == (512, 384)


def test_same_seed_same_bytes(tmp_path):
    a = make_slide(tmp_path / "a" / "s.svs", 1024, 768, seed=5)
    b = make_slide(tmp_path / "b" / "s.svs", 1024, 768, seed=5)
    c = make_slide(tmp_path / "c" / "s.svs", 1024, 768, seed=6)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)
