"""One device resolver and one CPU thread policy for every entry point (extract, analyze, train, bench,
the app's worker).

**Threads.** The CPUs a process may use are the fewest of: its affinity mask (``os.sched_getaffinity``), the
cgroup v2 quota (``/sys/fs/cgroup/cpu.max``: ``"QUOTA PERIOD"`` or ``"max PERIOD"``) and the cgroup v1
quota (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, -1 for none), a fractional quota rounded up.
``os.cpu_count()`` counts the host's CPUs, not these: on a shared or containerised machine torch's
default (one intra-op thread per host core) oversubscribes, which was measured at 10× slower
extraction under load (issue 16).

Policy: torch intra-op threads = the CPUs available less those other processes keep busy right now
(runnable tasks in ``/proc/loadavg`` less this process's own running threads, averaged over a few
samples), at least one; readers
(tile-decoding threads, which release the GIL in libjpeg) = the same count. Entry points also call
:func:`passive_openmp_waits` before torch is imported: OpenMP's idle threads then sleep instead of
spinning, which is what made two threads on two busy cores collapse. Measured with ``bench threads``
(builtin-he, 2 cores, other agents' work running): torch's spinning default 37.8 tiles/s at 1
thread, 6.3 at 2; with ``OMP_WAIT_POLICY=PASSIVE`` 117 / 106 quiet and 91 / 45 with one busy
process, where the load-aware count picks 1. Overrides, first found wins: ``--threads N`` (the caller passes it),
``MSRL_THREADS``, ``OMP_NUM_THREADS``. :func:`apply_threads` sets torch and logs one line,
``threads: torch N, readers M (from …)``. No torch import here: callers pass it in when they have it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msrl_model.errors import DeviceError, MSRLError

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


log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
LOADAVG = Path("/proc/loadavg")
OWN_TASKS = Path("/proc/self/task")  # this process's threads


@dataclass(frozen=True)
class ThreadPlan:
    """Threads chosen for this process and why."""

    torch: int  # intra-op threads for torch
    readers: int  # tile reader threads
    source: str  # where the count came from, for the log line

    def line(self) -> str:
        return f"threads: torch {self.torch}, readers {self.readers} (from {self.source})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpus(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota under ``root`` (v2 ``cpu.max``, else v1), None without a quota."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            try:
                q, p = int(quota), int(period)
            except ValueError:
                return None
            return q / p if q > 0 and p > 0 else None
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """(CPUs this process may use, how that was found): min(affinity, ⌈cgroup quota⌉), at least 1."""
    try:
        count, source = len(os.sched_getaffinity(0)), "affinity"
    except (AttributeError, OSError):  # not Linux
        count, source = os.cpu_count() or 1, "cpu_count"
    quota = cgroup_cpus(root)
    if quota is not None and math.ceil(quota) < count:
        count, source = math.ceil(quota), f"cgroup quota {quota:g} CPUs"
    return max(1, count), f"{source}: {count} CPUs"


def busy_cpus(path: Path = LOADAVG, samples: int = 5, interval_s: float = 0.01,
              own_tasks: Path | None = None) -> float:
    """CPUs other processes keep busy now: the runnable tasks of ``/proc/loadavg`` (its fourth field,
    ``running/total``) less this process's own running threads (state ``R`` in ``own_tasks``, default
    ``/proc/self/task``: ``*/stat``; 1 where that cannot be read), averaged over ``samples`` reads ``interval_s`` apart; 0 where the
    loadavg file does not exist (not Linux).

    Our own threads count too: numpy's OpenBLAS workers spin for a while after start, so right after the
    imports a process often has two running threads, which counting only the calling thread took for
    another process's busy CPU (measured: every ``bench threads`` run planned 1 thread on an idle
    machine)."""
    import time

    counts = []
    for i in range(samples):
        text = _read(path)
        try:
            running = int(text.split()[3].split("/")[0])
        except (AttributeError, IndexError, ValueError):
            return 0.0
        counts.append(running - _running_threads(OWN_TASKS if own_tasks is None else own_tasks))
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0.0, sum(counts) / len(counts))


def _running_threads(tasks: Path) -> int:
    """This process's threads in state R (running or runnable), at least 1 (the caller)."""
    running = 0
    try:
        for stat in tasks.glob("*/stat"):
            text = _read(stat) or ""
            fields = text[text.rfind(")") + 1:].split()  # after "pid (comm)": the comm may hold spaces
            running += bool(fields) and fields[0] == "R"
    except OSError:
        return 1
    return max(1, running)


def passive_openmp_waits(env: dict[str, str] | None = None) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy: OpenMP threads that wait sleep instead
    of spinning (module docstring, measured). Call before torch is imported: libgomp reads it once."""
    (os.environ if env is None else env).setdefault("OMP_WAIT_POLICY", "PASSIVE")


def plan_threads(threads: int | None = None, env: dict[str, str] | None = None,
                 root: Path = CGROUP_ROOT, loadavg: Path = LOADAVG) -> ThreadPlan:
    """The plan for ``--threads`` (None or 0: not given), the environment and the available CPUs.

    MSRLError for a ``--threads`` below 0 or an unparseable/zero environment value (one line saying which)."""
    env = os.environ if env is None else env
    if threads is not None and threads < 0:
        raise MSRLError(f"--threads {threads}: give a positive number of threads (or leave it out)")
    if threads:
        return ThreadPlan(threads, threads, "--threads")
    for name in ("MSRL_THREADS", "OMP_NUM_THREADS"):
        value = env.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                n = 0
            if n < 1:
                raise MSRLError(f"{name}={value!r}: give a positive number of threads")
            return ThreadPlan(n, n, name)
    count, source = available_cpus(root)
    busy = busy_cpus(loadavg)
    if busy >= 0.5 and count > 1:
        free = max(1, count - round(busy))
        return ThreadPlan(free, free, f"{source}, {busy:.1f} busy elsewhere")
    return ThreadPlan(count, count, source)


def apply_threads(threads: int | None = None, torch_module: Any = None, readers: int | None = None) -> ThreadPlan:
    """Plan (:func:`plan_threads`), set torch's intra-op threads (``torch_module``, imported here when None)
    and log the one line. ``readers``: an explicit reader count (``--workers``) that replaces the plan's."""
    plan = plan_threads(threads)
    if readers:
        plan = ThreadPlan(plan.torch, readers, f"{plan.source}; readers from --workers")
    if torch_module is None:
        import torch as torch_module
    if torch_module.get_num_threads() != plan.torch:
        torch_module.set_num_threads(plan.torch)
    log.info(plan.line())
    return plan


__all__ = ["ThreadPlan", "apply_threads", "available_cpus", "busy_cpus", "cgroup_cpus", "passive_openmp_waits",
           "plan_threads", "resolve_device"]
