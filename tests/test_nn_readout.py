"""Patch standardiser buffers (state dict, identity for old weights) and the readout skip."""

import torch

from msrl_model.nn import MSRLConfig, MSRLNet, TaskSpec
from msrl_model.nn.slide_encoder import SlideEncoder
from msrl_model.train.data import Bags

SURVIVAL = TaskSpec("survival", "survival", bin_edges=(0.0, 10.0, 20.0, 30.0, float("inf")))


def test_standardiser_is_applied_and_saved():
    torch.manual_seed(0)
    enc = SlideEncoder(8, 16, layers=1, heads=2, dropout=0.0).eval()
    x, pos = torch.randn(2, 5, 8) * 100 + 7, torch.randint(0, 9, (2, 5, 2))
    mean, std = torch.full((8,), 7.0), torch.full((8,), 100.0)
    enc.set_patch_stats(mean, std)
    h_scaled, _ = enc(x, pos)
    enc.set_patch_stats(torch.zeros(8), torch.ones(8))
    h_plain, _ = enc((x - 7) / 100, pos)
    assert torch.allclose(h_scaled, h_plain, atol=1e-5)
    enc.set_patch_stats(mean, std)
    sd = enc.state_dict()
    assert torch.equal(sd["patch_mean"], mean) and torch.equal(sd["patch_std"], std)


def test_state_dict_without_standardiser_loads_as_identity():
    enc = SlideEncoder(8, 16, layers=1, heads=2)
    enc.set_patch_stats(torch.ones(8), torch.full((8,), 2.0))
    old = {k: v for k, v in enc.state_dict().items() if k not in ("patch_mean", "patch_std")}
    fresh = SlideEncoder(8, 16, layers=1, heads=2)
    fresh.set_patch_stats(torch.ones(8), torch.full((8,), 3.0))
    fresh.load_state_dict(old)  # strict: the missing buffers are filled, not an error
    assert torch.equal(fresh.patch_mean, torch.zeros(8)) and torch.equal(fresh.patch_std, torch.ones(8))


def test_bag_patch_stats_cover_only_the_given_cases():
    bags = Bags.from_tensors([torch.zeros(3, 2), torch.ones(2, 2) * 4], [torch.zeros(3, 2).long(), torch.zeros(2, 2).long()])
    mean, std = bags.patch_stats([1])
    assert torch.equal(mean, torch.full((2,), 4.0)) and torch.equal(std, torch.zeros(2))
    mean, _ = bags.patch_stats([0, 1])
    assert torch.allclose(mean, torch.full((2,), 1.6))


def test_readout_skip_reads_the_node_features():
    torch.manual_seed(0)
    z, nodes = torch.randn(3, 8), torch.randn(3, 32)
    plain = MSRLNet(MSRLConfig.tiny(group_sizes=(3, 4, 5)), SURVIVAL).eval()
    assert plain.skip is None and torch.equal(plain.readout(z, nodes), plain.head(z))
    net = MSRLNet(MSRLConfig.tiny(group_sizes=(3, 4, 5), readout_skip=True), SURVIVAL).eval()
    assert "skip.weight" in net.state_dict()
    assert torch.allclose(net.readout(z, nodes), net.head(z + net.skip(nodes)))
    assert not torch.allclose(net.readout(z, nodes), net.readout(z, nodes + 1))
