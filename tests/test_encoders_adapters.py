"""timm / GigaPath adapters: offline weight lookup, clear errors, checkpoint loading helpers, transforms."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from safetensors.torch import save_file

from msrl_model.encoders import build_encoder, hf_offline
from msrl_model import weights
from msrl_model.encoders import timm_local
from msrl_model.errors import EncoderError


@pytest.fixture
def no_timm(monkeypatch):
    """Make `import timm` fail even where timm is installed."""
    monkeypatch.setitem(sys.modules, "timm", None)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    monkeypatch.setenv("MSRL_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    folder = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def test_timm_missing_weights_names_expected_file(weights_dir):
    with pytest.raises(EncoderError) as err:
        build_encoder("timm:resnet18")
    msg = str(err.value)
    assert str(weights_dir / "resnet18.safetensors") in msg
    assert "MSRL_WEIGHTS_DIR" in msg and "timm:resnet18@" in msg and "\n" not in msg


def test_timm_default_weights_dir_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MSRL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(EncoderError) as err:
        build_encoder("timm:vit_small_patch16_224")
    assert str(tmp_path / ".cache" / "msrl" / "weights" / "vit_small_patch16_224.safetensors") in str(err.value)


def test_timm_explicit_missing_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(EncoderError, match="does not exist") as err:
        build_encoder(f"timm:resnet18@{missing}")
    assert str(missing) in str(err.value)


def test_timm_directory_without_checkpoint(tmp_path):
    with pytest.raises(EncoderError, match="model.safetensors"):
        build_encoder(f"timm:resnet18@{tmp_path}")


def test_timm_needs_an_architecture():
    with pytest.raises(EncoderError, match=r"timm:<arch>"):
        build_encoder("timm")


def test_empty_path_after_at():
    with pytest.raises(EncoderError, match="empty path"):
        build_encoder("timm:resnet18@")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_not_installed_says_pip_install(weights_dir, no_timm, suffix):
    weights_dir.mkdir()
    (weights_dir / f"resnet18{suffix}").write_bytes(b"placeholder")
    with pytest.raises(EncoderError, match="pip install timm"):
        build_encoder("timm:resnet18")


def test_gigapath_missing_weights_names_cache_path(hf_cache):
    with pytest.raises(EncoderError) as err:
        build_encoder("gigapath")
    msg = str(err.value)
    expected = hf_cache / "models--prov-gigapath--prov-gigapath" / "snapshots" / "<revision>" / "pytorch_model.bin"
    assert str(expected) in msg and "\n" not in msg
    assert "prov-gigapath/prov-gigapath" in msg and "gated" in msg and "--weights gigapath=/path/to/pytorch_model.bin" in msg


def test_gigapath_hf_home_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert weights.hf_hub_cache() == tmp_path / "hf" / "hub"


def test_gigapath_explicit_missing_path(tmp_path):
    with pytest.raises(EncoderError, match="does not exist") as err:
        build_encoder(f"gigapath@{tmp_path / 'x.bin'}")
    assert str(tmp_path / "x.bin") in str(err.value)


def test_gigapath_finds_cached_snapshot_then_needs_timm(hf_cache, no_timm):
    repo = hf_cache / "models--prov-gigapath--prov-gigapath"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "pytorch_model.bin").write_bytes(b"placeholder")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    assert weights.hf_cached_file("prov-gigapath/prov-gigapath", "pytorch_model.bin") == \
        repo / "snapshots" / "abc123" / "pytorch_model.bin"
    with pytest.raises(EncoderError, match="pip install timm"):
        build_encoder("gigapath")


def test_gigapath_rejects_argument():
    with pytest.raises(EncoderError, match="takes no"):
        build_encoder("gigapath:vit")


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Linear(3, 4)


def test_load_state_dict_safetensors_and_torch(tmp_path):
    state = _Tiny().state_dict()
    save_file(state, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "b.pth")
    for name in ("a.safetensors", "b.pth"):
        loaded = timm_local.load_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_state_dict_unreadable(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="cannot read checkpoint"):
        timm_local.load_state_dict(bad)


def test_load_weights_ignores_head_but_not_missing(tmp_path):
    src = _Tiny()
    state = dict(src.state_dict())
    state["head.weight"] = torch.zeros(2, 4)
    dst = _Tiny()
    timm_local.load_weights(dst, state, tmp_path / "c.pth", "timm:tiny")
    assert torch.equal(dst.stem.weight, src.stem.weight)
    del state["stem.bias"]
    with pytest.raises(EncoderError, match="1 missing"):
        timm_local.load_weights(_Tiny(), state, tmp_path / "c.pth", "timm:tiny")


def test_checkpoint_version_tracks_content(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 10)
    v1 = timm_local.checkpoint_version(f)
    f.write_bytes(b"b" * 10)
    assert v1.startswith("ckpt-") and v1 != timm_local.checkpoint_version(f)


def test_gigapath_transform_resize_crop_normalise():
    transform = timm_local.make_transform(256, 224, timm_local.IMAGENET_MEAN, timm_local.IMAGENET_STD, "bicubic")
    tile = torch.zeros(2, 256, 256, 3, dtype=torch.uint8)
    tile[..., 0] = 124  # ≈ 0.485 · 255: the red channel normalises to ~0
    out = transform(tile)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    assert out[:, 0].abs().max() < 0.01
    torch.testing.assert_close(out[:, 1], torch.full_like(out[:, 1], -0.456 / 0.224))
    assert transform(torch.zeros(1, 512, 512, 3, dtype=torch.uint8)).shape == (1, 3, 224, 224)


def test_hf_offline_sets_and_restores(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with hf_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ


def test_timm_real_loading_path(weights_dir, monkeypatch):
    """Only where timm is installed: a tiny model saved to the weights dir loads offline and encodes."""
    try:
        timm = timm_local.import_timm("test")  # declares torchvision's ops where its wheel cannot load them
    except EncoderError:
        pytest.skip("timm is not installed")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    weights_dir.mkdir()
    save_file(reference.state_dict(), str(weights_dir / "resnet10t.safetensors"))
    enc = build_encoder("timm:resnet10t")
    tiles = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    out = enc.encode(tiles)
    assert out.shape == (2, enc.dim) and enc.dim == reference.num_features
    with torch.inference_mode():
        torch.testing.assert_close(out, reference(enc.transform(tiles)))
