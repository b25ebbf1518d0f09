"""Checkpoints of fine-tuning: resume after the last finished epoch with the same weights as an
uninterrupted run. No pickle.

Files in the checkpoint directory (written by rank 0 after every epoch): ``online.safetensors``,
``target.safetensors`` (the two branches), ``state.safetensors`` (optimizer moments ``opt.<param
id>.<name>``, ``buffer.feats`` / ``buffer.owners``, the states of the run's generator and of torch's
global RNG) and ``state.json`` (run identity, epoch, step, optimizer param groups and scalars, loss
history). They are written to ``tmp/`` and moved in place with ``state.json`` last, so a directory
with a ``state.json`` holds a complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from msrl_model.train.buffer import FifoBuffer


class ResumePoint(NamedTuple):
    """Where a run continues."""

    epoch: int  # epochs done
    step: int  # optimizer steps done
    buffer: tuple[Tensor, Tensor] | None  # (buffer rows (M, node_dim), owners (M,)); None = build it afresh
    history: list[dict[str, float]]  # mean loss terms of the epochs done


def fresh_start() -> ResumePoint:
    """The resume point of a run that starts at epoch 0 (a new, empty history)."""
    return ResumePoint(0, 0, None, [])


def run_id(*identity: object) -> str:
    """A 16-hex-digit digest of the JSON of everything that determines a run's weights."""
    blob = json.dumps(list(identity), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, run_id: str, epoch: int, step: int, online: nn.Module, target: nn.Module,
                    opt: torch.optim.Optimizer, buffer: FifoBuffer, gen: torch.Generator,
                    history: list[dict[str, float]]) -> None:
    """Write the state after ``epoch`` finished epochs (``step`` optimizer steps) to ``path``
    (module docstring: the files; ``state.json`` is replaced last)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"opt.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors["buffer.feats"] = buffer.feats.cpu().contiguous()
    tensors["buffer.owners"] = buffer.owners.contiguous()
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = path / "tmp"
    tmp.mkdir(exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in online.state_dict().items()}, tmp / "online.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in target.state_dict().items()}, tmp / "target.safetensors")
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps({
        "run_id": run_id, "epoch": epoch, "step": step, "param_groups": sd["param_groups"],
        "opt_scalars": scalars, "history": history}, indent=1))
    for name in ("online.safetensors", "target.safetensors", "state.safetensors", "state.json"):
        (tmp / name).replace(path / name)  # state.json last: it marks the checkpoint complete
    tmp.rmdir()


def load_checkpoint(path: Path, run_id: str, online: nn.Module, target: nn.Module,
                    opt: torch.optim.Optimizer, gen: torch.Generator, device: torch.device) -> ResumePoint:
    """Where run ``run_id`` resumes: the weights, optimizer and RNG states are loaded in place from
    ``path`` if it holds this run's checkpoint; :func:`fresh_start` otherwise."""
    from safetensors.torch import load_file

    meta_path = path / "state.json"
    if not meta_path.exists():
        return fresh_start()
    meta = json.loads(meta_path.read_text())
    if meta.get("run_id") != run_id:
        return fresh_start()
    online.load_state_dict(load_file(path / "online.safetensors", device=str(device)))
    target.load_state_dict(load_file(path / "target.safetensors", device=str(device)))
    tensors = load_file(path / "state.safetensors")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["opt_scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    buffer = (tensors["buffer.feats"].to(device), tensors["buffer.owners"])
    return ResumePoint(int(meta["epoch"]), int(meta["step"]), buffer, list(meta["history"]))


__all__ = ["ResumePoint", "fresh_start", "load_checkpoint", "run_id", "save_checkpoint"]
