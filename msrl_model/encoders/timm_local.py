"""``timm:<arch>[@/path/to/checkpoint]``: any timm architecture with weights from a local file, never a download.

Checkpoint lookup, in order:

1. the path after ``@``: a ``.safetensors`` file (preferred), a ``.pth``/``.bin``/``.pt`` file read with
   ``torch.load(weights_only=True)``, or a directory holding ``model.safetensors`` or
   ``pytorch_model.bin`` (a Hugging Face snapshot folder);
2. otherwise ``$MSRL_WEIGHTS_DIR/<arch>.safetensors`` (then ``.pth``, ``.bin``), with
   ``MSRL_WEIGHTS_DIR`` defaulting to ``~/.cache/msrl/weights``.

The model is built with ``timm.create_model(arch, pretrained=False, num_classes=0)`` (pooled features,
no classifier), weights are loaded strictly except for classifier-head keys, and
``HF_HUB_OFFLINE=1`` is set while timm runs. The transform resizes tiles to the model's input size
(bilinear, antialiased) and normalises with the mean/std of timm's ``pretrained_cfg`` (ImageNet
defaults when absent). Version = ``ckpt-`` + 12 hex of sha256(first MiB + file size), so features
change version whenever the weights do. timm is optional: without it the builder says how to install it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from msrl_model.encoders import PatchEncoder, hf_offline, register_encoder
from msrl_model.errors import EncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".bin")  # searched in this order in the weights dir
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.", "last_linear.")  # dropped when the model lacks them


def weights_dir() -> Path:
    """Directory searched for ``<arch>.safetensors``: ``$MSRL_WEIGHTS_DIR`` or ``~/.cache/msrl/weights``."""
    return Path(os.environ.get("MSRL_WEIGHTS_DIR") or Path.home() / ".cache" / "msrl" / "weights").expanduser()


def resolve_checkpoint(arch: str, path: str | None) -> Path:
    """The checkpoint file for ``timm:<arch>[@path]``; EncoderError naming the expected file when missing."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            for name in ("model.safetensors", "pytorch_model.bin"):
                if (p / name).is_file():
                    return p / name
            raise EncoderError(
                f"no model.safetensors or pytorch_model.bin in {p}: point timm:{arch}@ at the checkpoint file itself"
            )
        if not p.is_file():
            raise EncoderError(f"checkpoint {p} for timm:{arch} does not exist: check the path after '@'")
        return p
    folder = weights_dir()
    for suffix in CHECKPOINT_SUFFIXES:
        if (folder / f"{arch}{suffix}").is_file():
            return folder / f"{arch}{suffix}"
    raise EncoderError(
        f"no local weights for timm:{arch}: put them at {folder / (arch + '.safetensors')} (or .pth/.bin), "
        f"set MSRL_WEIGHTS_DIR to the folder holding them, or use the spec timm:{arch}@/path/to/checkpoint"
    )


def import_timm(spec: str):
    """Import timm or raise EncoderError telling the user to install it.

    timm imports torchvision. The torchvision wheels on PyPI link the CUDA build of torch; beside the CPU
    build of torch their compiled ops cannot load, and torchvision ≥ 0.18 then fails at import while
    registering a fake kernel for ``torchvision::nms`` (``RuntimeError: operator torchvision::nms does not
    exist``). timm uses only torchvision's Python parts, so in that case the two op schemas are declared
    (no kernels: calling them would raise) and the import is retried.
    """
    try:
        import timm
    except ImportError as err:
        raise EncoderError(f"encoder {spec} needs the timm package, which is not installed: run `pip install timm`") from err
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        _declare_torchvision_ops()
        import timm
    return timm


def import_transformers(spec: str):
    """Import Hugging Face ``transformers`` or raise EncoderError telling the user to install it.

    ``transformers`` imports torchvision too (for its image processors), with the failure
    :func:`import_timm` describes; torchvision is imported first, through the same work-around.
    """
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass  # transformers runs without torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        _declare_torchvision_ops()
    try:
        import transformers
    except ImportError as err:
        raise EncoderError(f"encoder {spec} needs the transformers package, which is not installed: run "
                           f"`pip install transformers`") from err
    return transformers


