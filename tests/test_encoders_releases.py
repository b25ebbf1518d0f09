"""Foundation-model adapters (uni_v1, uni_v2, virchow2, hoptimus0, hoptimus1, gigapath), their weights resolver,
and a uni_v1 bundle analysing a real slide end to end.

The real models are 0.3-1.1 G parameters; here each architecture is built with random weights at reduced
depth (1 block) and width (embed_dim 96, 2 heads), everything else — architecture, register tokens,
MLP type, read-out, preprocessing — as the release builds it. The weights are saved in the release's
checkpoint layout (the timm state dict TRIDENT loads with ``strict=True``, as ``pytorch_model.bin``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import pytest
import torch

from msrl_model import weights
from msrl_model.encoders import build_encoder, release, timm_local
from msrl_model.errors import EncoderError

try:
    timm_local.import_timm("test")
except EncoderError:
    pytest.skip("timm is not installed", allow_module_level=True)

ADAPTERS = ["uni_v1", "uni_v2", "virchow2", "hoptimus0", "hoptimus1", "gigapath"]
REDUCED = {"depth": 1, "embed_dim": 96, "num_heads": 2}
CITED = {  # (resize, crop, interpolation, mean, std, output, dim, precision), from each adapter's cited source
    "uni_v1": (224, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls", 1024, torch.float16),
    "uni_v2": (224, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls", 1536, torch.bfloat16),
    "virchow2": (224, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls+mean", 2560, torch.float16),
    "hoptimus0": (224, 224, "bilinear", (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "cls", 1536,
                  torch.float16),
    "hoptimus1": (224, 224, "bilinear", (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "cls", 1536,
                  torch.float16),
    "gigapath": (256, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls", 1536, torch.float16),
}


def _module(name: str):
    return sys.modules[f"msrl_model.encoders.{name}"]


def _reduce(monkeypatch, name: str) -> release.Release:
    """Swap the adapter's release for the reduced one; returns it."""
    full = _module(name).RELEASE
    small = dataclasses.replace(full, model_kwargs={**full.model_kwargs, **REDUCED},
                                dim=96 * (2 if full.output == "cls+mean" else 1))
    monkeypatch.setattr(_module(name), "RELEASE", small)
    return small


def _checkpoint(tmp_path, rel: release.Release, seed: int):
    """Random weights of ``rel``'s architecture saved as the release's checkpoint; (path, reference network)."""
    torch.manual_seed(seed)
    net = release.create_network(rel).eval()
    path = tmp_path / f"{rel.name}-{seed}" / rel.weights_file
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return path, release.wrap_output(rel, net).eval()


pytestmark = pytest.mark.usefixtures("isolated_weights")  # tests/conftest.py


@pytest.mark.parametrize("name", ADAPTERS)
def test_constants_equal_the_cited_ones(name):
    rel = _module(name).RELEASE
    assert (rel.resize, rel.crop, rel.interpolation, rel.mean, rel.std, rel.output, rel.dim, rel.precision) == CITED[name]
    assert rel.name == name and rel.weights_file == "pytorch_model.bin"


