"""Multi-process training helpers: 2 CPU processes in a gloo group (torch.multiprocessing.spawn)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from msrl_model.train import distributed as D

torch.set_num_threads(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args, world: int = 2) -> None:
    """Run ``fn(*args)`` in ``world`` processes joined by :func:`D.setup` through torchrun's variables."""
    mp.spawn(_worker, args=(world, _free_port(), fn, args), nprocs=world, join=True)


def _worker(rank: int, world: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    assert D.setup(torch.device("cpu")) == torch.device("cpu")
    try:
        fn(*args)
    finally:
        D.cleanup()


class _Toy(nn.Module):
    """A per-row 'encoder' (sharded) and a head whose loss couples all rows (replicated)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(2, 2)  # never gets a gradient
        self.rank0_only = nn.Parameter(torch.ones(2))  # gradient on rank 0 only

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        z = self.head(torch.tanh(h))  # (n, 2)
        return torch.logsumexp(z @ z.T / 2, dim=1).mean()  # every row interacts with every row


def _toy(seed: int) -> _Toy:
    torch.manual_seed(seed)
    return _Toy()


def _check_helpers() -> None:
    r, w = D.rank(), D.world_size()
    assert D.is_distributed() and w == 2 and D.is_main() == (r == 0)

    # contiguous exact shares in rank order, empty shares when there are fewer items than ranks
    assert np.concatenate([np.array_split(np.arange(5), w)[q] for q in range(w)]).tolist() == list(range(5))
    assert D.local_part(np.arange(5)).tolist() == ([0, 1, 2] if r == 0 else [3, 4])
    assert D.local_part(np.arange(1)).tolist() == ([0] if r == 0 else [])

    # unequal and zero row counts
    x = torch.arange(6.0).view(3, 2) if r == 0 else torch.tensor([[10.0, 11.0]])
    assert torch.equal(D.all_gather_rows(x), torch.tensor([[0.0, 1], [2, 3], [4, 5], [10, 11]]))
    e = torch.ones(2, 2) if r == 0 else torch.zeros(0, 2)
    assert torch.equal(D.all_gather_rows(e), torch.ones(2, 2))

    # broadcast_module: rank 0's initialisation everywhere
    m = _toy(seed=100 + r)
    D.broadcast_module(m)
    ref = _toy(seed=100)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))

    # sharded encoder + differentiable gather + replicated loss + averaging == one process, full batch
    data = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    single = _toy(seed=0)
    single.loss(single.enc(data)).backward()
    shard = D.local_part(np.arange(5))
    net = _toy(seed=0)
    h = D.all_gather_rows(net.enc(data[torch.as_tensor(shard)]))  # (5, 4)
    loss = net.loss(h) + (net.rank0_only.sum() if r == 0 else 0.0)
    loss.backward()
    D.average_gradients(net.parameters())
    for name in ("enc.weight", "enc.bias", "head.weight", "head.bias"):
        got, want = net.get_parameter(name).grad, single.get_parameter(name).grad
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (name, got, want)
    assert net.unused.weight.grad is None  # no gradient anywhere: stays None (optimizer skips it)
    assert torch.equal(net.rank0_only.grad, torch.full((2,), 0.5))  # zeros on rank 1, then averaged

    # a rank with no rows still takes part in the backward all-reduce
    net.zero_grad(set_to_none=True)
    rows = data[:3] if r == 0 else torch.zeros(0, 3)
    net.loss(D.all_gather_rows(net.enc(rows))).backward()
    D.average_gradients(net.parameters())
    single.zero_grad(set_to_none=True)
    single.loss(single.enc(data[:3])).backward()
    assert torch.allclose(net.enc.weight.grad, single.enc.weight.grad, rtol=1e-5, atol=1e-6)

    D.barrier()


def test_helpers_in_two_processes():
    _spawn(_check_helpers)


def test_single_process_is_identity():
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    assert D.setup(torch.device("cpu")) == torch.device("cpu")  # no torchrun variables: nothing joined
    x = torch.randn(3, 2, requires_grad=True)
    assert D.all_gather_rows(x) is x
    assert D.local_part(np.arange(4)).tolist() == [0, 1, 2, 3]
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    D.average_gradients([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0))


def test_keyed_generator_and_forked_rng():
    a = torch.randperm(50, generator=D.keyed_generator(0, 3, 1, 17))
    assert torch.equal(a, torch.randperm(50, generator=D.keyed_generator(0, 3, 1, 17)))
    assert not torch.equal(a, torch.randperm(50, generator=D.keyed_generator(0, 3, 1, 18)))
    torch.manual_seed(7)
    state = torch.get_rng_state()
    with D.forked_rng(1, 2):
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream did not move
    with D.forked_rng(1, 2):
        assert torch.equal(torch.rand(4), inside)


@pytest.mark.parametrize("var", ["RANK", "MASTER_PORT"])
def test_setup_needs_every_torchrun_variable(monkeypatch, var):
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    env.pop(var)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError, match=var):
        D.setup(torch.device("cpu"))
