"""``gigapath``: the Prov-GigaPath tile encoder (Xu et al., Nature 2024), a ViT-g/16.

Sources: the model card https://huggingface.co/prov-gigapath/prov-gigapath (its ``config.json``
``model_args``), TRIDENT's ``GigaPathInferenceEncoder`` (mahmoodlab/TRIDENT
``trident/patch_encoder_models/load.py``) and prov-gigapath/prov-gigapath ``gigapath/pipeline.py``:

* architecture: ``timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=224,
  in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5,
  mlp_ratio=5.33334, num_classes=0)`` (patch 16 overrides the architecture's 14); ``pytorch_model.bin``
  is its state dict;
* preprocessing: ``Resize(256, interpolation=BICUBIC)``, ``CenterCrop(224)``, ImageNet mean/std
  (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), on 256² tiles at 0.5 µm/px;
* output: the class token, 1536-d; precision float16 (the pipeline's ``torch.autocast(dtype=torch.float16)``
  for the tile encoder; TRIDENT runs it in float32).
"""

from __future__ import annotations

import torch

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.encoders.release import IMAGENET_MEAN, IMAGENET_STD, Release, build_release

RELEASE = Release(
    name="gigapath", hf_repo="prov-gigapath/prov-gigapath", weights_file="pytorch_model.bin",
    size_text="about 4.5 GB, 1.1 G parameters in float32",
    arch="vit_giant_patch14_dinov2",
    model_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                  "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
    resize=256, crop=224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    output="cls", dim=1536, precision=torch.float16)


@register_encoder("gigapath")
def build_gigapath(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``gigapath[@path]`` → the 1536-d Prov-GigaPath tile encoder from local weights."""
    return build_release(RELEASE, arg, path, device)
