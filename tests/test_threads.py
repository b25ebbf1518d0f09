"""The thread policy of msrl_model.device: CPUs from affinity and fake cgroup v1/v2 files, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from msrl_model import device
from msrl_model.errors import MSRLError


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize("text, cpus", [("max 100000", None), ("150000 100000", 1.5), ("200000 100000", 2.0),
                                        ("garbage", None), ("-1 100000", None)])
def test_cgroup_v2_quota(tmp_path: Path, text: str, cpus: float | None) -> None:
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert device.cgroup_cpus(tmp_path) == cpus


@pytest.mark.parametrize("quota, cpus", [("-1", None), ("300000", 3.0), ("50000", 0.5)])
def test_cgroup_v1_quota(tmp_path: Path, quota: str, cpus: float | None) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert device.cgroup_cpus(tmp_path) == cpus


def test_no_cgroup_files(tmp_path: Path) -> None:
    assert device.cgroup_cpus(tmp_path) is None


def test_quota_below_affinity_wins_rounded_up(tmp_path: Path, eight_cpus: None) -> None:
    (tmp_path / "cpu.max").write_text("250000 100000")
    assert device.available_cpus(tmp_path) == (3, "cgroup quota 2.5 CPUs: 3 CPUs")
    (tmp_path / "cpu.max").write_text("1600000 100000")  # 16 CPUs of quota, 8 in the mask
    assert device.available_cpus(tmp_path)[0] == 8
    (tmp_path / "cpu.max").write_text("10000 100000")  # a tenth of a CPU: still one thread
    assert device.available_cpus(tmp_path)[0] == 1


def test_overrides_in_order(tmp_path: Path, eight_cpus: None) -> None:
    env = {"MSRL_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert device.plan_threads(2, env, tmp_path) == device.ThreadPlan(2, 2, "--threads")
    assert device.plan_threads(None, env, tmp_path) == device.ThreadPlan(3, 3, "MSRL_THREADS")
    assert device.plan_threads(0, {"OMP_NUM_THREADS": "5"}, tmp_path) == device.ThreadPlan(5, 5, "OMP_NUM_THREADS")
    plan = device.plan_threads(None, {}, tmp_path, loadavg=tmp_path / "no-loadavg")
    assert (plan.torch, plan.readers) == (8, 8)
    assert plan.line() == "threads: torch 8, readers 8 (from affinity: 8 CPUs)"


def _tasks(folder: Path, states: str) -> Path:
    """A /proc/self/task stand-in: one thread per letter of ``states`` (R running, S sleeping)."""
    for tid, state in enumerate(states, 100):
        (folder / str(tid)).mkdir(parents=True)
        (folder / str(tid) / "stat").write_text(f"{tid} (python (worker) 1) {state} 1 2 3 4\n")
    return folder


@pytest.mark.parametrize("states, busy", [("R", 2), ("RSS", 2), ("RR", 1), ("RRR", 0), ("", 2)])
def test_our_own_running_threads_are_not_busy_elsewhere(tmp_path: Path, states: str, busy: int) -> None:
    """3 runnable tasks system-wide: those of this process (e.g. OpenBLAS workers still spinning after
    numpy's import) are not other processes' work; with no thread readable, the caller's one counts."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.10 2.00 1.00 3/412 12345\n")
    tasks = _tasks(tmp_path / "task", states)
    assert device.busy_cpus(loadavg, samples=2, interval_s=0, own_tasks=tasks) == busy


@pytest.mark.parametrize("running, expected", [(1, 8), (3, 6), (8, 1), (40, 1)])
def test_cpus_busy_elsewhere_are_left_to_them(tmp_path: Path, eight_cpus: None, running: int,
                                              expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``running`` runnable tasks (this process's one running thread among them) in /proc/loadavg's
    fourth field."""
    monkeypatch.setattr(device, "OWN_TASKS", _tasks(tmp_path / "task", "RS"))
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"3.10 2.00 1.00 {running}/412 12345\n")
    assert device.busy_cpus(loadavg, samples=2, interval_s=0) == running - 1
    plan = device.plan_threads(None, {}, tmp_path, loadavg=loadavg)
    assert (plan.torch, plan.readers) == (expected, expected)
    assert ("busy elsewhere" in plan.source) == (running > 1)
    assert device.plan_threads(4, {}, tmp_path, loadavg=loadavg).torch == 4  # an explicit count wins


def test_passive_openmp_waits_keeps_a_users_policy() -> None:
    env: dict[str, str] = {}
    device.passive_openmp_waits(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    device.passive_openmp_waits(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize("threads, env", [(-1, {}), (None, {"OMP_NUM_THREADS": "x"}), (None, {"MSRL_THREADS": "0"})])
def test_bad_values_say_what_to_give(tmp_path: Path, threads: int | None, env: dict[str, str]) -> None:
    with pytest.raises(MSRLError, match="positive number of threads"):
        device.plan_threads(threads, env, tmp_path)


def test_apply_sets_torch_and_keeps_explicit_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeTorch:
        n = 4

        def get_num_threads(self) -> int:
            return self.n

        def set_num_threads(self, n: int) -> None:
            self.n = n

    fake = FakeTorch()
    monkeypatch.setenv("MSRL_THREADS", "2")
    plan = device.apply_threads(None, fake, readers=6)
    assert fake.n == 2 and plan.torch == 2 and plan.readers == 6
    assert plan.line().startswith("threads: torch 2, readers 6 (from MSRL_THREADS")
