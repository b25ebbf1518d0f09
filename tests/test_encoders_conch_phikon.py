"""The conch_v15 and phikon_v2 adapters: cited constants, and features equal to a direct construction.

The real models are ViT-L (0.3 G parameters); here each is built with random weights at reduced depth
(1 block) and width (96, 2 heads), everything else as the release builds it, and saved in the release's
checkpoint layout: CONCH v1.5's vision-tower state dict (``trunk.*``, ``attn_pool_contrast.*``,
``ln_contrast.*``) as ``pytorch_model_vision.bin``; Phikon-v2 as a transformers folder (``config.json`` +
``model.safetensors``, written by ``save_pretrained``). The CONCH reference is a plain-torch transcript of
TRIDENT's ``CONCHVisionTower.forward`` (``model_zoo/conchv1_5/conchv1_5.py``) over the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
from torch import nn

from msrl_model.encoders import build_encoder, release, timm_local
from msrl_model.errors import EncoderError

try:
    timm = timm_local.import_timm("test")
except EncoderError:
    pytest.skip("timm is not installed", allow_module_level=True)

REDUCED = {"depth": 1, "embed_dim": 96, "num_heads": 2}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CITED = {  # (resize, crop, interpolation, mean, std, output, dim, precision, checkpoint file), as cited
    "conch_v15": (448, 448, "bilinear", *IMAGENET, "attn_pool_contrast", 768, torch.float16,
                  "pytorch_model_vision.bin"),
    "phikon_v2": (224, 224, "bilinear", *IMAGENET, "cls", 1024, torch.float32, "model.safetensors"),
}


def _module(name: str):
    return sys.modules[f"msrl_model.encoders.{name}"]


pytestmark = pytest.mark.usefixtures("isolated_weights")  # tests/conftest.py


@pytest.mark.parametrize("name", CITED)
def test_constants_equal_the_cited_ones(name):
    rel = _module(name).RELEASE
    got = (rel.resize, rel.crop, rel.interpolation, rel.mean, rel.std, rel.output, rel.dim, rel.precision,
           rel.weights_file)
    assert got == CITED[name] and rel.name == name
    assert release.static_spec(name)["checkpoint_file"] == rel.weights_file


def test_conch_full_size_architecture():
    """ViT-L/16 trunk (1024 wide, 24 blocks, 16 heads, LayerScale 1.0) and the 768-d pooler, on the meta device."""
    conch = _module("conch_v15")
    with torch.device("meta"):
        tower = conch.create_conch(conch.RELEASE)
    trunk = tower.trunk
    assert (trunk.embed_dim, len(trunk.blocks), trunk.blocks[0].attn.num_heads) == (1024, 24, 16)
    assert trunk.patch_embed.patch_size == (16, 16) and trunk.pos_embed.shape == (1, 197, 1024)
    assert type(trunk.blocks[0].ls1).__name__ == "LayerScale" and trunk.norm.eps == 1e-6
    assert tower.attn_pool_contrast.to_kv.in_features == 1024 and tower.ln_contrast.normalized_shape == (768,)
    assert tower.attn_pool_contrast.heads == 8 and tower.attn_pool_contrast.query.shape == (1, 768)


def _trident_conch_forward(state: dict[str, torch.Tensor], trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TRIDENT's CONCHVisionTower.forward, written out: the trunk's blocks (timm's Block, the same module
    TRIDENT's Block is) with its DINO position interpolation, then the einsum attentional pooler."""
    pos = state["trunk.pos_embed"]
    b, _, w, h = x.shape  # the source's (B, nc, w, h) naming
    t = trunk.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([state["trunk.cls_token"].expand(b, -1, -1), t], dim=1)
    n_pos = pos.shape[1] - 1
    w0, h0 = w // 16 + 0.1, h // 16 + 0.1
    side = math.sqrt(n_pos)
    grid = nn.functional.interpolate(pos[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2),
                                     scale_factor=(w0 / side, h0 / side), mode="bicubic")
    t = t + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)
    for blk in trunk.blocks:
        t = blk(t)
    t = nn.functional.layer_norm(t, (t.shape[-1],), state["trunk.norm.weight"], state["trunk.norm.bias"], 1e-6)
    p = {k.removeprefix("attn_pool_contrast."): v for k, v in state.items() if k.startswith("attn_pool_contrast.")}
    q = nn.functional.layer_norm(p["query"], (768,), p["ln_q.weight"], p["ln_q.bias"]) @ p["to_q.weight"].T
    kv = nn.functional.layer_norm(t, (t.shape[-1],), p["ln_k.weight"], p["ln_k.bias"]) @ p["to_kv.weight"].T
    k, v = kv.chunk(2, dim=-1)
    heads = lambda z: z.reshape(z.shape[0], z.shape[1], 8, 96).transpose(1, 2)  # noqa: E731 - b n (h d) -> b h n d
    q, k, v = heads(q.expand(b, 1, 768)), heads(k), heads(v)
    sim = torch.einsum("bhid,bhjd->bhij", q * 96 ** -0.5, k)
    attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(b, 768) @ p["to_out.weight"].T
    return nn.functional.layer_norm(out, (768,), state["ln_contrast.weight"], state["ln_contrast.bias"])


