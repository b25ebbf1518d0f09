"""Training jobs tick while they embed cases (no minutes without an event at real scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msrl_model.cohort import load_cohort
from msrl_model.nn.config import MSRLConfig
from msrl_model.progress import Stage, drive
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.train.data import fold_genomics, load_bags, task_targets
from msrl_model.train.finetune import finetune_job
from msrl_model.train.predict import predict, predict_job
from msrl_model.train.pretrain import pretrain_job
from msrl_model.train.settings import TrainSettings

torch.set_num_threads(1)

SETTINGS = TrainSettings(encode_chunk=5)  # 20 training cases: 4 chunks per pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=24, n_projects=2, patches=(8, 16), feature_dim=16, seed=3)
    cohort = load_cohort(root)
    bags = drive(load_bags(cohort), show=False)
    cfg = MSRLConfig.tiny(patch_dim=16, max_patches_train=12, pretrain_epochs=2, finetune_epochs=2,
                          batch_size=6, group_sizes=tuple(len(g) for g in cohort.gene_groups))
    train = np.arange(20)
    return cohort, bags, cfg, train, fold_genomics(cohort, train)


def _embed_ticks_before_first_epoch(events, stage):
    first_epoch = next(i for i, e in enumerate(events) if e.stage == stage and e.done == 1)
    return [e for e in events[:first_epoch] if e.stage == Stage.EMBED]


def test_pretraining_ticks_per_chunk_before_its_first_epoch(setup):
    cohort, bags, cfg, train, fg = setup
    events = []
    drive(pretrain_job(cfg, bags, fg.packed, train, settings=SETTINGS, seed=0), show=False, on_event=events.append)
    ticks = _embed_ticks_before_first_epoch(events, Stage.PRETRAIN)
    # the anchor graphs' pass (before the epoch-0 tick) and the first step's pass, each 0, 5, 10, 15, 20
    assert [e.done for e in ticks] == [0, 5, 10, 15, 20] * 2
    assert all(e.total == 20 for e in ticks)
    assert events.index(ticks[0]) < next(i for i, e in enumerate(events) if e.stage == Stage.PRETRAIN)


def test_finetuning_ticks_per_chunk_before_its_first_epoch_and_for_the_final_buffer(setup):
    cohort, bags, cfg, train, fg = setup
    pre = drive(pretrain_job(cfg, bags, fg.packed, train, settings=SETTINGS, seed=0), show=False)
    tt = task_targets(cohort, "survival", train, cfg.n_bins)
    events = []
    res = drive(finetune_job(cfg, tt.spec, bags, fg.packed, fg.pathways, tt.y, tt.censorship, train,
                             pretrained=pre, settings=SETTINGS, seed=0), show=False, on_event=events.append)
    ticks = _embed_ticks_before_first_epoch(events, Stage.FINETUNE)
    assert [e.done for e in ticks] == [0, 5, 10, 15, 20] and "initial buffer" in ticks[0].message
    last_epoch = max(i for i, e in enumerate(events) if e.stage == Stage.FINETUNE)
    final = [e for e in events[last_epoch:] if e.stage == Stage.EMBED]
    assert [e.done for e in final] == [0, 5, 10, 15, 20] and "final buffer" in final[0].message

    # prediction ticks too, and the job gives the same numbers as the plain function
    test = np.arange(20, 24)
    pred_events = []
    pred = drive(predict_job(res, bags, test, chunk=2), show=False, on_event=pred_events.append)
    assert [e.done for e in pred_events if e.stage == Stage.EMBED] == [0, 2, 4]
    assert np.array_equal(pred.logits, predict(res, bags, test, chunk=2).logits)
