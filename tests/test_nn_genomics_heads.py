"""Genomics encoder, Inductor, pathway scores, task heads and the model configuration."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from msrl_model.nn.config import ConfigError, MSRLConfig
from msrl_model.nn.genomics import (
    SNN, GenomicsEncoder, Inductor, PathwayDecoder, SNNBlock, gather_groups, pathway_scores,
)
from msrl_model.nn.heads import ClassificationHead, SurvivalHead, survival_from_logits

GROUPS = [[0, 1, 2], [2, 3, 4, 5, 6], [7], [1, 8, 9, 0]]  # overlapping, different sizes


# ---- genomics -------------------------------------------------------------------------------------
def test_genomics_encoder_varying_group_sizes_packed_and_list_agree():
    torch.manual_seed(0)
    enc = GenomicsEncoder([len(g) for g in GROUPS], d=8, layers=2, dropout=0.25).eval()
    expr = torch.randn(5, 10)
    packed = gather_groups(expr, GROUPS)
    assert packed.shape == (5, sum(len(g) for g in GROUPS))
    g, per_group = enc(packed)
    assert g.shape == (5, 8) and per_group.shape == (5, 4, 8)
    assert torch.allclose(g, per_group.mean(1))
    g2, _ = enc([expr[:, idx] for idx in GROUPS])
    assert torch.allclose(g, g2)
    # group i's embedding depends only on its own genes
    expr2 = expr.clone()
    expr2[:, 7] += 5.0  # only in group 2
    _, per_group2 = enc(gather_groups(expr2, GROUPS))
    changed = (per_group2 - per_group).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [False, False, True, False]


def test_genomics_encoder_rejects_wrong_input():
    enc = GenomicsEncoder([2, 3], d=4)
    with pytest.raises(ValueError):
        enc(torch.randn(2, 6))
    with pytest.raises(ValueError):
        enc([torch.randn(2, 2)])


def test_snn_block_lecun_init_and_self_normalising():
    torch.manual_seed(0)
    block = SNNBlock(400, 300, dropout=0.0)
    w = block.linear.weight
    assert block.linear.bias.abs().max() == 0
    assert w.std().item() == pytest.approx(1 / math.sqrt(400), rel=0.05)
    assert isinstance(block.dropout, torch.nn.AlphaDropout)
    snn = SNN(400, 300, layers=3, dropout=0.25)
    assert len(snn) == 3 and snn[1].linear.in_features == 300
    with pytest.raises(ValueError):
        SNN(4, 4, layers=0)


def test_inductor_and_decoder_shapes_and_from_config():
    cfg = MSRLConfig.tiny(group_sizes=(3, 5, 1, 4))
    ind = Inductor.from_config(cfg)
    assert ind(torch.randn(6, cfg.d)).shape == (6, cfg.d)
    enc = GenomicsEncoder.from_config(cfg)
    assert enc.n_groups == cfg.n_groups and enc.group_sizes == cfg.group_sizes
    dec = PathwayDecoder(cfg.fused_dim, cfg.n_groups)
    assert dec(torch.randn(6, cfg.fused_dim)).shape == (6, cfg.n_groups)


def test_reset_parameters_same_seed_same_weights():
    for module in (GenomicsEncoder([3, 2], d=6), Inductor(6), PathwayDecoder(6, 2), SurvivalHead(6), ClassificationHead(6, 3)):
        torch.manual_seed(5)
        module.reset_parameters()
        first = {k: v.clone() for k, v in module.state_dict().items()}
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(3.0).add_(1.0)
        torch.manual_seed(5)
        module.reset_parameters()
        for k, v in module.state_dict().items():
            assert torch.equal(v, first[k]), (type(module).__name__, k)


def test_pathway_scores_mean_of_group_genes():
    g = torch.Generator().manual_seed(0)
    expr = torch.randn(3, 10, generator=g)
    scores = pathway_scores(expr, GROUPS)
    assert scores.shape == (3, 4)
    for i, idx in enumerate(GROUPS):
        assert torch.allclose(scores[:, i], expr[:, idx].mean(1), atol=1e-6)
    with pytest.raises(ValueError):
        pathway_scores(expr, [[0, 10]])
    with pytest.raises(ValueError):
        pathway_scores(expr, [[]])


# ---- heads ----------------------------------------------------------------------------------------
def test_survival_from_logits_matches_definition():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0], [-3.0, -3.0, -3.0, -3.0]])
    out = survival_from_logits(logits)
    h = torch.sigmoid(logits)
    assert torch.allclose(out.hazards, h)
    assert torch.allclose(out.survival, torch.cumprod(1 - h, dim=1), atol=1e-6)
    assert torch.allclose(out.risk, -torch.cumprod(1 - h, dim=1).sum(1), atol=1e-6)
    assert (out.survival.diff(dim=1) <= 0).all()  # S non-increasing
    assert out.risk[0] > out.risk[1]  # higher hazards -> higher risk


def test_survival_head_risk_ordering_and_predict():
    head = SurvivalHead(3, n_bins=4)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.weight[:, 0] = 1.0  # feature 0 raises every hazard
        head.linear.bias.zero_()
    z = torch.tensor([[-2.0, 0, 0], [0.0, 0, 0], [2.0, 0, 0]])
    pred = head.predict(z)
    assert head(z).shape == (3, 4)
    assert pred.risk[0] < pred.risk[1] < pred.risk[2]
    assert (pred.survival.diff(dim=1) <= 0).all() and ((pred.survival > 0) & (pred.survival < 1)).all()


def test_classification_head_probs():
    head = ClassificationHead(5, 3)
    p = head.predict_proba(torch.randn(4, 5))
    assert p.shape == (4, 3) and torch.allclose(p.sum(1), torch.ones(4)) and (p > 0).all()
    with pytest.raises(ValueError):
        ClassificationHead(5, 1)


# ---- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", [MSRLConfig.paper, MSRLConfig.demo, MSRLConfig.tiny])
def test_config_toml_round_trip(preset, tmp_path):
    cfg = preset(group_sizes=(200, 31, 7))
    path = cfg.to_toml(tmp_path / "model.toml")
    assert MSRLConfig.from_toml(path) == cfg


def test_config_paper_values():
    cfg = MSRLConfig.paper()
    assert (cfg.patch_dim, cfg.d, cfg.gsl_layers, cfg.k, cfg.tau, cfg.gcn_layers, cfg.gcn_out) == (1536, 768, 2, 12, 0.2, 3, 256)
    assert (cfg.ema_momentum, cfg.n_bins, cfg.fused_dim) == (0.99, 4, 1536)
    demo = MSRLConfig.demo()
    assert (demo.d, demo.slide_heads, demo.slide_layers, demo.max_patches_train) == (128, 4, 2, 512)
    assert MSRLConfig.demo(d=64).d == 64 and MSRLConfig.tiny().d < demo.d


def test_config_partial_toml_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("d = 64\nslide_heads = 4\ngroup_sizes = [3, 4]\ntau = 1\n")
    cfg = MSRLConfig.from_toml(path)
    assert cfg == dataclasses.replace(MSRLConfig(), d=64, slide_heads=4, group_sizes=(3, 4), tau=1.0)
    path.write_text("dd = 64\n")
    with pytest.raises(ConfigError, match="unknown"):
        MSRLConfig.from_toml(path)
    path.write_text("d = 'big'\n")
    with pytest.raises(ConfigError, match="must be int"):
        MSRLConfig.from_toml(path)
    path.write_text("d = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        MSRLConfig.from_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        MSRLConfig.from_toml(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="divisible"):
        MSRLConfig(d=100, slide_heads=8)
    with pytest.raises(ConfigError, match="gene group"):
        MSRLConfig(group_sizes=(3, 0))