@pytest.mark.parametrize("pos_grid", [14, 28])  # a checkpoint at the trunk's 14² grid, and one at 448 px (28²)
def test_conch_features_equal_direct_construction(pos_grid, tmp_path, monkeypatch):
    conch = _module("conch_v15")
    rel = dataclasses.replace(conch.RELEASE, model_kwargs={**conch.RELEASE.model_kwargs, **REDUCED})
    monkeypatch.setattr(conch, "RELEASE", rel)
    torch.manual_seed(5)
    tower = conch.create_conch(rel).eval()
    state = tower.state_dict()
    state["trunk.pos_embed"] = torch.randn(1, 1 + pos_grid ** 2, 96) * 0.02
    path = tmp_path / "conchv1_5" / rel.weights_file
    path.parent.mkdir()
    torch.save(state, path)
    enc = build_encoder(f"conch_v15@{path}")
    tiles = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    x = enc.transform(tiles)
    assert x.shape == (2, 3, 448, 448)
    loaded = dict(state)
    if pos_grid != 14:  # TRIDENT's load-time resize_pos_embed
        loaded["trunk.pos_embed"] = timm.layers.resample_abs_pos_embed(
            state["trunk.pos_embed"], new_size=[14, 14], num_prefix_tokens=1, interpolation="bilinear",
            antialias=False)
    tower.load_state_dict(loaded)
    with torch.inference_mode():
        features = enc.encode(tiles)
        torch.testing.assert_close(features, _trident_conch_forward(loaded, tower.trunk, x))
    assert features.shape == (2, 768) == (2, enc.dim)
    assert enc.checkpoint_sha256 == release.sha256_file(path) and enc.spec()["checkpoint_file"] == rel.weights_file


def test_conch_refuses_another_models_weights(tmp_path, monkeypatch):
    conch = _module("conch_v15")
    monkeypatch.setattr(conch, "RELEASE", dataclasses.replace(
        conch.RELEASE, model_kwargs={**conch.RELEASE.model_kwargs, **REDUCED}))
    path = tmp_path / "pytorch_model_vision.bin"
    torch.save(conch.create_conch(conch.RELEASE).trunk.state_dict(), path)  # the trunk alone: no pooler
    with pytest.raises(EncoderError, match=r"does not fit conch_v15 \(MahmoodLab/conchv1_5 pytorch_model_vision.bin\)"):
        build_encoder(f"conch_v15@{path}")


def _phikon_folder(tmp_path, monkeypatch, seed: int):
    """A reduced Phikon-v2 saved as the release's folder; (model.safetensors path, the saved model)."""
    phikon = _module("phikon_v2")
    monkeypatch.setattr(phikon, "RELEASE", dataclasses.replace(phikon.RELEASE, dim=96))
    transformers = timm_local.import_transformers("test")
    config = transformers.Dinov2Config(hidden_size=96, num_hidden_layers=1, num_attention_heads=2, patch_size=16,
                                       image_size=224, layerscale_value=1e-5)
    torch.manual_seed(seed)
    model = transformers.Dinov2Model(config).eval()
    folder = tmp_path / f"phikon-v2-{seed}"
    model.save_pretrained(folder)
    return folder / "model.safetensors", model


def test_phikon_features_equal_direct_construction(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    path, reference = _phikon_folder(tmp_path, monkeypatch, seed=6)
    enc = build_encoder(f"phikon_v2@{path.parent}")  # the snapshot folder, as TRIDENT's local_ckpts.json may name it
    tiles = torch.randint(0, 256, (2, 300, 300, 3), dtype=torch.uint8)
    x = enc.transform(tiles)
    assert x.shape == (2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(enc.encode(tiles), reference(pixel_values=x).last_hidden_state[:, 0])
    assert enc.dim == 96 and enc.checkpoint_sha256 == release.sha256_file(path)


def test_phikon_without_its_config_says_what_to_put_where(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    path, _ = _phikon_folder(tmp_path, monkeypatch, seed=7)
    (path.parent / "config.json").unlink()
    with pytest.raises(EncoderError, match=r"no config.json beside .*owkin/phikon-v2"):
        build_encoder(f"phikon_v2@{path}")


def test_phikon_refuses_another_architecture(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    path, _ = _phikon_folder(tmp_path, monkeypatch, seed=8)
    monkeypatch.setattr(_module("phikon_v2"), "RELEASE", dataclasses.replace(_module("phikon_v2").RELEASE, dim=1024))
    with pytest.raises(EncoderError, match=r"does not fit phikon_v2 .*hidden size 96, not 1024"):
        build_encoder(f"phikon_v2@{path}")
