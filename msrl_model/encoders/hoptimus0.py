"""``hoptimus0``: H-optimus-0 (Bioptimus), a ViT-g/14 with 4 register tokens.

Sources: the model card https://huggingface.co/bioptimus/H-optimus-0 and TRIDENT's
``HOptimus0InferenceEncoder`` (mahmoodlab/TRIDENT ``trident/patch_encoder_models/load.py``):

* architecture: ``timm.create_model("vit_giant_patch14_reg4_dinov2", num_classes=0, img_size=224,
  global_pool="token", init_values=1e-5, dynamic_img_size=False)``; ``pytorch_model.bin`` is its state dict;
* preprocessing: ``Resize(224)`` (bilinear, no crop), ``Normalize(mean=(0.707223, 0.578729, 0.703617),
  std=(0.211883, 0.230117, 0.177517))`` — the card's H&E statistics, not ImageNet's;
* output: the class token, 1536-d; precision float16 (the card's ``torch.autocast(dtype=torch.float16)``).
"""

from __future__ import annotations

import torch

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.encoders.release import Release, build_release

RELEASE = Release(
    name="hoptimus0", hf_repo="bioptimus/H-optimus-0", weights_file="pytorch_model.bin",
    size_text="about 4.5 GB, 1.1 G parameters in float32",
    arch="vit_giant_patch14_reg4_dinov2",
    model_kwargs={"num_classes": 0, "img_size": 224, "global_pool": "token", "init_values": 1e-5,
                  "dynamic_img_size": False},
    resize=224, crop=224, interpolation="bilinear", mean=(0.707223, 0.578729, 0.703617),
    std=(0.211883, 0.230117, 0.177517), output="cls", dim=1536, precision=torch.float16)


@register_encoder("hoptimus0")
def build_hoptimus0(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``hoptimus0[@path]`` → the 1536-d H-optimus-0 encoder from local weights."""
    return build_release(RELEASE, arg, path, device)
