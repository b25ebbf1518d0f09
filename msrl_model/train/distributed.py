r"""Multi-process training (``torchrun``): process group, row gathering, gradient averaging, keyed RNG.

``torchrun --nproc_per_node W -m msrl_model.train ...`` starts W processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`setup` joins them into
one process group (gloo on CPU, NCCL on CUDA, one GPU per process: ``cuda:LOCAL_RANK``). Without
those variables (or with ``WORLD_SIZE=1``) every function here is a no-op or the identity, so the
single-process path is the same code.

**Design: sharded encoders, replicated graph step.** MSRL's expensive part is the slide encoder
over patch bags; its graph step (GSL over [buffer; batch], GCNs, InfoNCE over the batch) couples
every case of a batch with every other. So each rank encodes a contiguous share of the *global*
batch (:func:`local_part`), :func:`all_gather_rows` concatenates the shares in rank order (= the
global batch order) with a differentiable gather, and every rank then runs the graph step on the
whole batch, identically. Gradients are averaged with :func:`average_gradients`:

.. math::
    \frac{\partial\mathcal L}{\partial\theta_{enc}} = \frac1W\sum_r\ \sum_q
        \frac{\partial \mathcal L_q}{\partial h_r}\frac{\partial h_r}{\partial\theta_{enc}}
    = \sum_r \frac{\partial\mathcal L}{\partial h_r}\frac{\partial h_r}{\partial\theta_{enc}},\qquad
    \frac{\partial\mathcal L}{\partial\theta_{graph}} = \frac1W\sum_q\frac{\partial\mathcal L_q}{\partial\theta_{graph}}

(the backward of the gather sums the W ranks' — equal — row gradients, :math:`\mathcal L_q = \mathcal L`),
which is the single-process gradient of the same global batch up to float rounding (sums in
another order). Adam magnifies that rounding only where the true gradient is exactly zero — the
attention key bias (softmax is shift-invariant), which wanders on rounding noise in one process
too. Averaging explicitly after
``backward()`` (instead of wrapping the network in ``DistributedDataParallel``) keeps every
collective in one deterministic order on every rank: a training step is not one ``forward`` call
(online and EMA target branches, buffer, several methods), and the gather's all-reduce in backward
would race DDP's bucket all-reduces on the same process group.

**Randomness independent of the sharding.** Per-case randomness (patch subsets, mixup shares) comes
from :func:`keyed_generator` ``(seed, ..., case)``, never from a stream consumed in rank-dependent
order; dropout inside a rank's share runs under :func:`forked_rng` so that the global RNG, which
the replicated graph step draws from, stays identical on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn


# How long a collective waits for the other ranks before failing: rank 0 alone writes a preset's
# cohort (the demo preset renders slides and extracts their features) while the others wait.
GROUP_TIMEOUT = timedelta(hours=3)


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group if launched by it; returns this process's device.

    Args:
        device: the requested device; ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun.
    """
    if _env_world_size() <= 1 or is_distributed():
        return device
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE is set but {name} is not; launch with torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            timeout=GROUP_TIMEOUT)
    return device


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the one process that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_part(items: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of ``items`` (``np.array_split`` into world-size parts, rank order).

    The shares partition ``items`` exactly (sizes differ by at most one, a share may be empty when
    there are fewer items than ranks): no case is repeated, unlike ``DistributedSampler``'s wrap-around
    padding, which would weight some cases twice and break the equality with one process.
    """
    return np.array_split(np.asarray(items), world_size())[rank()]


def _gather(x: Tensor) -> tuple[Tensor, list[int]]:
    """(rows of every rank concatenated in rank order, row count of each rank); pads to the largest."""
    w = dist.get_world_size()
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    counts = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(counts, n)
    sizes = [int(c.item()) for c in counts]
    padded = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))]).contiguous()  # (max n_r, ...)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes  # (Σ n_r, ...)


class _GatherRows(torch.autograd.Function):
    """Differentiable :func:`_gather`; backward sums the ranks' row gradients and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out, ctx.sizes = _gather(x)
        ctx.rank = dist.get_rank()
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss reads every rank's rows
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]]


def all_gather_rows(x: Tensor) -> Tensor:
    """Rows of every rank concatenated in rank order: (Σ_r n_r, ...) from this rank's (n_r, ...).

    Row counts may differ between ranks (zero included); trailing dimensions and dtype must agree.
    The gather is differentiable when ``x`` requires grad: the gradient reaching this rank's rows is
    the *sum* over ranks of their losses' gradients, so with :func:`average_gradients` the step
    follows the mean of the ranks' losses (the single-process gradient when every rank computes the
    same loss). When ``x`` requires grad on one rank it must on all (the backward all-reduce is
    collective). Identity without a process group.
    """
    if not is_distributed():
        return x
    if x.requires_grad:
        return _GatherRows.apply(x)
    return _gather(x)[0]


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op in a single process)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks (one flattened all-reduce after ``backward()``).

    A parameter without a gradient on some ranks but not others gets zeros there first; one without
    a gradient anywhere keeps ``grad = None`` (so the optimizer skips it, as in one process).
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not live:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in live])  # (Σ numel,)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in live:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def key_seed(*key: int) -> int:
    """A 64-bit seed from a tuple of non-negative integers (``numpy.random.SeedSequence``)."""
    hi, lo = np.random.SeedSequence([int(k) for k in key]).generate_state(2)  # two uint32
    return (int(hi) << 32) | int(lo)


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by ``key`` (e.g. ``(seed, epoch, view, case)``): the same draws for a
    case whichever rank handles it and in whatever order."""
    return torch.Generator().manual_seed(key_seed(*key))


@contextmanager
def forked_rng(*key: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block on a global RNG seeded by ``key`` and restore the previous state afterwards
    (CPU, and ``device`` when it is a GPU): dropout in a rank's share of a batch does not advance the
    global stream the replicated part of the step draws from."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        seed = key_seed(*key)
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


__all__ = ["all_gather_rows", "average_gradients", "barrier", "broadcast_module", "cleanup", "forked_rng",
           "is_distributed", "is_main", "key_seed", "keyed_generator", "local_part", "rank", "setup",
           "world_size"]
