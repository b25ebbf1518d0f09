"""Settings ▸ Foundation models, and a uni_v1 bundle analysed end to end through ``msrl-app --analyze --export``.

The end-to-end runs use a reduced UNI (1 block, width 96, 2 heads: the real ViT-L would make CI slow)
with random weights in the release's ``pytorch_model.bin`` layout; the app runs in a subprocess (its
automation path, as tests/test_app_main.py runs it) with that reduced architecture swapped in before
``msrl_app.main.main``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
from PySide6.QtCore import QSettings

from msrl_app.dialogs import FoundationModelsDialog, stored_weights
from msrl_model import weights
from msrl_model.encoders import build_encoder, release, timm_local
from msrl_model.errors import EncoderError

REDUCED = {"depth": 1, "embed_dim": 96, "num_heads": 2}


pytestmark = pytest.mark.usefixtures("isolated_weights")  # tests/conftest.py


def test_dialog_lists_every_foundation_model_and_feeds_the_resolver(qtbot, tmp_path, monkeypatch):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    dialog = FoundationModelsDialog(settings)
    qtbot.addWidget(dialog)
    assert list(dialog.edits) == [r.name for r in release.registered_releases()]
    assert {"uni_v1", "uni_v2", "conch_v15", "virchow2", "hoptimus0", "hoptimus1", "phikon_v2",
            "gigapath"} <= set(dialog.edits)
    ckpt = tmp_path / "uni" / "pytorch_model.bin"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    dialog.edits["uni_v1"].setText(str(ckpt))
    dialog.edits["virchow2"].setText(str(tmp_path / "missing.bin"))
    assert dialog.problems() == [f"virchow2: {tmp_path / 'missing.bin'} does not exist"]
    dialog.edits["virchow2"].clear()
    dialog.accept()
    assert dialog.result() == FoundationModelsDialog.DialogCode.Accepted
    assert stored_weights(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)) == {
        "uni_v1": str(ckpt)}
    assert weights.configured_path("uni_v1") == (str(ckpt), weights.APP_SETTING)
    args = ("uni_v1", None, "MahmoodLab/UNI", "pytorch_model.bin", "1.2 GB")
    env_file = tmp_path / "env" / "pytorch_model.bin"
    env_file.parent.mkdir()
    env_file.write_bytes(b"y")
    monkeypatch.setenv("MSRL_WEIGHTS_UNI_V1", str(env_file))
    assert weights.resolve_checkpoint(*args) == ckpt  # the app's choice comes before the environment
    weights.use_weights({"uni_v1": str(env_file)})
    assert weights.resolve_checkpoint(*args) == env_file  # and after --weights
    again = FoundationModelsDialog(settings)
    qtbot.addWidget(again)
    assert again.edits["uni_v1"].text() == str(ckpt)  # remembered
    again.edits["uni_v1"].clear()
    again.accept()
    assert stored_weights(settings) == {} and weights.configured_path("uni_v1") == (str(env_file), "--weights")


def test_missing_weights_message_names_the_app_setting():
    with pytest.raises(EncoderError, match="Settings ▸ Foundation models"):
        build_encoder("uni_v1")


def _reduced_uni(monkeypatch) -> release.Release:
    try:
        timm_local.import_timm("test")
    except EncoderError:
        pytest.skip("timm is not installed")
    uni = sys.modules["msrl_model.encoders.uni_v1"]
    small = dataclasses.replace(uni.RELEASE, model_kwargs={**uni.RELEASE.model_kwargs, **REDUCED}, dim=96)
    monkeypatch.setattr(uni, "RELEASE", small)
    return small


def _checkpoint(tmp_path, rel: release.Release, seed: int):
    import torch

    torch.manual_seed(seed)
    path = tmp_path / f"uni-{seed}" / rel.weights_file
    path.parent.mkdir()
    torch.save(release.create_network(rel).state_dict(), path)
    return path


APP = textwrap.dedent("""
    import dataclasses, sys
    import msrl_model.encoders.uni_v1 as uni
    uni.RELEASE = dataclasses.replace(uni.RELEASE, model_kwargs={**uni.RELEASE.model_kwargs, **%r}, dim=96)
    from msrl_app.main import main
    sys.exit(main(sys.argv[1:]))
""") % (REDUCED,)


def _run_app(args: list[str], home, env_extra: dict[str, str]):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MSRL_STUDIO_LOG_DIR=str(home / "logs"),
               HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"),
               MSRL_STUDIO_CACHE_DIR=str(home / "cache"), OMP_NUM_THREADS="1")
    env.pop("MSRL_WEIGHTS_UNI_V1", None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", APP, *args], capture_output=True, text=True, env=env, timeout=600)


def test_msrl_app_analyzes_with_a_uni_v1_bundle_and_refuses_other_weights(cmu_slide, tmp_path, monkeypatch):
    """The weights from the app's setting (first run) and from MSRL_WEIGHTS_UNI_V1 (second run, other weights)."""
    from msrl_app.window import APP as APP_NAME, ORG
    from msrl_model.infer.random_bundle import make_random_bundle

    rel = _reduced_uni(monkeypatch)
    good, other = _checkpoint(tmp_path, rel, seed=3), _checkpoint(tmp_path, rel, seed=4)
    spec = build_encoder(f"uni_v1@{good}").spec()
    bundle = make_random_bundle(tmp_path / "uni.msrl", patch_dim=rel.dim, n_cases=20, seed=1,
                                encoder={**spec, "spec": "uni_v1"})
    home = tmp_path / "home"
    settings = QSettings(str(home / "config" / ORG / f"{APP_NAME}.ini"), QSettings.Format.IniFormat)
    settings.setValue("foundation_models/uni_v1", str(good))
    settings.sync()
    out = tmp_path / "out" / "result.json"
    run = _run_app([str(cmu_slide), "--bundle", str(bundle), "--device", "cpu", "--analyze", "--export", str(out),
                    "--quit"], home, {})
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["encoder"]["name"] == "uni_v1"
    log = (home / "logs" / "msrl-studio.log").read_text()
    assert "Traceback" not in log

    other_home = tmp_path / "other-home"  # no app setting: the environment names the other weights
    run = _run_app([str(cmu_slide), "--bundle", str(bundle), "--device", "cpu", "--analyze", "--export",
                    str(tmp_path / "out2" / "result.json"), "--quit"], other_home,
                   {"MSRL_WEIGHTS_UNI_V1": str(other)})
    assert run.returncode == 1
    assert spec["checkpoint_sha256"] in run.stderr and release.sha256_file(other) in run.stderr
    assert "Settings ▸ Foundation models" in run.stderr and not (tmp_path / "out2" / "result.json").exists()
