"""What a foundation model's official release is (:class:`Release`) and the one builder for the timm-based ones.

Each adapter file (``uni_v1.py``, ``virchow2.py``, ...) declares its ``RELEASE``: the timm architecture and
keyword arguments, the preprocessing, how the feature row is read off the network's output, its
dimension and precision, and the release's checkpoint file, each value cited there. :func:`build_release`
turns it into a :class:`~msrl_model.encoders.PatchEncoder`: weights only from a local file found by
:mod:`msrl_model.weights` (``safetensors`` or ``torch.load(weights_only=True)``, loaded strictly,
the architecture built with ``pretrained=False`` under ``HF_HUB_OFFLINE=1``), the checkpoint's SHA-256
recorded so a bundle can refuse other weights. The version is ``<adapter version>.ckpt-<12 hex of the
SHA-256>``, so cached features never outlive a change of weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msrl_model.encoders import PatchEncoder, hf_offline
from msrl_model.encoders.timm_local import import_timm, load_state_dict, load_weights, make_transform
from msrl_model.weights import resolve_checkpoint
from msrl_model.errors import EncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm.data.IMAGENET_DEFAULT_MEAN
IMAGENET_STD = (0.229, 0.224, 0.225)  # timm.data.IMAGENET_DEFAULT_STD
_LAYERS = {"SwiGLUPacked": ("timm.layers", "SwiGLUPacked"), "SiLU": ("torch.nn", "SiLU")}  # named kwargs values


@dataclass(frozen=True)
class Release:
    """A foundation model's official release, as its card / TRIDENT builds it."""

    name: str  # registry name, as TRIDENT names it (features_<name>/)
    hf_repo: str  # Hugging Face repo of the release
    weights_file: str  # the release's checkpoint file in that repo
    size_text: str  # the checkpoint's size, for the "missing weights" message
    arch: str  # timm model name (of the trunk, for adapters with their own head; "" for non-timm releases)
    model_kwargs: Mapping[str, Any]  # timm.create_model kwargs; "SwiGLUPacked"/"SiLU" name those layers
    resize: int  # tiles are resized to resize² first
    crop: int  # then centre-cropped to crop² (== resize: no crop)
    interpolation: str  # "bilinear" | "bicubic" (antialiased)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str  # "cls": the class token; "cls+mean": CLS ⊕ mean of the patch tokens; else the adapter's head
    dim: int  # feature dimension
    precision: torch.dtype  # autocast dtype on CUDA
    version: str = "1"  # bump when this adapter's maths change
    prefix_tokens: int = 1  # tokens before the patch tokens (CLS + register tokens), for output "cls+mean"

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing and output as recorded in feature files and bundles."""
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "output": self.output,
                "precision": str(self.precision).removeprefix("torch.")}


class ClsMeanPatch(torch.nn.Module):
    """(B, T, D) token output → (B, 2D): the class token ⊕ the mean of the patch tokens (after ``prefix`` tokens)."""

    def __init__(self, model: torch.nn.Module, prefix: int) -> None:
        super().__init__()
        self.model = model
        self.prefix = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model(x)
        return torch.cat([tokens[:, 0], tokens[:, self.prefix:].mean(1)], dim=-1)


def release_of(name: object) -> Release | None:
    """The :class:`Release` of the registered adapter ``name``; None when ``name`` is no release adapter."""
    import sys

    release = getattr(sys.modules.get(f"msrl_model.encoders.{name}"), "RELEASE", None)
    return release if isinstance(release, Release) else None


def static_spec(name: str) -> dict[str, Any] | None:
    """What the release adapter ``name`` records without its weights (dim, preprocessing, checkpoint file);
    None when ``name`` is no release adapter. For feature files that name their encoder only by folder
    (TRIDENT's ``features_<name>/``)."""
    release = release_of(name)
    if release is None:
        return None
    return {"dim": release.dim, "preprocessing": release.preprocessing(), "checkpoint_file": release.weights_file}


def pin_checkpoint(spec: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``(spec, log line)``: a bundle's encoder ``spec`` (from its training features) with the SHA-256 of the
    release's checkpoint when the features record none — TRIDENT's name their encoder only by their folder —
    as the weights resolver finds it (``--weights``, the app's setting, ``MSRL_WEIGHTS_<NAME>``,
    ``local_ckpts.json``, the Hugging Face cache), so the bundle refuses other weights at analysis. The line
    says what was pinned, or why nothing was (empty for specs that need no pin)."""
    release = release_of(spec.get("name"))
    if release is None or spec.get("checkpoint_sha256"):
        return dict(spec), ""
    try:
        ckpt = resolve_checkpoint(release.name, None, release.hf_repo, release.weights_file, release.size_text)
    except EncoderError:
        return dict(spec), (f"the {release.name} features record no checkpoint and none was found (give "
                            f"--weights {release.name}=PATH): the bundle will accept any {release.name} weights")
    sha = sha256_file(ckpt)
    pinned = {**spec, "version": f"{release.version}.ckpt-{sha[:12]}", "checkpoint_sha256": sha,
              "checkpoint_file": release.weights_file}
    return pinned, (f"the bundle pins {release.name} to {ckpt} (SHA-256 {sha}): the features record no "
                    f"checkpoint, so it must be the one that made them")


def registered_releases() -> list[Release]:
    """The :class:`Release` of every registered foundation-model adapter, in registry order (what the app's
    Settings ▸ Foundation models lists)."""
    from msrl_model.encoders import available_encoders

    found = (release_of(name) for name in available_encoders())
    return [release for release in found if release is not None]


def sha256_file(path: Path) -> str:
    """SHA-256 of the whole file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def timm_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the layer names of ``mlp_layer``/``act_layer`` replaced by the classes."""
    import importlib

    out = dict(kwargs)
    for key in ("mlp_layer", "act_layer"):
        if isinstance(out.get(key), str):
            module, attr = _LAYERS[out[key]]
            out[key] = getattr(importlib.import_module(module), attr)
    return out


def create_network(release: Release) -> torch.nn.Module:
    """The release's architecture with random weights, in eval mode, output as the release reads it."""
    timm = import_timm(release.name)
    with hf_offline():
        model = timm.create_model(release.arch, pretrained=False, **timm_kwargs(release.model_kwargs))
    return model


def wrap_output(release: Release, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the release's read-out (CLS ⊕ mean patch tokens where the release does that)."""
    return ClsMeanPatch(model, release.prefix_tokens) if release.output == "cls+mean" else model


def build_release(release: Release, arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """The PatchEncoder of ``release`` from local weights; EncoderError naming what to put where."""
    reject_arg(release, arg)
    ckpt = resolve_checkpoint(release.name, path, release.hf_repo, release.weights_file, release.size_text)
    model = create_network(release)
    load_weights(model, load_state_dict(ckpt), ckpt, release_label(release))
    return release_encoder(release, wrap_output(release, model), ckpt, device)


def release_label(release: Release) -> str:
    """How messages name the release: ``uni_v1 (MahmoodLab/UNI pytorch_model.bin)``."""
    return f"{release.name} ({release.hf_repo} {release.weights_file})"


def reject_arg(release: Release, arg: str | None) -> None:
    """EncoderError when a release spec carries a ``:`` argument (release adapters take none)."""
    if arg is not None:
        raise EncoderError(f"encoder {release.name!r} takes no ':' argument (got {arg!r}): write "
                           f"{release.name}[@/path/to/{release.weights_file}]")


def release_encoder(release: Release, model: torch.nn.Module, ckpt: Path, device: torch.device) -> PatchEncoder:
    """The PatchEncoder of ``release`` around ``model`` (weights already loaded from ``ckpt``): the release's
    transform and precision, the checkpoint's SHA-256 in its version and spec."""
    model = model.to(device).eval()
    sha = sha256_file(ckpt)
    return PatchEncoder(
        name=release.name, version=f"{release.version}.ckpt-{sha[:12]}", dim=release.dim, model=model,
        transform=make_transform(release.resize, release.crop, release.mean, release.std, mode=release.interpolation),
        precision=release.precision if device.type == "cuda" else torch.float32, input_size=release.crop,
        checkpoint_sha256=sha, checkpoint_file=release.weights_file,
        preprocessing=release.preprocessing())


__all__ = ["ClsMeanPatch", "IMAGENET_MEAN", "IMAGENET_STD", "Release", "build_release", "create_network",
           "pin_checkpoint", "registered_releases", "release_of", "reject_arg", "release_encoder", "release_label", "sha256_file", "static_spec",
           "timm_kwargs", "wrap_output"]
