"""``virchow2``: Virchow 2 (Paige, Zimmermann et al. 2024), a ViT-H/14 with 4 register tokens and SwiGLU MLPs.

Sources: the model card https://huggingface.co/paige-ai/Virchow2 and TRIDENT's
``Virchow2InferenceEncoder`` (mahmoodlab/TRIDENT ``trident/patch_encoder_models/load.py``):

* architecture: ``timm.create_model("vit_huge_patch14_224", img_size=224, init_values=1e-5,
  num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True,
  mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)``; ``pytorch_model.bin`` is its state dict;
* preprocessing: ``Resize(224, interpolation=BICUBIC)`` (no crop), ImageNet mean/std
  (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) — the card's ``resolve_data_config`` gives the same;
* output: the card's embedding ``cat([class_token, patch_tokens.mean(1)])`` with ``class_token =
  output[:, 0]`` and ``patch_tokens = output[:, 5:]`` (tokens 1-4 are the registers, excluded):
  1280 + 1280 = 2560-d; precision float16 (the card's ``torch.autocast(dtype=torch.float16)``).
"""

from __future__ import annotations

import torch

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.encoders.release import IMAGENET_MEAN, IMAGENET_STD, Release, build_release

RELEASE = Release(
    name="virchow2", hf_repo="paige-ai/Virchow2", weights_file="pytorch_model.bin",
    size_text="about 2.5 GB, 632 M parameters in float32",
    arch="vit_huge_patch14_224",
    model_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
                  "global_pool": "", "dynamic_img_size": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
    resize=224, crop=224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    output="cls+mean", prefix_tokens=5, dim=2560, precision=torch.float16)


@register_encoder("virchow2")
def build_virchow2(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``virchow2[@path]`` → the 2560-d Virchow 2 encoder from local weights."""
    return build_release(RELEASE, arg, path, device)
