"""SlideEncoder: shapes, heat-map normalisation, padding and permutation invariance, positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.slide_encoder import SlideEncoder, grid_positions, pad_bags, sincos_2d, subsample_patches

PATCH_DIM, D = 12, 16


def make_encoder(seed: int = 0, layers: int = 2) -> SlideEncoder:
    torch.manual_seed(seed)
    return SlideEncoder(PATCH_DIM, D, layers=layers, heads=4, dropout=0.0).eval()


def make_bag(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, PATCH_DIM, generator=g), torch.randint(0, 40, (n, 2), generator=g)


def test_shapes_and_attention_rows_sum_to_one():
    enc = make_encoder()
    x, pos = make_bag(30, 0)
    h, attn = enc(x[None], pos[None])
    assert h.shape == (1, D) and attn.shape == (1, 30)
    assert torch.allclose(attn.sum(-1), torch.ones(1))
    assert (attn >= 0).all()


def test_padding_mask_zero_attention_and_invariance():
    enc = make_encoder()
    bags = [make_bag(n, s) for n, s in [(7, 1), (19, 2), (3, 3)]]
    x, pos, mask = pad_bags([b[0] for b in bags], [b[1] for b in bags])
    # junk in the padded slots must not matter
    x = torch.where(mask[..., None], x, torch.full_like(x, 1e3))
    pos = torch.where(mask[..., None], pos, torch.full_like(pos, 999))
    h, attn = enc(x, pos, mask)
    assert h.shape == (3, D) and attn.shape == (3, 19)
    assert torch.allclose(attn.sum(-1), torch.ones(3), atol=1e-6)
    assert (attn[~mask] == 0).all()
    for i, (xi, pi) in enumerate(bags):
        hi, ai = enc(xi[None], pi[None])
        assert torch.allclose(h[i], hi[0], atol=1e-5)
        assert torch.allclose(attn[i, : xi.shape[0]], ai[0], atol=1e-6)


def test_permutation_of_patches_with_coords_leaves_h_unchanged():
    enc = make_encoder(seed=1)
    x, pos = make_bag(25, 4)
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(0))
    h, attn = enc(x[None], pos[None])
    hp, attnp = enc(x[perm][None], pos[perm][None])
    assert torch.allclose(h, hp, atol=1e-5)
    assert torch.allclose(attn[0, perm], attnp[0], atol=1e-6)


def test_positions_matter():
    enc = make_encoder(seed=2)
    x, pos = make_bag(10, 5)
    h, _ = enc(x[None], pos[None])
    h_moved, _ = enc(x[None], pos.flip(0)[None])  # same features, positions swapped between patches
    assert not torch.allclose(h, h_moved, atol=1e-4)


def test_gradients_flow_and_dropout_in_training():
    torch.manual_seed(0)
    enc = SlideEncoder(PATCH_DIM, D, layers=1, heads=2, dropout=0.5).train()
    x, pos = make_bag(20, 6)
    x.requires_grad_(True)
    h1, _ = enc(x[None], pos[None])
    h2, _ = enc(x[None], pos[None])
    assert not torch.allclose(h1, h2)  # dropout active
    (h1 * torch.arange(D)).sum().backward()  # (a plain sum of a LayerNorm output has zero gradient)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert enc.cls_token.grad is not None


def test_empty_bag_rejected():
    enc = make_encoder()
    x, pos = make_bag(4, 0)
    mask = torch.zeros(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError):
        enc(x[None], pos[None], mask)


def test_reset_parameters_reproducible():
    enc = make_encoder(seed=3)
    torch.manual_seed(11)
    enc.reset_parameters()
    first = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    torch.manual_seed(11)
    enc.reset_parameters()
    for k, v in enc.state_dict().items():
        assert torch.equal(v, first[k]), k
    assert enc.norm.weight.eq(1).all() and enc.blocks[0].attn.qkv.bias.eq(0).all()


def test_from_config():
    cfg = MSRLConfig.tiny()
    enc = SlideEncoder.from_config(cfg)
    assert enc.patch_embed.in_features == cfg.patch_dim and len(enc.blocks) == cfg.slide_layers
    h, attn = enc.eval()(torch.randn(2, 5, cfg.patch_dim), torch.zeros(2, 5, 2, dtype=torch.long))
    assert h.shape == (2, cfg.d) and attn.shape == (2, 5)


def test_grid_positions_and_sincos():
    coords = np.array([[0, 0], [512, 256], [256, 1024]])  # (x0, y0) level-0 px
    grid = grid_positions(coords, 256)
    assert grid.tolist() == [[0, 0], [1, 2], [4, 1]]  # (row, col)
    enc = sincos_2d(grid, 8)
    assert enc.shape == (3, 8)
    # origin: sin = 0, cos = 1 for both axes
    assert torch.allclose(enc[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.float32))
    # row block depends only on the row
    assert torch.allclose(enc[1, :4], sincos_2d(torch.tensor([1, 0]), 8)[:4])
    assert torch.allclose(enc[1, 4:], sincos_2d(torch.tensor([0, 2]), 8)[4:])
    with pytest.raises(ValueError):
        sincos_2d(grid, 6)


def test_subsample_patches():
    g = torch.Generator().manual_seed(0)
    idx = subsample_patches(100, 10, g)
    assert idx.shape == (10,) and idx.unique().numel() == 10 and (idx.diff() > 0).all() and idx.max() < 100
    assert torch.equal(subsample_patches(5, 10), torch.arange(5))
    assert torch.equal(subsample_patches(50, 0), torch.arange(50))


def _dense_reference(enc: SlideEncoder, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense [CLS] transformer (every token attends to every token) with ``enc``'s weights; one bag."""
    import torch.nn.functional as F

    tokens = enc.patch_embed((x - enc.patch_mean) / enc.patch_std) + sincos_2d(pos, enc.d)  # (N, d)
    t = torch.cat([enc.cls_token.reshape(1, -1), tokens])[None]  # (1, N + 1, d)
    weights = None
    for block in enc.blocks:
        a = block.attn
        q, k, v = a.qkv(block.norm1(t)).view(1, t.shape[1], 3, a.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (1, H, N + 1, dh)
        weights = (q[:, :, :1] @ k[:, :, 1:].transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)[:, :, 0]
        t = t + a.proj(out.transpose(1, 2).reshape(t.shape))
        t = t + block.fc2(torch.nn.functional.gelu(block.fc1(block.norm2(t))))
    return enc.norm(t[:, 0]), weights.mean(1)


@pytest.mark.parametrize("n", [1, 5, 40])
def test_bags_within_one_segment_get_exactly_dense_attention(n):
    torch.manual_seed(0)
    enc = SlideEncoder(PATCH_DIM, D, layers=2, heads=4, dropout=0.0, segment=64).eval()
    x, pos = make_bag(n, 7)
    with torch.no_grad():
        h, attn = enc(x[None], pos[None])
        order = torch.argsort(pos[:, 0] * 1000 + pos[:, 1], stable=True)
        h_ref, attn_ref = _dense_reference(enc, x[order], pos[order])
    assert torch.allclose(h, h_ref, atol=1e-5)
    assert torch.allclose(attn[0, order], attn_ref[0], atol=1e-6)


def _union_reference(enc: SlideEncoder, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Brute-force LongNet attention of one bag: per head an explicit count matrix of which keys
    (with multiplicity over branches) each query sees, then weighted dense softmax. Returns h (1, d)."""
    n = x.shape[0]
    order = torch.argsort(pos[:, 0] * 1000 + pos[:, 1], stable=True)
    x, pos = x[order], pos[order]
    heads, w0, rho = enc.heads, enc.segment, enc.dilation_ratio
    counts = torch.zeros(heads, n + 1, n + 1)  # token 0 = CLS
    counts[:, 0, :] = 1  # CLS attends densely
    counts[:, 1:, 0] = 1  # every patch sees its CLS
    i = torch.arange(n)
    j = 0
    while j == 0 or n > w0 * rho ** (j - 1):
        w, r = w0 * rho**j, rho**j
        for hd in range(heads):
            sel = (i % w) % r == hd % r  # the tokens this head keeps in this branch
            same = (i[:, None] // w == i[None, :] // w) & sel[:, None] & sel[None, :]
            counts[hd, 1:, 1:] += same.float()
        j += 1
    t = torch.cat([enc.cls_token.reshape(1, -1),
                   enc.patch_embed((x - enc.patch_mean) / enc.patch_std) + sincos_2d(pos, enc.d)])  # (N + 1, d)
    for block in enc.blocks:
        a = block.attn
        q, k, v = a.qkv(block.norm1(t)).view(n + 1, 3, heads, -1).permute(1, 2, 0, 3)  # 3 x (H, N + 1, dh)
        s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        wts = counts * torch.exp(s - s.max(-1, keepdim=True).values)
        out = (wts / wts.sum(-1, keepdim=True)) @ v  # (H, N + 1, dh)
        t = t + a.proj(out.transpose(0, 1).reshape(n + 1, -1))
        t = t + block.fc2(torch.nn.functional.gelu(block.fc1(block.norm2(t))))
    return enc.norm(t[:1])


@pytest.mark.parametrize("n, segment, ratio", [(9, 4, 2), (37, 4, 2), (70, 8, 3), (130, 4, 4)])
def test_dilated_attention_equals_brute_force_union_of_keys(n, segment, ratio):
    torch.manual_seed(1)
    enc = SlideEncoder(PATCH_DIM, D, layers=2, heads=4, dropout=0.0, segment=segment,
                       dilation_ratio=ratio).eval()
    x, pos = make_bag(n, 8)
    pos = torch.stack([torch.arange(n) // 13, torch.arange(n) % 13], dim=1)[torch.randperm(n)]  # distinct cells
    with torch.no_grad():
        h, attn = enc(x[None], pos[None])
        assert torch.allclose(h, _union_reference(enc, x, pos), atol=1e-5)
    assert torch.allclose(attn.sum(-1), torch.ones(1), atol=1e-6)


def test_long_bags_batched_equal_one_at_a_time_and_order_free():
    torch.manual_seed(2)
    enc = SlideEncoder(PATCH_DIM, D, layers=1, heads=2, dropout=0.0, segment=4, dilation_ratio=2).eval()
    bags = []
    for n, seed in [(50, 1), (9, 2), (23, 3)]:
        x, _ = make_bag(n, seed)
        cells = torch.randperm(400, generator=torch.Generator().manual_seed(seed))[:n]
        bags.append((x, torch.stack([cells // 20, cells % 20], dim=1)))
    x, pos, mask = pad_bags([b[0] for b in bags], [b[1] for b in bags])
    with torch.no_grad():
        h, attn = enc(x, pos, mask)
        for i, (xi, pi) in enumerate(bags):
            perm = torch.randperm(xi.shape[0])
            hi, ai = enc(xi[perm][None], pi[perm][None])
            assert torch.allclose(h[i], hi[0], atol=1e-5)
            assert torch.allclose(attn[i, : xi.shape[0]][perm], ai[0], atol=1e-6)
