"""One device resolver for every entry point (extract, analyze, train, bench, the app's worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msrl_model.errors import DeviceError

if TYPE_CHECKING:
    import torch


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        DeviceError: an unknown spelling, or CUDA asked for where none is available.
    """
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was asked for but no CUDA GPU is available: use 'cpu' or 'auto'")
    return dev


__all__ = ["resolve_device"]
