"""Model bundles: exact round trip (directory and .msrl zip) and refusal of bad bundles with clear messages."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from msrl_model.errors import BundleError
from msrl_model.infer.bundle import (FORMAT_VERSION, TaskBundle, load_bundle, read_manifest, write_bundle)
from msrl_model.infer.random_bundle import make_random_bundle, random_cases
from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.msrl import MSRLNet, TaskSpec


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("b") / "bundle", n_cases=40, seed=3)


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("z") / "model.msrl", n_cases=40, seed=3)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _tiny_task(cfg: MSRLConfig, n: int, seed: int = 0) -> TaskBundle:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = TaskSpec("survival", "survival", bin_edges=(0.0, 10.0, 20.0, 30.0, float("inf")))
    net = MSRLNet(cfg, spec, "msrl_h")
    return TaskBundle(spec, "msrl_h", net.state_dict(), rng.standard_normal((n, cfg.d)).astype(np.float32),
                      random_cases(n, seed), np.zeros((n, 0), np.float32), {"c_index": {"mean": 0.6, "std": 0.1}})


def _write_msrl_h(out: Path, cfg: MSRLConfig, task: TaskBundle) -> Path:
    return write_bundle(out, config=cfg, tasks=[task], encoder={"name": "builtin-he", "version": "1.0", "dim": 32},
                        tiling={"patch_size": 256, "target_mpp": 0.5, "min_tissue_fraction": 0.25}, tissue={},
                        genomics=None, cohort_summary={"n_cases": 10, "synthetic": True}, model_card="# card\n")


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_round_trip_is_exact(tmp_path, kind):
    out = tmp_path / ("b" if kind == "dir" else "b.msrl")
    cfg = MSRLConfig.tiny(patch_dim=32)
    task = _tiny_task(cfg, 12)
    task.thumbnails = [bytes([i, 255, 0]) * (i + 1) if i % 4 else b"" for i in range(12)]
    task.cases["weird é 列"] = ["ünïcode ✓", None] * 6
    task.cases["Int"] = pd.array([1, None] * 6, dtype="Int64")
    task.cases["flag"] = [True, False] * 6
    path = _write_msrl_h(out, cfg, task)
    b = load_bundle(path)
    got = b.tasks["survival"]
    assert got.spec == task.spec and got.variant == "msrl_h"
    assert got.state_dict.keys() == task.state_dict.keys()
    assert all(torch.equal(got.state_dict[k], v) for k, v in task.state_dict.items())
    np.testing.assert_array_equal(got.buffer_nodes, task.buffer_nodes)
    assert got.pathways.shape == (12, 0)
    pd.testing.assert_frame_equal(got.cases, task.cases, check_exact=True)
    assert got.cases["stage"].isna().sum() == task.cases["stage"].isna().sum() > 0
    assert got.thumbnails == task.thumbnails
    assert got.metrics == {"c_index": {"mean": 0.6, "std": 0.1}}
    assert b.config == cfg and b.genomics is None and b.synthetic
    assert b.model_card == "# card\n" and b.format_version == FORMAT_VERSION


def test_random_bundle_round_trip_with_genomics(bundle_dir, bundle_zip):
    a, z = load_bundle(bundle_dir), load_bundle(bundle_zip)
    for name in ("survival", "EGFR_mut"):
        ta, tz = a.tasks[name], z.tasks[name]
        assert all(torch.equal(ta.state_dict[k], tz.state_dict[k]) for k in ta.state_dict)
        np.testing.assert_array_equal(ta.buffer_nodes, tz.buffer_nodes)
        np.testing.assert_array_equal(ta.pathways, tz.pathways)
        pd.testing.assert_frame_equal(ta.cases, tz.cases)
        assert ta.thumbnails == tz.thumbnails and len(ta.thumbnails) == 40
        assert ta.thumbnails[0][:2] == b"\xff\xd8"  # JPEG
    g = a.genomics
    assert g is not None and g.expression_scale == "log" and len(g.genes) == 12
    assert [len(x) for x in g.groups] == list(a.config.group_sizes)
    assert a.tasks["EGFR_mut"].spec.classes == ("wt", "mut")
    assert a.tasks["survival"].spec.bin_edges[-1] == float("inf")
    assert a.tasks["EGFR_mut"].metrics["f1"] == {"mean": None, "std": None}  # NaN stored as null


def test_manifest_is_strict_json_with_hashes(bundle_dir):
    text = (bundle_dir / "manifest.json").read_text()
    manifest = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(manifest["files"]) == {"weights.safetensors", "buffer.h5", "model_card.md"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["encoder"] == {"spec": "builtin-he", "name": "builtin-he", "version": "1.0", "dim": 32}
    assert manifest["tasks"][0]["bin_edges_months"][-1] is None and manifest["cohort"]["synthetic"] is True
    assert manifest["config"]["patch_dim"] == 32 and manifest["software"]["version"]
    assert read_manifest(bundle_dir) == manifest


def test_no_pickle_only_known_file_types(bundle_dir, bundle_zip):
    allowed = {".json", ".safetensors", ".h5", ".md"}
    assert {p.suffix for p in bundle_dir.iterdir()} <= allowed
    with zipfile.ZipFile(bundle_zip) as zf:
        names = zf.namelist()
    assert {Path(n).suffix for n in names} <= allowed and all("/" not in n for n in names)


@pytest.mark.parametrize("name", ["weights.safetensors", "buffer.h5", "model_card.md"])
def test_flipped_byte_is_refused_naming_the_file(bundle_dir, tmp_path, name):
    path = _copy(bundle_dir, tmp_path)
    _flip(path / name)
    with pytest.raises(BundleError, match=name.replace(".", r"\.")) as err:
        load_bundle(path)
    assert "SHA-256" in str(err.value) and "\n" not in str(err.value)


def test_flipped_byte_in_zip_member_is_refused(bundle_zip, tmp_path):
    path = _copy(bundle_zip, tmp_path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weights.safetensors")
    # the member's data starts after its local header (30 bytes + name + extra)
    _flip(path, info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2)
    with pytest.raises(BundleError, match=r"weights\.safetensors"):
        load_bundle(path)


def test_truncated_files_are_refused(bundle_dir, bundle_zip, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    data = (d / "buffer.h5").read_bytes()
    (d / "buffer.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"buffer\.h5 is truncated"):
        load_bundle(d)
    z = _copy(bundle_zip, tmp_path)
    z.write_bytes(z.read_bytes()[:5000])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(z)


def test_buffer_shape_mismatch_is_refused_even_with_matching_hashes(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["tasks"][0]["n_buffer"] = 41
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="inconsistent shapes"):
        load_bundle(d)


def test_newer_format_is_refused(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"bundle format {FORMAT_VERSION + 1} is newer than this MSRL Studio "
                                          f"supports \\({FORMAT_VERSION}\\); update MSRL Studio"):
        load_bundle(d)


def test_missing_or_damaged_manifest(bundle_dir, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.msrl")
    d = _copy(bundle_dir, tmp_path)
    (d / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="manifest.json is damaged"):
        load_bundle(d)
    (d / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(d)


def test_encoder_mismatch_is_refused(bundle_dir):
    load_bundle(bundle_dir, expected_encoder={"name": "builtin-he", "version": "1.0", "dim": 32})
    with pytest.raises(BundleError, match=r"re-extract the features with --encoder builtin-he"):
        load_bundle(bundle_dir, expected_encoder={"name": "builtin-he", "version": "2.0"})
    with pytest.raises(BundleError, match="gigapath"):
        load_bundle(bundle_dir, expected_encoder={"name": "gigapath", "version": "1.0", "dim": 1536})


def test_write_refuses_inconsistent_tasks(tmp_path):
    cfg = MSRLConfig.tiny(patch_dim=32)
    task = _tiny_task(cfg, 8)
    task.buffer_nodes = task.buffer_nodes[:, :-1]
    with pytest.raises(BundleError, match="buffer_nodes"):
        _write_msrl_h(tmp_path / "a", cfg, task)
    task = _tiny_task(cfg, 8)
    task.state_dict = MSRLNet(MSRLConfig.tiny(patch_dim=16), task.spec, "msrl_h").state_dict()
    with pytest.raises(BundleError, match="state dict"):
        _write_msrl_h(tmp_path / "b", cfg, task)
    task = _tiny_task(cfg, 8)
    task.cases = task.cases.drop(columns=["censorship"])
    with pytest.raises(BundleError, match="censorship"):
        _write_msrl_h(tmp_path / "c", cfg, task)
    assert not (tmp_path / "a").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
