"""GCNLayer: A (X W) + b on a sparse, already normalised adjacency, the same numbers, parameter names and
initialisation as torch_geometric's GCNConv(normalize=False, add_self_loops=False) (bundles load unchanged)."""

from __future__ import annotations

import pytest
import torch

from msrl_model.nn.graph import GCN, GCNLayer

# 4 nodes, self loops and a symmetric weighted graph: 0-1, 1-2, 2-3 (edge_index row 0 source, row 1 target)
EDGES = torch.tensor([[0, 1, 2, 3, 0, 1, 1, 2, 2, 3],
                      [0, 1, 2, 3, 1, 0, 2, 1, 3, 2]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.3, 0.5, 0.25, 0.25, 0.2, 0.2, 0.4, 0.4])


def _dense(n: int = 4) -> torch.Tensor:
    adj = torch.zeros(n, n)
    adj[EDGES[1], EDGES[0]] = WEIGHTS  # A[i, j] = a_ji: row i aggregates its sources j
    return adj


@pytest.mark.parametrize("in_dim, out_dim", [(3, 2), (8, 5), (1, 1)])
def test_layer_is_a_xw_plus_b(in_dim, out_dim):
    torch.manual_seed(0)
    layer = GCNLayer(in_dim, out_dim)
    torch.nn.init.normal_(layer.bias)  # a bias that is not zero, so it is checked too
    x = torch.randn(4, in_dim)
    want = _dense() @ (x @ layer.lin.weight.T) + layer.bias
    torch.testing.assert_close(layer(x, EDGES, WEIGHTS), want)


@pytest.mark.parametrize("in_dim, out_dim", [(3, 2), (16, 4)])
def test_same_as_torch_geometric_gcnconv(in_dim, out_dim):
    nn_conv = pytest.importorskip("torch_geometric.nn")
    conv = nn_conv.GCNConv(in_dim, out_dim, normalize=False, add_self_loops=False)
    layer = GCNLayer(in_dim, out_dim)
    assert set(layer.state_dict()) == set(conv.state_dict())  # the keys bundles were written with
    torch.nn.init.normal_(conv.bias)
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(4, in_dim)
    torch.testing.assert_close(layer(x, EDGES, WEIGHTS), conv(x, EDGES, WEIGHTS))
    torch.manual_seed(3)
    conv.reset_parameters()
    torch.manual_seed(3)
    layer.reset_parameters()
    torch.testing.assert_close(layer.lin.weight, conv.lin.weight, rtol=0, atol=0)  # the same glorot draws
    assert torch.count_nonzero(layer.bias) == 0


def test_gcn_sparse_and_dense_paths_agree():
    torch.manual_seed(1)
    gcn = GCN(6, 5, out_dim=3, layers=3).eval()
    x = torch.randn(4, 6)
    torch.testing.assert_close(gcn(x, EDGES, WEIGHTS), gcn.forward_dense(x, _dense()))
