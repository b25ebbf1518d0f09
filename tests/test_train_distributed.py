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


# ---------------------------------------------------------------------------------------------------
# a tiny pre-training + fine-tuning: 2 processes == 1 process
# ---------------------------------------------------------------------------------------------------
def _tiny_run(root, out, ckpt) -> None:
    """Pre-train + fine-tune on a tiny synthetic cohort; rank 0 writes every weight to ``out``."""
    from safetensors.torch import save_file

    from msrl_model.nn.config import MSRLConfig
    from msrl_model.progress import drive
    from msrl_model.cohort import load_cohort
    from msrl_model.train.data import fold_genomics, load_bags, task_targets
    from msrl_model.train.finetune import finetune_job
    from msrl_model.train.settings import TrainSettings
    from msrl_model.train.pretrain import pretrain_job

    cohort = load_cohort(root)
    bags = drive(load_bags(cohort), show=False)
    # slide dropout 0 (its masks depend on the split); SNN / GCN dropout on: they run replicated
    cfg = MSRLConfig.tiny(patch_dim=8, max_patches_train=10, pretrain_epochs=2, finetune_epochs=2,
                          warmup_epochs=1, batch_size=6, snn_dropout=0.1, head_dropout=0.1,
                          group_sizes=tuple(len(g) for g in cohort.gene_groups))
    settings = TrainSettings(pretrain_graph_cases=7, anchor_every=1, encode_chunk=4)  # 2 graph steps / epoch
    train = np.arange(14)
    fg = fold_genomics(cohort, train)
    pre = drive(pretrain_job(cfg, bags, fg.packed, train, settings=settings, seed=3), show=False)
    tt = task_targets(cohort, "survival", train, cfg.n_bins)
    res = drive(finetune_job(cfg, tt.spec, bags, fg.packed, fg.pathways, tt.y, tt.censorship, train,
                             pretrained=pre, settings=settings, seed=3, checkpoint_dir=ckpt), show=False)
    if D.is_main():
        tensors = {f"pre.{k}": v for k, v in pre.state_dict().items()}
        tensors |= {f"online.{k}": v for k, v in res.online.state_dict().items()}
        tensors |= {f"target.{k}": v for k, v in res.target.state_dict().items()}
        tensors["buffer"] = res.buffer
        save_file({k: v.contiguous() for k, v in tensors.items()}, out)


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from msrl_model.synth.cohort import make_synth_cohort

    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=16, n_projects=2, patches=(8, 14), feature_dim=8, seed=2)
    return root


def test_two_processes_train_the_same_model_as_one(tiny_cohort, tmp_path):
    from safetensors.torch import load_file

    _tiny_run(tiny_cohort, tmp_path / "one.safetensors", tmp_path / "ckpt1")
    _spawn(_tiny_run, tiny_cohort, tmp_path / "two.safetensors", tmp_path / "ckpt2")
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        a, b = one[name], two[name]
        if name.endswith("attn.qkv.bias"):
            # the key bias has an exactly-zero gradient (softmax is shift-invariant per query): Adam
            # turns its rounding noise into full steps, so it is compared without its key third
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        assert torch.allclose(b, a, rtol=1e-4, atol=1e-5), name
    # the FIFO buffer of the last checkpoint (written by rank 0 only): same rows, same owners
    s1, s2 = load_file(tmp_path / "ckpt1" / "state.safetensors"), load_file(tmp_path / "ckpt2" / "state.safetensors")
    assert torch.equal(s2["buffer.owners"], s1["buffer.owners"])
    assert torch.allclose(s2["buffer.feats"], s1["buffer.feats"], rtol=1e-4, atol=1e-5)
    # fine-tuning moved the weights: the runs are compared after real steps
    name = "slide_encoder.patch_embed.weight"
    assert not torch.allclose(one[f"online.{name}"], one[f"pre.{name}"], atol=1e-4)


@pytest.mark.heavy
def test_torchrun_cli_matches_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 -m msrl_model.train`` writes the outputs once, with the same CV numbers."""
    import subprocess
    import sys

    args = ["-m", "msrl_model.train", "--preset", "tiny", "--folds", "2", "--tasks", "survival",
            "--variants", "msrl,msrl_multi,abmil", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(_free_port()), *args, "--out", str(tmp_path / "two")],
                   check=True, env=env, timeout=600)
    one = (tmp_path / "one" / "cv_results.csv").read_text().splitlines()
    two = (tmp_path / "two" / "cv_results.csv").read_text().splitlines()
    assert len(one) == len(two) > 1
    for a, b in zip(one[1:], two[1:]):
        *key_a, va = a.split(",")
        *key_b, vb = b.split(",")
        assert key_a == key_b and abs(float(va) - float(vb)) < 1e-3, (a, b)
    assert (tmp_path / "two" / "bundle" / "manifest.json").exists()
    assert (tmp_path / "two" / "train.log").read_text().count("processes 2") == 1  # one writer
