"""``hoptimus1``: H-optimus-1 (Bioptimus), the successor of H-optimus-0 with new weights.

Sources: the model card https://huggingface.co/bioptimus/H-optimus-1 and TRIDENT's
``HOptimus1InferenceEncoder`` (mahmoodlab/TRIDENT ``trident/patch_encoder_models/load.py``), which
build it exactly as H-optimus-0 (:mod:`msrl_model.encoders.hoptimus0`: ``vit_giant_patch14_reg4_dinov2``,
``Resize(224)`` with the card's H&E mean/std, the 1536-d class token, float16); only the repository
and so the weights differ.
"""

from __future__ import annotations

import dataclasses

import torch

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.encoders.hoptimus0 import RELEASE as HOPTIMUS0
from msrl_model.encoders.release import build_release

RELEASE = dataclasses.replace(HOPTIMUS0, name="hoptimus1", hf_repo="bioptimus/H-optimus-1")


@register_encoder("hoptimus1")
def build_hoptimus1(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``hoptimus1[@path]`` → the 1536-d H-optimus-1 encoder from local weights."""
    return build_release(RELEASE, arg, path, device)
