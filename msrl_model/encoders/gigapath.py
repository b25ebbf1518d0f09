"""``gigapath[@/path/to/pytorch_model.bin]``: the Prov-GigaPath tile encoder (Xu et al., Nature 2024), offline.

A ViT-giant/16 (timm ``vit_giant_patch14_dinov2`` with patch 16, 40 blocks, width 1536, 24 heads,
layer-scale 1e-5, MLP ratio 5.33334) giving a 1536-d class-token embedding per tile. Weights come
from the path after ``@`` or from the local Hugging Face cache of the gated repo
``prov-gigapath/prov-gigapath`` (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``; file ``models--prov-gigapath--prov-gigapath/snapshots/<rev>/pytorch_model.bin``).
It never downloads: the architecture is built with ``pretrained=False`` under ``HF_HUB_OFFLINE=1``
and the file is read with ``torch.load(weights_only=True)``.

Transform (the model card's): 256² tiles at 0.5 µm/px, resize to 256 (bicubic), centre-crop 224,
ImageNet mean/std. Runs under float16 autocast on CUDA, float32 on CPU (slow: ≈ 1.1 G parameters).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from msrl_model.encoders import PatchEncoder, hf_offline, register_encoder
from msrl_model.encoders.timm_local import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    checkpoint_version,
    import_timm,
    load_state_dict,
    load_weights,
    make_transform,
)
from msrl_model.errors import EncoderError

HF_REPO = "prov-gigapath/prov-gigapath"
WEIGHTS_FILE = "pytorch_model.bin"
DIM = 1536
RESIZE = 256  # tiles are resized to this side, then centre-cropped
INPUT_SIZE = 224  # model input side after the centre crop
ARCH = "vit_giant_patch14_dinov2"
MODEL_ARGS = {  # the hub config's model_args: patch 16 overrides the arch's default 14
    "img_size": 224,
    "in_chans": 3,
    "patch_size": 16,
    "embed_dim": 1536,
    "depth": 40,
    "num_heads": 24,
    "init_values": 1e-05,
    "mlp_ratio": 5.33334,
    "num_classes": 0,
}


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder as huggingface_hub resolves it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(hf_home).expanduser() / "hub"


def cached_weights() -> Path | None:
    """``pytorch_model.bin`` of the cached prov-gigapath snapshot (the ``main`` ref first), or None."""
    repo = hf_hub_cache() / ("models--" + HF_REPO.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = repo / "snapshots" / ref.read_text().strip() / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    snapshots = sorted((repo / "snapshots").glob(f"*/{WEIGHTS_FILE}")) if (repo / "snapshots").is_dir() else []
    return snapshots[0] if snapshots else None


def resolve_weights(path: str | None) -> Path:
    """The GigaPath tile-encoder checkpoint; EncoderError saying where to put it when absent."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / WEIGHTS_FILE
        if not p.is_file():
            raise EncoderError(f"GigaPath checkpoint {p} does not exist: pass gigapath@/path/to/{WEIGHTS_FILE}")
        return p
    found = cached_weights()
    if found is None:
        expected = hf_hub_cache() / f"models--{HF_REPO.replace('/', '--')}" / "snapshots" / "<revision>" / WEIGHTS_FILE
        raise EncoderError(
            f"GigaPath weights not found at {expected}: they need access to the gated Hugging Face repo {HF_REPO}; "
            f"on a connected machine run `huggingface-cli download {HF_REPO} {WEIGHTS_FILE}` into that cache "
            f"(or copy the cache folder here), or pass gigapath@/path/to/{WEIGHTS_FILE}"
        )
    return found


@register_encoder("gigapath")
def build_gigapath(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``gigapath[@path]`` -> the 1536-d Prov-GigaPath tile encoder from local weights."""
    if arg is not None:
        raise EncoderError(f"encoder 'gigapath' takes no ':' argument (got {arg!r}): write gigapath[@/path/to/{WEIGHTS_FILE}]")
    ckpt = resolve_weights(path)
    timm = import_timm("gigapath")
    with hf_offline():
        model = timm.create_model(ARCH, pretrained=False, **MODEL_ARGS)
        load_weights(model, load_state_dict(ckpt), ckpt, "gigapath")
    model = model.to(device).eval()
    return PatchEncoder(
        name="gigapath",
        version=checkpoint_version(ckpt),
        dim=DIM,
        model=model,
        transform=make_transform(RESIZE, INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, mode="bicubic"),
        precision=torch.float16 if device.type == "cuda" else torch.float32,
        input_size=INPUT_SIZE,
    )