_TORCHVISION_LIB: list[torch.library.Library] = []  # kept alive: the schemas live as long as the Library


def _declare_torchvision_ops() -> None:
    """Declare ``torchvision::nms``/``qnms`` and forget the half-imported torchvision/timm/transformers modules."""
    import sys

    for mod in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm", "transformers")]:
        del sys.modules[mod]
    if not _TORCHVISION_LIB:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_LIB.append(lib)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors, or a torch file read with weights_only=True), unwrapped.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and strips a ``module.`` prefix.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure is a user-facing unreadable checkpoint
        raise EncoderError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}); re-download or convert it") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f"checkpoint {path} holds no tensor state dict: save the model's state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, spec: str) -> None:
    """Load ``state`` into ``model``: every model weight must be present; extra classifier-head keys are ignored."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_HEAD_PREFIXES)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[-1].strip()
        raise EncoderError(f"checkpoint {path} does not fit {spec} ({first}): use the checkpoint of that architecture") from err
    if result.missing_keys or result.unexpected_keys:
        n_miss, n_extra = len(result.missing_keys), len(result.unexpected_keys)
        example = (result.missing_keys or result.unexpected_keys)[0]
        raise EncoderError(
            f"checkpoint {path} does not fit {spec}: {n_miss} missing and {n_extra} unexpected weights "
            f"(e.g. {example}); use the checkpoint of that architecture"
        )


def checkpoint_version(path: Path) -> str:
    """``ckpt-`` + first 12 hex of sha256(first MiB of the file + its size): cheap, changes with the weights."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
    digest.update(str(path.stat().st_size).encode())
    return "ckpt-" + digest.hexdigest()[:12]


def make_transform(
    resize: int, crop: int, mean: tuple[float, ...], std: tuple[float, ...], mode: str = "bilinear"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (B,H,W,3) -> float32 (B,3,crop,crop): resize to resize², centre-crop crop², (x/255 - mean)/std."""

    def transform(batch_uint8: torch.Tensor) -> torch.Tensor:
        x = batch_uint8.permute(0, 3, 1, 2).float() / 255.0  # (B,3,H,W)
        if x.shape[-2:] != (resize, resize):
            x = F.interpolate(x, size=(resize, resize), mode=mode, antialias=True, align_corners=False).clamp(0, 1)
        if crop != resize:
            top = (resize - crop) // 2
            x = x[..., top : top + crop, top : top + crop]
        m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s

    return transform


def output_dim(model: torch.nn.Module, size: int, device: torch.device) -> int:
    """Feature dimension from one forward pass of a zero image (B=1, 3, size, size)."""
    with torch.inference_mode():
        return int(model(torch.zeros(1, 3, size, size, device=device)).flatten(1).shape[1])


@register_encoder("timm")
def build_timm(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``timm:<arch>[@path]`` -> PatchEncoder with local weights; EncoderError when anything is missing."""
    if not arg:
        raise EncoderError("encoder spec 'timm' needs an architecture: write timm:<arch>[@/path/to/checkpoint]")
    spec = f"timm:{arg}"
    ckpt = resolve_checkpoint(arg, path)
    timm = import_timm(spec)
    with hf_offline():
        try:
            model = timm.create_model(arg, pretrained=False, num_classes=0)
        except RuntimeError as err:
            raise EncoderError(f"timm does not know the architecture {arg!r}: see timm.list_models() for names") from err
        load_weights(model, load_state_dict(ckpt), ckpt, spec)
    model = model.to(device).eval()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    return PatchEncoder(
        name=spec,
        version=checkpoint_version(ckpt),
        dim=output_dim(model, size, device),
        model=model,
        transform=make_transform(size, size, mean, std),
        precision=torch.bfloat16 if device.type == "cuda" else torch.float32,
        input_size=size,
    )
