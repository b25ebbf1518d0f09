"""Patch encoders: a name -> builder registry and the :class:`PatchEncoder` every builder returns.

Specs understood by :func:`build_encoder`::

    builtin-he                      weight-free H&E stain/texture encoder (default, see builtin_he.py)
    timm:<arch>[@/path/checkpoint]  any timm architecture with a local checkpoint (see timm_local.py)
    uni_v1, uni_v2, virchow2, hoptimus0, hoptimus1, gigapath, conch_v15, phikon_v2 [@/path/to/checkpoint]
                                    the foundation models as TRIDENT names them, one file each (release.py);
                                    weights from local files only (weights.py says where they are looked for)

A spec is ``<name>[:<arg>][@<path>]``: the registry key is ``<name>``, ``<arg>`` and ``<path>`` go
to its builder. Nothing here ever downloads: foundation models load from local files only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from msrl_model.device import resolve_device
from msrl_model.errors import EncoderError

__all__ = [
    "PatchEncoder",
    "EncoderBuilder",
    "register_encoder",
    "available_encoders",
    "build_encoder",
    "build_notice",
    "hf_offline",
    "check_checkpoint",
]


@dataclass
class PatchEncoder:
    """A ready-to-run patch encoder: uint8 RGB tiles in, one float32 feature row per tile out."""

    name: str  # registry spec without the checkpoint path, e.g. "builtin-he", "timm:resnet50", "gigapath"
    version: str  # changes whenever the features would change (maths version or checkpoint fingerprint)
    dim: int  # feature dimension D of encode()'s output
    model: torch.nn.Module  # eval-mode module mapping transform() output (B,3,S,S) -> (B,D)
    transform: Callable[[torch.Tensor], torch.Tensor]  # uint8 (B,H,W,3) on the model's device -> float (B,3,S,S)
    precision: torch.dtype  # autocast dtype used on CUDA; float32 means no autocast (always float32 on CPU)
    input_size: int  # S, the side of the square model input produced by transform
    checkpoint_sha256: str | None = None  # SHA-256 of the weights file (None: weight-free or not computed)
    checkpoint_file: str | None = None  # the release's checkpoint file name, e.g. "pytorch_model.bin"
    preprocessing: dict[str, Any] | None = None  # resize/crop/interpolation/mean/std/output/precision

    def spec(self) -> dict[str, Any]:
        """The full encoder spec a feature file and a bundle record: name, version, dim, preprocessing and
        the checkpoint's SHA-256 when known (keys with no value are left out)."""
        out: dict[str, Any] = {"name": self.name, "version": self.version, "dim": int(self.dim)}
        extra = {"preprocessing": self.preprocessing, "checkpoint_sha256": self.checkpoint_sha256,
                 "checkpoint_file": self.checkpoint_file}
        return {**out, **{k: v for k, v in extra.items() if v is not None}}

    def encode(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Encode tiles ``batch_uint8`` (B,H,W,3) uint8 RGB -> (B, dim) float32 on the model's device."""
        if batch_uint8.dtype != torch.uint8 or batch_uint8.ndim != 4 or batch_uint8.shape[-1] != 3:
            raise EncoderError(
                f"{self.name} expects uint8 tiles shaped (B, H, W, 3), got {tuple(batch_uint8.shape)} "
                f"{batch_uint8.dtype}; pass RGB uint8 tiles"
            )
        device = _module_device(self.model)
        batch = batch_uint8.to(device, non_blocking=True)
        autocast = device.type == "cuda" and self.precision != torch.float32
        with torch.inference_mode(), torch.autocast(device.type, dtype=self.precision, enabled=autocast):
            out = self.model(self.transform(batch))
        return out.float()


EncoderBuilder = Callable[[str | None, str | None, torch.device], PatchEncoder]
"""builder(arg, path, device) -> PatchEncoder; ``arg`` is the part after ':' and ``path`` after '@'."""

_REGISTRY: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator registering ``builder(arg, path, device)`` under the spec name ``name``."""

    def deco(builder: EncoderBuilder) -> EncoderBuilder:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return deco


def available_encoders() -> list[str]:
    """Registered encoder names in registration order (``builtin-he`` first)."""
    return list(_REGISTRY)


def build_encoder(spec: str = "builtin-he", device: str | torch.device = "cpu") -> PatchEncoder:
    """Build the encoder named by ``spec`` on ``device``; :class:`EncoderError` if unknown or weights are missing."""
    head, at, path = spec.strip().partition("@")
    name, colon, arg = head.partition(":")
    if name not in _REGISTRY:
        known = ", ".join(_spec_forms())
        raise EncoderError(f"unknown encoder {spec!r}: available encoders are {known}")
    if at and not path:
        raise EncoderError(f"encoder spec {spec!r} has an empty path after '@': give the checkpoint path or drop the '@'")
    return _REGISTRY[name](arg if colon else None, path if at else None, resolve_device(device))


def build_notice(spec: str, device: str | torch.device = "cpu") -> str | None:
    """A line to show before :func:`build_encoder` when building ``spec`` on ``device`` takes long this
    once (builtin-he on the CPU before numba has compiled its kernel on this installation), else None."""
    name = spec.strip().partition("@")[0].partition(":")[0]
    if name != "builtin-he" or resolve_device(device).type != "cpu":
        return None
    from msrl_model.encoders.builtin_he import kernel_build_notice

    return kernel_build_notice()


def _spec_forms() -> list[str]:
    """How each registered name is written in a spec, for error messages."""
    forms = {"timm": "timm:<arch>[@/path/to/checkpoint]", "builtin-he": "builtin-he"}
    return [forms.get(n, f"{n}[@/path/to/checkpoint]") for n in _REGISTRY]


def check_checkpoint(expected: Mapping[str, Any], encoder: PatchEncoder, what: str = "the model bundle") -> None:
    """EncoderError when ``expected`` (a bundle's encoder spec) names a checkpoint SHA-256 and ``encoder``
    was built from other weights: features from other weights would not mean what the model learnt."""
    want = expected.get("checkpoint_sha256")
    if not want or encoder.checkpoint_sha256 is None or want == encoder.checkpoint_sha256:
        return
    raise EncoderError(
        f"{what} was trained on {encoder.name} features from the checkpoint with SHA-256 {want}, but the "
        f"{encoder.checkpoint_file or 'checkpoint'} found has SHA-256 {encoder.checkpoint_sha256}: point "
        f"--weights {encoder.name}=PATH (in the app: Settings ▸ Foundation models; or MSRL_WEIGHTS_<NAME>) at "
        f"the checkpoint the model was trained with")


def _module_device(model: torch.nn.Module) -> torch.device:
    """Device of the first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` (and ``TRANSFORMERS_OFFLINE=1``) for the duration, then restore."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Builders register themselves on import; keep these after the registry definitions above.
from msrl_model.encoders import builtin_he, timm_local  # noqa: E402,F401
from msrl_model.encoders import uni_v1, uni_v2, virchow2, hoptimus0, hoptimus1, gigapath  # noqa: E402,F401
from msrl_model.encoders import conch_v15, phikon_v2  # noqa: E402,F401
