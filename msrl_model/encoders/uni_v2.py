"""``uni_v2``: UNI2-h (MahmoodLab), a ViT-H/14 with 8 register tokens and SwiGLU MLPs.

Sources: the model card https://huggingface.co/MahmoodLab/UNI2-h and TRIDENT's ``UNIv2InferenceEncoder``
(mahmoodlab/TRIDENT ``trident/patch_encoder_models/load.py``):

* architecture: ``timm.create_model("vit_giant_patch14_224", pretrained=False, img_size=224,
  patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2,
  num_classes=0, no_embed_class=True, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU,
  reg_tokens=8, dynamic_img_size=True)``; ``pytorch_model.bin`` is its state dict (``strict=True``);
* preprocessing: ``Resize(224)``, ``CenterCrop(224)``, ImageNet mean/std (0.485, 0.456, 0.406) /
  (0.229, 0.224, 0.225);
* output: the pooled class token, 1536-d; precision bfloat16 (TRIDENT).
"""

from __future__ import annotations

import torch

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.encoders.release import IMAGENET_MEAN, IMAGENET_STD, Release, build_release

RELEASE = Release(
    name="uni_v2", hf_repo="MahmoodLab/UNI2-h", weights_file="pytorch_model.bin",
    size_text="about 2.7 GB, 681 M parameters in float32",
    arch="vit_giant_patch14_224",
    model_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                  "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                  "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU", "reg_tokens": 8, "dynamic_img_size": True},
    resize=224, crop=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    output="cls", dim=1536, precision=torch.bfloat16)


@register_encoder("uni_v2")
def build_uni_v2(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``uni_v2[@path]`` → the 1536-d UNI2-h encoder from local weights."""
    return build_release(RELEASE, arg, path, device)
