"""``phikon_v2``: Phikon-v2 (Owkin, Filiot et al. 2024, arXiv:2409.09173), a ViT-L/16 trained with DINOv2.

Sources: TRIDENT's ``Phikonv2InferenceEncoder`` (mahmoodlab/TRIDENT ``trident/patch_encoder_models/load.py``)
and the model card https://huggingface.co/owkin/phikon-v2:

* architecture: the release is a Hugging Face ``transformers`` ``Dinov2Model`` (ViT-L/16: 24 layers,
  hidden size 1024) whose exact configuration is the repo's ``config.json``; TRIDENT builds it with
  ``AutoModel.from_pretrained(<folder of the checkpoint>)``, so this adapter reads the ``config.json``
  next to ``model.safetensors`` and builds ``Dinov2Model`` from that folder with ``local_files_only``
  (every weight must load: missing, unexpected or mis-shaped weights are refused);
* preprocessing: ``Resize(224)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize(IMAGENET_MEAN,
  IMAGENET_STD)`` = (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) (torchvision's default bilinear resize);
* output: ``last_hidden_state[:, 0, :]`` — the class token after the final LayerNorm, 1024-d;
  precision ``torch.float32`` (TRIDENT).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from msrl_model.encoders import PatchEncoder, hf_offline, register_encoder
from msrl_model.encoders.release import (IMAGENET_MEAN, IMAGENET_STD, Release, reject_arg, release_encoder,
                                         release_label)
from msrl_model.encoders.timm_local import import_transformers
from msrl_model.weights import resolve_checkpoint
from msrl_model.errors import EncoderError

RELEASE = Release(
    name="phikon_v2", hf_repo="owkin/phikon-v2", weights_file="model.safetensors",
    size_text="about 1.2 GB, 0.3 G parameters in float32, with its config.json beside it",
    arch="", model_kwargs={},
    resize=224, crop=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    output="cls", dim=1024, precision=torch.float32)
CONFIG_FILE = "config.json"  # the release's transformers configuration, read from the checkpoint's folder


class ClsToken(nn.Module):
    """A transformers vision model → its ``last_hidden_state[:, 0]`` (the class token)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state[:, 0]


def load_dinov2(release: Release, ckpt: Path) -> nn.Module:
    """The release's ``Dinov2Model`` from ``ckpt`` and the ``config.json`` beside it, in float32, offline;
    EncoderError naming what is wrong when the folder does not hold that release."""
    label = release_label(release)
    if not (ckpt.parent / CONFIG_FILE).is_file():
        raise EncoderError(f"{label}: no {CONFIG_FILE} beside {ckpt}: put the release's {CONFIG_FILE} (from the "
                           f"Hugging Face repo {release.hf_repo}) in {ckpt.parent}")
    if ckpt.name != release.weights_file:
        raise EncoderError(f"{label}: {ckpt.name} is not the release's checkpoint: point {release.name} at its "
                           f"{release.weights_file}")
    transformers = import_transformers(release.name)
    with hf_offline():
        try:
            model, info = transformers.Dinov2Model.from_pretrained(
                str(ckpt.parent), local_files_only=True, dtype=torch.float32, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EncoderError(f"checkpoint {ckpt} does not fit {label} ({first}): use that release's "
                               f"{release.weights_file} and {CONFIG_FILE}") from err
    bad = [*info.get("missing_keys", ()), *info.get("unexpected_keys", ()), *info.get("mismatched_keys", ())]
    if bad or model.config.hidden_size != release.dim:
        example = bad[0] if bad else f"hidden size {model.config.hidden_size}, not {release.dim}"
        raise EncoderError(f"checkpoint {ckpt} does not fit {label}: {len(bad)} missing, unexpected or "
                           f"mis-shaped weights (e.g. {example}); use that release's {release.weights_file} "
                           f"and {CONFIG_FILE}")
    return model


@register_encoder("phikon_v2")
def build_phikon_v2(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``phikon_v2[@path]`` → the 1024-d Phikon-v2 encoder from local weights."""
    reject_arg(RELEASE, arg)
    ckpt = resolve_checkpoint(RELEASE.name, path, RELEASE.hf_repo, RELEASE.weights_file, RELEASE.size_text)
    return release_encoder(RELEASE, ClsToken(load_dinov2(RELEASE, ckpt)), ckpt, device)
