"""Plain progress lines of ``progress.drive`` when stderr is not a terminal (batch jobs, logs)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from msrl_model.progress import Progress, Stage, drive


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _job(clock: FakeClock, steps: list[tuple[float, int]], total: int = 100):
    """READ_ENCODE ticks (advance the clock by dt, then done) and a final WRITE stage."""
    for dt, done in steps:
        clock.t += dt
        yield Progress(Stage.READ_ENCODE, done, total, "slide_07")
    yield Progress(Stage.WRITE, 0, 1, "slide_07")
    yield Progress(Stage.WRITE, 1, 1, "slide_07")
    return "ok"


def _done(lines: list[str], stage: str) -> list[int]:
    return [int(re.search(rf"\] {re.escape(stage)} (\d+)\b", line).group(1)) for line in lines if f"] {stage} " in line]


def test_plain_lines_first_every_5_percent_every_10_s_and_last():
    clock = FakeClock()
    # 0, then +1 % per second up to 3 % (no line), 5 % (a line), 6 %, 7 %; then 12 s with no 5 % step
    # (a line), 8 %; then a jump to 100 % (the last event).
    steps = [(0, 0), (1, 1), (1, 2), (1, 3), (1, 5), (1, 6), (1, 7), (12, 8), (1, 9), (1, 100)]
    out = io.StringIO()
    assert drive(_job(clock, steps), stream=out, clock=clock) == "ok"
    lines = out.getvalue().splitlines()
    assert _done(lines, "read+encode") == [0, 5, 8, 100]
    assert _done(lines, "write") == [0, 1]
    assert all(re.match(r"\[\d\d:\d\d:\d\d\] ", line) for line in lines)
    five = next(line for line in lines if "read+encode 5/100" in line)
    assert "(5%) slide_07" in five and "tiles/s" in five and "ETA" in five
    assert "ETA" not in next(line for line in lines if "read+encode 100/100" in line)


def test_plain_lines_every_5_percent_without_waiting():
    clock = FakeClock()
    steps = [(0, 0)] + [(0.01, d) for d in range(1, 101)]
    out = io.StringIO()
    drive(_job(clock, steps), stream=out, clock=clock)
    assert _done(out.getvalue().splitlines(), "read+encode") == list(range(0, 101, 5))


def test_plain_lines_every_10_s_when_the_total_is_unknown():
    clock = FakeClock()

    def job():
        for i in range(30):
            clock.t += 1
            yield Progress(Stage.SLIDES, i, None)

    out = io.StringIO()
    drive(job(), stream=out, clock=clock)
    assert _done(out.getvalue().splitlines(), "slides") == [0, 10, 20]


def test_show_false_writes_nothing():
    clock = FakeClock()
    out = io.StringIO()
    assert drive(_job(clock, [(0, 0), (20, 50), (1, 100)]), show=False, stream=out, clock=clock) == "ok"
    assert out.getvalue() == ""


def test_a_new_run_of_a_stage_gets_its_first_line():
    clock = FakeClock()

    def job():
        for _ in range(2):
            for done in (0, 1, 2):
                clock.t += 0.1
                yield Progress(Stage.EMBED, done, 4, "pass")
            yield Progress(Stage.EMBED, 4, 4, "pass")

    out = io.StringIO()
    drive(job(), stream=out, clock=clock)
    assert _done(out.getvalue().splitlines(), "embed") == [0, 1, 2, 4, 0, 1, 2, 4]  # 25 % per tick


def test_msrl_extract_writes_progress_lines_to_a_redirected_stderr(tmp_path: Path):
    from msrl_model.synth.slides import make_slide

    slide = make_slide(tmp_path / "slide.svs", 1024, 768, seed=1)
    err_path = tmp_path / "stderr.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with err_path.open("w") as err:
        proc = subprocess.run([sys.executable, "-m", "msrl_model.cli", "extract", str(slide), "--out",
                               str(tmp_path / "features")], stdout=subprocess.PIPE, stderr=err, env=env,
                              timeout=600, text=True)
    text = err_path.read_text()
    assert proc.returncode == 0, text
    for stage in ("open", "tissue", "read+encode", "write"):
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] {re.escape(stage)} \d+/\d+", text, re.M), text
    assert "\r" not in text  # no tqdm bar in a file
    quiet = subprocess.run([sys.executable, "-m", "msrl_model.cli", "extract", str(slide), "--out",
                            str(tmp_path / "features2"), "--quiet"], capture_output=True, env=env,
                           timeout=600, text=True)
    assert quiet.returncode == 0 and not re.search(r"^\[\d\d:\d\d:\d\d\] ", quiet.stderr, re.M)
