"""Feature files: round trip, atomic writes, CLAM/TRIDENT files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from msrl_model.features import h5io
from msrl_model.features.h5io import FeatureFileError, read_features, write_features


def _data(n: int = 7, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 10_000, size=(n, 2))


def test_round_trip_keeps_data_types_and_attrs(tmp_path):
    feats, coords = _data()
    attrs = {"patch_size": 256, "patch_size_level0": 512, "target_mpp": 0.5, "level0_mpp": 0.25,
             "encoder": "builtin-he", "encoder_version": "1.0", "slide_sha256_head": "ab" * 32,
             "tiling_params": {"patch_size": 256, "target_mpp": 0.5}}
    path = write_features(tmp_path / "sub" / "s1.h5", feats, coords, attrs)
    got = read_features(path)
    assert got.features.dtype == np.float32 and got.coords.dtype == np.int64
    np.testing.assert_array_equal(got.features, feats)
    np.testing.assert_array_equal(got.coords, coords)
    for key, value in attrs.items():
        assert got.attrs[key] == value, key
    with h5py.File(path) as f:  # the on-disk layout other tools read (architecture §3)
        assert f["features"].shape == (7, 5) and f["coords"].dtype == np.int64
    assert read_features(path, load_features=False).features.shape == (0, 5)


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    feats, coords = _data()
    path = tmp_path / "s1.h5"
    write_features(path, feats, coords, {"encoder": "old"})
    before = sorted(p.name for p in tmp_path.iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", disk_full)
    with pytest.raises(OSError):
        write_features(path, feats * 2, coords, {"encoder": "new"})
    with pytest.raises(OSError):
        write_features(tmp_path / "fresh.h5", feats, coords, {})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp file, no fresh.h5
    assert read_features(path).attrs["encoder"] == "old"


def test_reads_clam_style_file_with_batch_dim_and_missing_attrs(tmp_path):
    feats, coords = _data(4, 3)
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats[None])  # (1, N, D)
        c = f.create_dataset("coords", data=coords[None].astype(np.int32))  # (1, N, 2)
        c.attrs["patch_size"] = 256
        c.attrs["patch_level"] = 0
        c.attrs["downsample"] = np.array([2.0, 2.0])
    got = read_features(path)
    np.testing.assert_array_equal(got.features, feats)
    assert got.coords.shape == (4, 2) and got.coords.dtype == np.int64
    assert got.attrs["patch_size"] == 256 and got.attrs["patch_size_level0"] == 512
    assert got.attrs["encoder"] == "unknown" and got.attrs["slide_sha256_head"] == ""
    assert got.attrs["target_mpp"] == 0.5 and got.attrs["level0_mpp"] == 0.25


def test_reads_trident_magnifications_as_mpp(tmp_path):
    feats, coords = _data(3, 2)
    path = tmp_path / "trident.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        c = f.create_dataset("coords", data=coords)
        c.attrs.update({"patch_size": 224, "patch_size_level0": 448, "level0_magnification": 40,
                        "target_magnification": 20, "name": b"slide-1"})
    attrs = read_features(path).attrs
    assert attrs["target_mpp"] == pytest.approx(0.5) and attrs["level0_mpp"] == pytest.approx(0.25)
    assert attrs["patch_size_level0"] == 448 and attrs["name"] == "slide-1"


def test_not_a_feature_file_is_a_user_error(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("not hdf5")
    with pytest.raises(FeatureFileError, match="cannot read"):
        read_features(bad)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    with pytest.raises(FeatureFileError, match="no 'features'"):
        read_features(tmp_path / "other.h5")
    with pytest.raises(FeatureFileError, match="not found"):
        read_features(tmp_path / "missing.h5")
    assert h5io.FORMAT_VERSION >= 1