def test_full_size_dimensions_from_the_architecture():
    """The cited dims follow from the full architectures (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        for name in ADAPTERS:
            rel = _module(name).RELEASE
            width = release.create_network(rel).num_features
            assert width * (2 if rel.output == "cls+mean" else 1) == rel.dim, name


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_features_equal_direct_construction(name, tmp_path, monkeypatch):
    rel = _reduce(monkeypatch, name)
    path, reference = _checkpoint(tmp_path, rel, seed=1)
    enc = build_encoder(f"{name}@{path}")
    tiles = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    x = enc.transform(tiles)
    assert x.shape == (2, 3, rel.crop, rel.crop)
    with torch.inference_mode():
        torch.testing.assert_close(enc.encode(tiles), reference(x))
    assert enc.dim == rel.dim == enc.encode(tiles).shape[1]
    assert enc.checkpoint_sha256 == release.sha256_file(path) and enc.version.endswith(enc.checkpoint_sha256[:12])
    assert enc.spec()["preprocessing"]["mean"] == list(rel.mean)


def test_mismatched_checkpoint_names_the_release_file(tmp_path, monkeypatch):
    _reduce(monkeypatch, "uni_v1")
    path, _ = _checkpoint(tmp_path, _reduce(monkeypatch, "uni_v2"), seed=2)  # another architecture's weights
    with pytest.raises(EncoderError, match=r"does not fit uni_v1 \(MahmoodLab/UNI pytorch_model.bin\)"):
        build_encoder(f"uni_v1@{path}")


def test_weights_resolver_order(tmp_path, monkeypatch):
    files = {k: tmp_path / k / "pytorch_model.bin" for k in ("cli", "env", "json", "hf")}
    for f in files.values():
        f.parent.mkdir()
        f.write_bytes(b"x")
    hf = tmp_path / "hub" / "models--MahmoodLab--UNI" / "snapshots" / "rev"
    hf.mkdir(parents=True)
    (hf / "pytorch_model.bin").write_bytes(b"x")
    args = ("uni_v1", None, "MahmoodLab/UNI", "pytorch_model.bin", "1.2 GB")
    assert weights.resolve_checkpoint(*args) == hf / "pytorch_model.bin"
    ckpts = tmp_path / "local_ckpts.json"  # TRIDENT's format; folders are accepted too
    ckpts.write_text(json.dumps({"uni_v1": str(files["json"].parent), "conch_v15": ""}))
    monkeypatch.setenv("MSRL_WEIGHTS_JSON", str(ckpts))
    assert weights.resolve_checkpoint(*args) == files["json"]
    monkeypatch.setenv("MSRL_WEIGHTS_UNI_V1", str(files["env"]))
    assert weights.resolve_checkpoint(*args) == files["env"]
    weights.use_weights(weights.parse_weights_args([f"uni_v1={files['cli']}"]))
    assert weights.resolve_checkpoint(*args) == files["cli"]
    with pytest.raises(EncoderError, match="NAME=PATH"):
        weights.parse_weights_args(["uni_v1"])
    monkeypatch.setenv("MSRL_WEIGHTS_UNI_V1", str(tmp_path / "missing.bin"))
    weights.use_weights({})
    with pytest.raises(EncoderError, match="set by MSRL_WEIGHTS_UNI_V1"):
        weights.resolve_checkpoint(*args)


def test_missing_weights_message_names_file_size_and_places():
    with pytest.raises(EncoderError) as err:
        build_encoder("virchow2")
    msg = str(err.value)
    for part in ("pytorch_model.bin", "2.5 GB", "paige-ai/Virchow2", "--weights virchow2=", "MSRL_WEIGHTS_VIRCHOW2",
                 "local_ckpts.json", "models--paige-ai--Virchow2"):
        assert part in msg
    assert "\n" not in msg


def _analyze(argv: list[str]) -> int:
    from msrl_model.infer.cli import register

    parser = argparse.ArgumentParser(prog="msrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.func(args)


def test_uni_v1_bundle_analyzes_a_slide_and_refuses_other_weights(cmu_slide, tmp_path, monkeypatch, capsys):
    """A tiny bundle on uni_v1 features (reduced UNI architecture, random weights) analyses the CMU slide in
    ``msrl analyze`` with ``--weights``, and refuses a checkpoint with other weights."""
    from msrl_model.infer.random_bundle import make_random_bundle

    rel = _reduce(monkeypatch, "uni_v1")
    good, _ = _checkpoint(tmp_path, rel, seed=3)
    other, _ = _checkpoint(tmp_path, rel, seed=4)
    spec = build_encoder(f"uni_v1@{good}").spec()  # what the training features record → the bundle's encoder
    bundle = make_random_bundle(tmp_path / "uni.msrl", patch_dim=rel.dim, n_cases=20, seed=1,
                                encoder={**spec, "spec": "uni_v1"})
    out = tmp_path / "out"
    assert _analyze([str(cmu_slide), "--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--quiet",
                     "--weights", f"uni_v1={good}"]) == 0
    result = json.loads(next(out.glob("*.json")).read_text())
    assert result["encoder"]["name"] == "uni_v1"
    capsys.readouterr()
    assert _analyze([str(cmu_slide), "--bundle", str(bundle), "--out", str(tmp_path / "out2"), "--device", "cpu",
                     "--quiet", "--weights", f"uni_v1={other}"]) == 2
    err = capsys.readouterr().err
    assert spec["checkpoint_sha256"] in err and release.sha256_file(other) in err and "--weights uni_v1=" in err
