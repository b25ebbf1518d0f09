"""``uni_v1``: UNI (Chen et al., Nature Medicine 2024), a ViT-L/16 DINOv2-trained on 100 M H&E tiles.

Sources: the model card https://huggingface.co/MahmoodLab/UNI and TRIDENT's ``UNIInferenceEncoder``
(mahmoodlab/TRIDENT ``trident/patch_encoder_models/load.py``):

* architecture: ``timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16,
  init_values=1e-5, num_classes=0, dynamic_img_size=True)``; the checkpoint ``pytorch_model.bin`` is that
  model's state dict (TRIDENT loads it with ``strict=True``);
* preprocessing: ``Resize(224)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize((0.485, 0.456, 0.406),
  (0.229, 0.224, 0.225))`` (torchvision's default bilinear resize);
* output: the pooled class token, 1024-d; precision float16 (TRIDENT).
"""

from __future__ import annotations

import torch

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.encoders.release import IMAGENET_MEAN, IMAGENET_STD, Release, build_release

RELEASE = Release(
    name="uni_v1", hf_repo="MahmoodLab/UNI", weights_file="pytorch_model.bin",
    size_text="about 1.2 GB, 303 M parameters in float32",
    arch="vit_large_patch16_224",
    model_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
    resize=224, crop=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    output="cls", dim=1024, precision=torch.float16)


@register_encoder("uni_v1")
def build_uni_v1(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``uni_v1[@path]`` → the 1024-d UNI encoder from local weights."""
    return build_release(RELEASE, arg, path, device)
