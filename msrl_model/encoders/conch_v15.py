"""``conch_v15``: CONCH v1.5 (Mahmood Lab, the patch encoder of TITAN, Ding et al. 2024), its ViT-L/16 vision tower.

Sources: TRIDENT's ``Conchv15InferenceEncoder`` (mahmoodlab/TRIDENT ``trident/patch_encoder_models/load.py``:
``create_model_from_pretrained(checkpoint_path=…, img_size=448)``, precision ``torch.float16``) and the
tower it builds, ``CONCHVisionTower`` in ``trident/patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py``
(the TITAN repo's ``conch_v1_5`` vision tower):

* trunk: ``vit_large(init_values=1.0)`` = ``VisionTransformer(patch_size=16, embed_dim=1024, depth=24,
  num_heads=16, mlp_ratio=4, qkv_bias=True, init_values=1.0)`` at its default ``img_size=224``, LayerNorm
  eps 1e-6, class token, no registers — module for module timm's ``vit_large_patch16_224`` with
  ``init_values=1.0, num_classes=0`` (same state-dict keys); its ``forward_features`` (all tokens after the
  final norm) is what the head reads;
* position embeddings: the checkpoint's ``trunk.pos_embed`` is resampled at load to the 14 × 14 grid when
  it has another size (``resample_abs_pos_embed``, bilinear, no antialias); at 448 px they are
  interpolated DINO-style on every forward (``interpolate_pos_encoding``: bicubic, ``scale_factor =
  (28 + 0.1) / 14``) — :meth:`ConchV15.pos_embed_for` does exactly that;
* head: ``attn_pool_contrast = AttentionalPooler(d_model=768, context_dim=1024, n_head=8, n_queries=1)``
  (LayerNorm ``ln_k``/``ln_q``, bias-free ``to_q``/``to_kv``/``to_out``, max-subtracted softmax), then
  ``ln_contrast = LayerNorm(768)``: the 768-d image embedding;
* preprocessing: ``Resize(448, BILINEAR)``, ``CenterCrop(448)``, ``ToTensor()``, ImageNet mean/std
  (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225);
* checkpoint: ``pytorch_model_vision.bin`` of https://huggingface.co/MahmoodLab/conchv1_5, that tower's
  state dict (``trunk.*``, ``attn_pool_contrast.*``, ``ln_contrast.*``), loaded with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.encoders.release import (IMAGENET_MEAN, IMAGENET_STD, Release, create_network, reject_arg,
                                         release_encoder, release_label)
from msrl_model.encoders.timm_local import import_timm, load_state_dict, load_weights
from msrl_model.weights import resolve_checkpoint

RELEASE = Release(
    name="conch_v15", hf_repo="MahmoodLab/conchv1_5", weights_file="pytorch_model_vision.bin",
    size_text="about 1.3 GB: a ViT-L/16 vision tower, 0.31 G parameters in float32",
    arch="vit_large_patch16_224",
    model_kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                  "mlp_ratio": 4, "qkv_bias": True, "init_values": 1.0, "num_classes": 0},
    resize=448, crop=448, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    output="attn_pool_contrast", dim=768, precision=torch.float16)
POOL_HEADS = 8  # AttentionalPooler(n_head=8)


class AttentionalPooler(nn.Module):
    """CONCH's contrastive attentional pooler with one query: (B, N, C) tokens → (B, d_model)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, d_model))
        self.heads = n_head
        self.scale = (d_model // n_head) ** -0.5
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(self.ln_q(self.query)).view(1, self.heads, 1, -1).expand(b, -1, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        sim = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, -1))


class ConchV15(nn.Module):
    """The CONCH v1.5 vision tower: timm ViT trunk, DINO-style position interpolation, attentional pooling."""

    def __init__(self, trunk: nn.Module, d_model: int = 768) -> None:
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(d_model, trunk.embed_dim, POOL_HEADS)
        self.ln_contrast = nn.LayerNorm(d_model)

    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h × w image, as ``interpolate_pos_encoding`` computes them."""
        pos = self.trunk.pos_embed
        n = pos.shape[1] - 1
        patch = self.trunk.patch_embed.patch_size[0]
        if h // patch * (w // patch) == n and w == h:
            return pos
        side = int(math.sqrt(n))
        h0, w0 = h // patch + 0.1, w // patch + 0.1  # the +0.1 of facebookresearch/dino#8, as the source does
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, scale_factor=(h0 / side, w0 / side), mode="bicubic")
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        tokens = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = t.norm(t.blocks(t.norm_pre(t.pos_drop(tokens + self.pos_embed_for(x.shape[-2], x.shape[-1])))))
        return self.ln_contrast(self.attn_pool_contrast(tokens))


def create_conch(release: Release) -> ConchV15:
    """The tower of ``release`` with random weights (``release.dim`` is the pooler's width)."""
    return ConchV15(create_network(release), d_model=release.dim)


def fit_pos_embed(state: dict[str, torch.Tensor], model: ConchV15) -> dict[str, torch.Tensor]:
    """``state`` with ``trunk.pos_embed`` resampled to the trunk's grid when its size differs (bilinear,
    no antialias: the source's ``resize_pos_embed``)."""
    pos = state.get("trunk.pos_embed")
    if pos is None or pos.shape == model.trunk.pos_embed.shape:
        return state
    timm = import_timm(RELEASE.name)
    resized = timm.layers.resample_abs_pos_embed(pos, new_size=list(model.trunk.patch_embed.grid_size),
                                                 num_prefix_tokens=1, interpolation="bilinear", antialias=False)
    return {**state, "trunk.pos_embed": resized}


@register_encoder("conch_v15")
def build_conch_v15(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """``conch_v15[@path]`` → the 768-d CONCH v1.5 encoder from local weights."""
    reject_arg(RELEASE, arg)
    ckpt = resolve_checkpoint(RELEASE.name, path, RELEASE.hf_repo, RELEASE.weights_file, RELEASE.size_text)
    model = create_conch(RELEASE)
    load_weights(model, fit_pos_embed(load_state_dict(ckpt), model), ckpt, release_label(RELEASE))
    return release_encoder(RELEASE, model, ckpt, device)
