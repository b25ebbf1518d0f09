r"""The two-branch machinery of fine-tuning (paper Algorithm 2): the FIFO buffer of node features,
RankMix-style mixup views of the patch bags, the EMA update of the target branch, and the node
features / buffer rows of whole cases. The choices are described in :mod:`msrl_model.train.finetune`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from msrl_model.nn.msrl import MSRLNet, SlideBatch
from msrl_model.nn.slide_encoder import pad_bags
from msrl_model.progress import Job, exhaust
from msrl_model.train import distributed
from msrl_model.train.data import Bags
from msrl_model.train.pretrain import embed_shared_job
from msrl_model.train.settings import TrainSettings


class FifoBuffer:
    """First-in-first-out buffer of node features with the case that produced each row.

    Row 0 is the oldest. :meth:`push` appends rows at the end and drops the oldest so that at most
    ``capacity`` rows remain.
    """

    def __init__(self, feats: Tensor, owners: Tensor, capacity: int) -> None:
        self.feats = feats.detach()  # (M, node_dim)
        self.owners = owners.long().cpu()  # (M,) global case index of each row
        self.capacity = capacity
        self._trim()

    def _trim(self) -> None:
        extra = self.feats.shape[0] - self.capacity
        if extra > 0:
            self.feats, self.owners = self.feats[extra:], self.owners[extra:]

    def push(self, feats: Tensor, owners: Tensor) -> None:
        self.feats = torch.cat([self.feats, feats.detach()])
        self.owners = torch.cat([self.owners, owners.long().cpu()])
        self._trim()

    def without(self, cases: Tensor) -> Tensor:
        """Rows whose owner is not in ``cases`` (the graph of a batch never holds its own entries)."""
        keep = ~torch.isin(self.owners, cases.long().cpu())
        return self.feats[keep.to(self.feats.device)]


def mixup_view(bags: Bags, idx: Sequence[int], max_patches: int, alpha: float, key: tuple[int, ...],
               rows: Sequence[int] | None = None) -> SlideBatch:
    """One RankMix-style view of the bags of ``idx`` (the share and label choice:
    :mod:`msrl_model.train.finetune`); features in the bags' stored dtype (:meth:`Bags.read`).

    Args:
        idx: the cases of the (global) batch; partners are drawn among all of them.
        key: ``(seed, epoch, view)``; the pairing comes from ``(*key, 0, idx[0])``, each case's λ and
            patch subsets from ``(*key, 1, case)``.
        rows: positions in ``idx`` of the cases to build views of (this process's share); None = all.
    """
    idx = [int(i) for i in idx]
    b = len(idx)
    partner = np.random.default_rng(distributed.key_seed(*key, 0, idx[0])).permutation(b) if b > 1 else [0]
    feats, pos = [], []
    for i in range(b) if rows is None else rows:
        case, other = idx[i], idx[partner[i]]
        rng = np.random.default_rng(distributed.key_seed(*key, 1, case))
        lam = rng.beta(alpha, alpha) if alpha > 0 else 1.0
        n_own = int(bags.lengths[case])
        m = min(n_own, max_patches) if max_patches > 0 else n_own
        share = max(lam, 1.0 - lam) if other != case else 1.0
        k_own = max(1, int(round(share * m)))
        k_other = min(m - k_own, int(bags.lengths[other]))
        f, p = bags.read(case, torch.from_numpy(rng.permutation(n_own)[:k_own]))  # only these rows are read
        if k_other > 0:
            f_o, p_o = bags.read(other, torch.from_numpy(rng.permutation(int(bags.lengths[other]))[:k_other]))
            f, p = torch.cat([f, f_o]), torch.cat([p, p_o])
        feats.append(f)
        pos.append(p)
    x, p, mask = pad_bags(feats, pos)
    return SlideBatch(x, p, mask, [int(t.shape[0]) for t in feats])


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    r""":math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_o` for every parameter; buffers copied."""
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


def case_node_features_job(net: MSRLNet, bags: Bags, cases: Sequence[int], genomics: Tensor | None, *,
                           max_patches: int, chunk: int, chunk_patches: int = TrainSettings().chunk_patches,
                           device: torch.device, message: str = "") -> Job[Tensor]:
    """Node features (len(cases), node_dim); real genomics when ``genomics`` is given (rows = cases).
    Every process encodes its share of the cases (:func:`embed_shared_job`: ``Stage.EMBED`` ticks per
    chunk of at most ``chunk`` bags and ``chunk_patches`` padded patches); patch subsets
    (``max_patches``) from the global RNG."""
    h = yield from embed_shared_job(net.slide_encoder, bags, cases, max_patches=max_patches, chunk=chunk,
                                    chunk_patches=chunk_patches, device=device, message=message)
    return net.node_features(h, None if genomics is None else genomics.to(device))


def case_node_features(net: MSRLNet, bags: Bags, cases: Sequence[int], genomics: Tensor | None, *,
                       max_patches: int, chunk: int, chunk_patches: int = TrainSettings().chunk_patches,
                       device: torch.device) -> Tensor:
    """:func:`case_node_features_job` without its ticks."""
    return exhaust(case_node_features_job(net, bags, cases, genomics, max_patches=max_patches, chunk=chunk,
                                          chunk_patches=chunk_patches, device=device))


@torch.no_grad()
def compute_buffer_job(net: MSRLNet, bags: Bags, genomics: Tensor, cases: Sequence[int], *, branch: str,
                       chunk: int, chunk_patches: int = TrainSettings().chunk_patches, device: torch.device,
                       message: str = "buffer") -> Job[Tensor]:
    """Buffer rows of ``cases`` (full bags, eval mode): target features [φ_G(X_G); h] (or [Inductor(h); h]
    for ``branch="online"``; h for MSRL_H). A job: ``Stage.EMBED`` ticks per chunk of cases (at most
    ``chunk`` bags and ``chunk_patches`` padded patches)."""
    was = net.training
    net.eval()
    try:
        cases = np.asarray(cases, dtype=np.int64)
        real_genomics = None if branch == "online" or not net.uses_genomics else genomics[cases]
        out = yield from case_node_features_job(net, bags, cases, real_genomics, max_patches=0, chunk=chunk,
                                                chunk_patches=chunk_patches, device=device, message=message)
    finally:
        net.train(was)
    return out


def compute_buffer(net: MSRLNet, bags: Bags, genomics: Tensor, cases: Sequence[int], *, branch: str,
                   chunk: int, chunk_patches: int = TrainSettings().chunk_patches, device: torch.device) -> Tensor:
    """:func:`compute_buffer_job` without its ticks."""
    return exhaust(compute_buffer_job(net, bags, genomics, cases, branch=branch, chunk=chunk,
                                      chunk_patches=chunk_patches, device=device))


__all__ = ["FifoBuffer", "case_node_features", "case_node_features_job", "compute_buffer", "compute_buffer_job",
           "ema_update", "mixup_view"]
