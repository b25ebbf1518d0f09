"""Encoder batches (issue 10): the batch planned from free GPU memory, the out-of-memory back-off that
remembers the halved size, and the CPU time estimate a foundation model announces before a whole slide."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from msrl_model.errors import EncoderError
from msrl_model.features import batching
from msrl_model.features.batching import AdaptiveBatch, cpu_estimate_note, plan_batch_size
from msrl_model.features.pipeline import extract_slide
from msrl_model.progress import Progress, Stage, drive

MIB = 2**20


@pytest.mark.parametrize("free_gib, tile_mib", [(70, 20), (8, 20), (2, 37), (0.05, 20), (1, 900)])
def test_planned_batch_fits_the_free_memory_and_uses_it(free_gib, tile_mib):
    free, tile = int(free_gib * 2**30), tile_mib * MIB
    size = plan_batch_size(free, tile)
    budget = free * (1 - batching.RESERVE)
    assert 1 <= size <= batching.MAX_BATCH
    assert size == 1 or size * tile <= budget  # fits (one tile is always tried: the back-off says if it fails)
    if size >= 8:
        assert size % 8 == 0
    if 8 <= size < batching.MAX_BATCH:  # as large as a multiple of 8 can be
        assert (size + 8) * tile > budget


class _FlakyGpu:
    """An encoder that runs out of memory above ``fits`` tiles (feature = the tile's first byte)."""

    def __init__(self, fits: int) -> None:
        self.fits, self.calls = fits, []

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch[:, 0, 0, :1].float()


def test_out_of_memory_halves_the_batch_and_remembers_it():
    gpu = _FlakyGpu(fits=5)
    batches = AdaptiveBatch(32)
    tiles = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 2, 2, 3).contiguous()
    out = batches.encode(gpu, tiles)
    assert out[:, 0].tolist() == list(range(20))  # every tile, in order
    assert batches.limit <= 5 and batches.backoffs >= 1
    gpu.calls.clear()
    assert batches.encode(gpu, tiles)[:, 0].tolist() == list(range(20))
    assert max(gpu.calls) == batches.limit  # the next batch starts at the remembered size: no failed try


def test_one_tile_out_of_memory_says_cuda_out_of_memory():
    with pytest.raises(EncoderError, match="CUDA out of memory on a single tile.*--device cpu"):
        AdaptiveBatch(4).encode(_FlakyGpu(fits=0), torch.zeros((4, 2, 2, 3), dtype=torch.uint8))


def test_cpu_estimate_note_only_when_the_slide_will_take_long():
    assert cpu_estimate_note("uni_v1", 16, 0.1, 1000) is None  # 160 tiles/s: 6 s
    note = cpu_estimate_note("uni_v1", 16, 8.0, 9000)  # 2 tiles/s: 75 min
    assert note is not None and "uni_v1 runs 2.0 tiles/s" in note and "9,000 tiles" in note
    assert "about 1 h 15 min" in note and "--device cuda" in note  # progress.format_duration


class _WeightedStats(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _foundation_like(checkpoint_file: str | None):
    from msrl_model.encoders import PatchEncoder

    return PatchEncoder(name="fm-test", version="1", dim=6, model=_WeightedStats().eval(),
                        transform=lambda b: b.permute(0, 3, 1, 2).float() / 255.0, precision=torch.float32,
                        input_size=256, checkpoint_file=checkpoint_file)


@pytest.mark.parametrize("weights", [True, False])
def test_a_foundation_model_on_the_cpu_announces_its_time_once(weights, cmu_slide, tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "CPU_NOTE_SECONDS", 0.0)  # every estimate is "long"
    events: list[Progress] = []
    stream = io.StringIO()
    encoder = _foundation_like("pytorch_model.bin" if weights else None)
    drive(extract_slide(cmu_slide, tmp_path, encoder, "cpu", workers=1, batch_size=8), stream=stream,
          on_event=events.append)
    notices = [e for e in events if e.stage == Stage.NOTICE]
    if not weights:  # a weight-free encoder is cheap: no estimate
        assert notices == [] and "note:" not in stream.getvalue()
        return
    assert len(notices) == 1 and "fm-test runs" in notices[0].message
    at = events.index(notices[0])
    before = [e.done for e in events[:at] if e.stage == Stage.READ_ENCODE]
    after = [e.done for e in events[at:] if e.stage == Stage.READ_ENCODE]
    assert before == [0] and after[0] == 8 and after[-1] > 8  # after the first batch's encoding, before the rest
    assert f"note: {cmu_slide.stem}: fm-test runs" in stream.getvalue()


def test_given_batch_size_is_used_and_recorded(cmu_slide, tmp_path):
    from msrl_model.features.pipeline import CPU_BATCH, ExtractStats

    for given, expected in ((5, 5), (None, CPU_BATCH)):
        stats, events = ExtractStats(), []
        drive(extract_slide(cmu_slide, tmp_path / str(given), _foundation_like(None), "cpu", workers=1,
                            batch_size=given, stats=stats), show=False, on_event=events.append)
        done = [e.done for e in events if e.stage == Stage.READ_ENCODE]
        assert stats.batch_size == expected and np.diff(done)[:-1].tolist() == [expected] * (len(done) - 2)


def test_batch_runs_pass_the_notice_through(cmu_slide, tmp_path, monkeypatch):
    """``msrl extract`` over many slides and ``msrl analyze`` (infer/batch.analyze_slide) wrap each slide's
    events in their 'slides' stage; a notice stays a notice, so its 'note:' line is printed."""
    import shutil

    from msrl_model.features.pipeline import extract_many

    monkeypatch.setattr(batching, "CPU_NOTE_SECONDS", 0.0)
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(cmu_slide, folder / "a.svs")
    events: list[Progress] = []
    stream = io.StringIO()
    drive(extract_many([folder], tmp_path / "out", _foundation_like("pytorch_model.bin"), "cpu", workers=1,
                       batch_size=8), stream=stream, on_event=events.append)
    assert [e.stage for e in events if e.stage == Stage.NOTICE] == [Stage.NOTICE]
    assert "note: a: fm-test runs" in stream.getvalue()
