"""The assembled MSRL networks: shapes per variant, pre-trained weights carried over, graph forward."""

import pytest
import torch

from msrl_model.nn import MSRLConfig, MSRLNet, PretrainNet, SlideBatch, TaskSpec

SURVIVAL = TaskSpec("survival", "survival", bin_edges=(0.0, 10.0, 20.0, 30.0, float("inf")))
STAGE = TaskSpec("stage", "classification", classes=("I", "II", "III"))


def _batch(sizes=(10, 7)):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, 32, generator=g) for n in sizes]
    coords = [torch.randint(0, 4000, (n, 2), generator=g) for n in sizes]
    return SlideBatch.from_bags(feats, coords, [256] * len(sizes))


@pytest.mark.parametrize("variant, node_dim", [("msrl", 32), ("msrl_h", 16)])
@pytest.mark.parametrize("task", [SURVIVAL, STAGE])
def test_shapes_per_variant(variant, node_dim, task):
    torch.manual_seed(0)
    cfg = MSRLConfig.tiny(group_sizes=(3, 4, 5))
    net = MSRLNet(cfg, task, variant).eval()
    batch = _batch()
    h, attn = net.encode_slides(batch)
    assert h.shape == (2, 16) and attn.shape == (2, 10)
    assert torch.allclose(attn[1, 7:], torch.zeros(3))  # padding gets no attention
    nodes = net.node_features(h)
    assert nodes.shape == (2, node_dim) == (2, net.node_dim)
    z, edge_index, edge_weight = net.graph_forward(nodes, torch.randn(20, node_dim))
    assert z.shape == (2, cfg.gcn_out)
    assert net.head(z).shape == (2, task.n_outputs)
    assert int(edge_index.max()) == 21 and bool((edge_weight > 0).all())


def test_real_genomics_replace_the_inductor_prompt():
    torch.manual_seed(0)
    cfg = MSRLConfig.tiny(group_sizes=(3, 4, 5))
    net = MSRLNet(cfg, SURVIVAL).eval()
    h, _ = net.encode_slides(_batch())
    online = net.node_features(h)
    target = net.node_features(h, torch.randn(2, 12))
    assert torch.equal(online[:, 16:], target[:, 16:])  # the h half is shared
    assert not torch.allclose(online[:, :16], target[:, :16])  # the g half differs


def test_load_pretrained_copies_the_fused_graph_learner():
    torch.manual_seed(0)
    cfg = MSRLConfig.tiny(group_sizes=(3, 4, 5))
    pre = PretrainNet(cfg)
    with torch.no_grad():
        for w in pre.gsl_f.weights:
            w.uniform_(0.5, 1.5)
    net = MSRLNet(cfg, STAGE)
    net.load_pretrained(pre)
    for a, b in zip(net.gsl.weights, pre.gsl_f.weights):
        assert torch.equal(a, b)
    assert torch.equal(net.gcn.convs[0].lin.weight, pre.gcn_f.convs[0].lin.weight)


@pytest.mark.parametrize("slide_encoder", [True, False])
def test_load_pretrained_can_keep_a_fresh_slide_encoder(slide_encoder):
    torch.manual_seed(0)
    cfg = MSRLConfig.tiny(group_sizes=(3, 4, 5))
    pre = PretrainNet(cfg)
    net = MSRLNet(cfg, STAGE)
    fresh = {k: v.clone() for k, v in net.slide_encoder.state_dict().items()}
    net.load_pretrained(pre, slide_encoder=slide_encoder)
    same_as_pre = all(torch.equal(v, pre.slide_encoder.state_dict()[k]) for k, v in net.slide_encoder.state_dict().items())
    same_as_fresh = all(torch.equal(v, fresh[k]) for k, v in net.slide_encoder.state_dict().items())
    assert (same_as_pre, same_as_fresh) == ((True, False) if slide_encoder else (False, True))
    # φ_G and the graph learner come from stage 1 either way
    assert all(torch.equal(v, pre.genomics_encoder.state_dict()[k]) for k, v in net.genomics_encoder.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(net.gsl.weights, pre.gsl_f.weights))


def test_task_spec_round_trip():
    for task in (SURVIVAL, STAGE):
        assert TaskSpec.from_dict(task.to_dict()) == task
