"""Foundation-model adapters (uni_v1, uni_v2, virchow2, hoptimus0, hoptimus1, gigapath), their weights resolver,
and a uni_v1 bundle analysing a real slide end to end.

The real models are 0.3-1.1 G parameters; here each architecture is built with random weights at reduced
depth (1 block) and width (embed_dim 96, 2 heads), everything else — architecture, register tokens,
MLP type, read-out, preprocessing — as the release builds it. The weights are saved in the release's
checkpoint layout (the timm state dict TRIDENT loads with ``strict=True``, as ``pytorch_model.bin``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from msrl_model import weights
from msrl_model.encoders import build_encoder, release, timm_local
from msrl_model.errors import EncoderError

try:
    timm_local.import_timm("test")
except EncoderError:
    pytest.skip("timm is not installed", allow_module_level=True)

ADAPTERS = ["uni_v1", "uni_v2", "virchow2", "hoptimus0", "hoptimus1", "gigapath"]
REDUCED = {"depth": 1, "embed_dim": 96, "num_heads": 2}
CITED = {  # (resize, crop, interpolation, mean, std, output, dim, precision), from each adapter's cited source
    "uni_v1": (224, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls", 1024, torch.float16),
    "uni_v2": (224, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls", 1536, torch.bfloat16),
    "virchow2": (224, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls+mean", 2560, torch.float16),
    "hoptimus0": (224, 224, "bilinear", (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "cls", 1536,
                  torch.float16),
    "hoptimus1": (224, 224, "bilinear", (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "cls", 1536,
                  torch.float16),
    "gigapath": (256, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cls", 1536, torch.float16),
}


def _module(name: str):
    return sys.modules[f"msrl_model.encoders.{name}"]


def _reduce(monkeypatch, name: str) -> release.Release:
    """Swap the adapter's release for the reduced one; returns it."""
    full = _module(name).RELEASE
    small = dataclasses.replace(full, model_kwargs={**full.model_kwargs, **REDUCED},
                                dim=96 * (2 if full.output == "cls+mean" else 1))
    monkeypatch.setattr(_module(name), "RELEASE", small)
    return small


def _checkpoint(tmp_path, rel: release.Release, seed: int):
    """Random weights of ``rel``'s architecture saved as the release's checkpoint; (path, reference network)."""
    torch.manual_seed(seed)
    net = release.create_network(rel).eval()
    path = tmp_path / f"{rel.name}-{seed}" / rel.weights_file
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return path, release.wrap_output(rel, net).eval()


pytestmark = pytest.mark.usefixtures("isolated_weights")  # tests/conftest.py


@pytest.mark.parametrize("name", ADAPTERS)
def test_constants_equal_the_cited_ones(name):
    rel = _module(name).RELEASE
    assert (rel.resize, rel.crop, rel.interpolation, rel.mean, rel.std, rel.output, rel.dim, rel.precision) == CITED[name]
    assert rel.name == name and rel.weights_file == "pytorch_model.bin"


def test_full_size_dimensions_from_the_architecture():
    """The cited dims follow from the full architectures (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        for name in ADAPTERS:
            rel = _module(name).RELEASE
            width = release.create_network(rel).num_features
            assert width * (2 if rel.output == "cls+mean" else 1) == rel.dim, name


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_features_equal_direct_construction(name, tmp_path, monkeypatch):
    rel = _reduce(monkeypatch, name)
    path, reference = _checkpoint(tmp_path, rel, seed=1)
    enc = build_encoder(f"{name}@{path}")
    tiles = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    x = enc.transform(tiles)
    assert x.shape == (2, 3, rel.crop, rel.crop)
    with torch.inference_mode():
        torch.testing.assert_close(enc.encode(tiles), reference(x))
    assert enc.dim == rel.dim == enc.encode(tiles).shape[1]
    assert enc.checkpoint_sha256 == release.sha256_file(path) and enc.version.endswith(enc.checkpoint_sha256[:12])
    assert enc.spec()["preprocessing"]["mean"] == list(rel.mean)


def test_mismatched_checkpoint_names_the_release_file(tmp_path, monkeypatch):
    _reduce(monkeypatch, "uni_v1")
    path, _ = _checkpoint(tmp_path, _reduce(monkeypatch, "uni_v2"), seed=2)  # another architecture's weights
    with pytest.raises(EncoderError, match=r"does not fit uni_v1 \(MahmoodLab/UNI pytorch_model.bin\)"):
        build_encoder(f"uni_v1@{path}")


def test_weights_resolver_order(tmp_path, monkeypatch):
    files = {k: tmp_path / k / "pytorch_model.bin" for k in ("cli", "env", "json", "hf")}
    for f in files.values():
        f.parent.mkdir()
        f.write_bytes(b"x")
    hf = tmp_path / "hub" / "models--MahmoodLab--UNI" / "snapshots" / "rev"
    hf.mkdir(parents=True)
    (hf / "pytorch_model.bin").write_bytes(b"x")
    args = ("uni_v1", None, "MahmoodLab/UNI", "pytorch_model.bin", "1.2 GB")
    assert weights.resolve_checkpoint(*args) == hf / "pytorch_model.bin"
    ckpts = tmp_path / "local_ckpts.json"  # TRIDENT's format; folders are accepted too
    ckpts.write_text(json.dumps({"uni_v1": str(files["json"].parent), "conch_v15": ""}))
    monkeypatch.setenv("MSRL_WEIGHTS_JSON", str(ckpts))
    assert weights.resolve_checkpoint(*args) == files["json"]
    monkeypatch.setenv("MSRL_WEIGHTS_UNI_V1", str(files["env"]))
    assert weights.resolve_checkpoint(*args) == files["env"]
    weights.use_weights(weights.parse_weights_args([f"uni_v1={files['cli']}"]))
    assert weights.resolve_checkpoint(*args) == files["cli"]
    with pytest.raises(EncoderError, match="NAME=PATH"):
        weights.parse_weights_args(["uni_v1"])
    monkeypatch.setenv("MSRL_WEIGHTS_UNI_V1", str(tmp_path / "missing.bin"))
    weights.use_weights({})
    with pytest.raises(EncoderError, match="set by MSRL_WEIGHTS_UNI_V1"):
        weights.resolve_checkpoint(*args)


def test_missing_weights_message_names_file_size_and_places():
    with pytest.raises(EncoderError) as err:
        build_encoder("virchow2")
    msg = str(err.value)
    for part in ("pytorch_model.bin", "2.5 GB", "paige-ai/Virchow2", "--weights virchow2=", "MSRL_WEIGHTS_VIRCHOW2",
                 "local_ckpts.json", "models--paige-ai--Virchow2"):
        assert part in msg
    assert "\n" not in msg


def _analyze(argv: list[str]) -> int:
    from msrl_model.infer.cli import register

    parser = argparse.ArgumentParser(prog="msrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.func(args)


TRIDENT_SETTING = "20x_256px_0px_overlap"


def _trident_uni_cohort(tmp_path, write_trident):
    """A 24-case synthetic cohort whose 96-d features sit where TRIDENT writes UNI's:
    ``20x_256px_0px_overlap/features_uni_v1/<slide>.h5`` (fp16, no encoder recorded but the folder)."""
    import shutil

    from msrl_model.features.h5io import read_features
    from msrl_model.synth.cohort import make_synth_cohort

    synth, cohort = tmp_path / "synth", tmp_path / "cohort"
    make_synth_cohort(synth, n_cases=24, n_projects=2, patches=(8, 16), feature_dim=96, seed=5)
    cohort.mkdir()
    for item in synth.iterdir():
        if item.is_file() and item.name != "cohort.json":
            shutil.copy(item, cohort / item.name)
    config = {**json.loads((synth / "cohort.json").read_text()), "features": f"{TRIDENT_SETTING}/features_uni_v1"}
    (cohort / "cohort.json").write_text(json.dumps(config))
    bags = ((h5.stem, read_features(h5)) for h5 in sorted((synth / "features").glob("*.h5")))
    write_trident(bags, cohort / TRIDENT_SETTING / "features_uni_v1")
    return cohort


def _app_with_reduced_uni(args: list[str], tmp_path, weights_file) -> subprocess.CompletedProcess:
    """``msrl-app ARGS`` in a fresh process whose uni_v1 release is the reduced one (as ``_reduce``), the
    checkpoint given as the environment gives it (MSRL_WEIGHTS_UNI_V1), a new user's settings."""
    code = ("import dataclasses, sys\n"
            "from msrl_model.encoders import uni_v1\n"
            f"uni_v1.RELEASE = dataclasses.replace(uni_v1.RELEASE, model_kwargs={{**uni_v1.RELEASE.model_kwargs, "
            f"**{REDUCED!r}}}, dim=96)\n"
            "from msrl_app.main import main\n"
            f"sys.exit(main({args!r}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(weights.ENV_PREFIX)}
    env.update(QT_QPA_PLATFORM="offscreen", MSRL_STUDIO_LOG_DIR=str(tmp_path / "logs"),
               MSRL_STUDIO_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"),
               HF_HUB_CACHE=str(tmp_path / "hub"), MSRL_WEIGHTS_UNI_V1=str(weights_file))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_bundle_trained_on_trident_uni_features_analyzes_a_slide_and_refuses_other_weights(
        cmu_slide, tmp_path, monkeypatch, capsys, write_trident):
    """The issue's end to end: ``msrl train`` on TRIDENT ``features_uni_v1/`` with ``--weights`` pins the
    checkpoint in the bundle; ``msrl analyze`` and ``msrl-app --analyze --export --quit`` encode the real CMU
    slide with that (reduced, random) UNI and predict; other weights are refused in both, naming both hashes."""
    from msrl_model.nn.config import MSRLConfig
    from msrl_model.train import cli as train_cli

    rel = _reduce(monkeypatch, "uni_v1")
    good, _ = _checkpoint(tmp_path, rel, seed=3)
    other, _ = _checkpoint(tmp_path, rel, seed=4)
    cohort = _trident_uni_cohort(tmp_path, write_trident)
    config = tmp_path / "small.toml"
    MSRLConfig.tiny(max_patches_train=12, pretrain_epochs=1, finetune_epochs=1, batch_size=8).to_toml(config)
    run = tmp_path / "run"
    assert train_cli.main(["--cohort", str(cohort), "--out", str(run), "--folds", "2", "--tasks", "survival",
                           "--variants", "msrl", "--config", str(config), "--device", "cpu", "--quiet",
                           "--weights", f"uni_v1={good}"]) == 0, capsys.readouterr().err
    encoder = json.loads((run / "bundle" / "manifest.json").read_text())["encoder"]
    sha = release.sha256_file(good)
    assert (encoder["name"], encoder["dim"], encoder["checkpoint_sha256"]) == ("uni_v1", 96, sha)
    assert encoder["preprocessing"]["mean"] == list(rel.mean) and encoder["version"].endswith(sha[:12])
    assert f"pins uni_v1 to {good}" in (run / "train.log").read_text()

    out = tmp_path / "out"
    assert _analyze([str(cmu_slide), "--bundle", str(run / "bundle"), "--out", str(out), "--device", "cpu",
                     "--quiet", "--weights", f"uni_v1={good}"]) == 0, capsys.readouterr().err
    result = json.loads(next(out.glob("*.json")).read_text())
    risk = result["tasks"]["survival"]["survival"]["risk"]
    assert result["encoder"]["name"] == "uni_v1" and len(result["coords"]) >= 20 and math.isfinite(risk)
    capsys.readouterr()
    assert _analyze([str(cmu_slide), "--bundle", str(run / "bundle"), "--out", str(tmp_path / "out2"), "--device",
                     "cpu", "--quiet", "--weights", f"uni_v1={other}"]) == 2
    err = capsys.readouterr().err
    assert sha in err and release.sha256_file(other) in err and "--weights uni_v1=" in err

    export = tmp_path / "app" / "result.json"
    app_args = [str(cmu_slide), "--bundle", str(run / "bundle"), "--device", "cpu", "--analyze", "--export"]
    done = _app_with_reduced_uni([*app_args, str(export), "--quit"], tmp_path / "app", good)
    assert done.returncode == 0, done.stderr
    app_result = json.loads(export.read_text())
    assert app_result["encoder"]["name"] == "uni_v1"
    assert app_result["coords"] == result["coords"]  # the same tissue patches as the command line
    assert app_result["tasks"]["survival"]["survival"]["risk"] == pytest.approx(risk, abs=1e-4)
    refused = _app_with_reduced_uni([*app_args, str(tmp_path / "app2" / "r.json"), "--quit"], tmp_path / "app2",
                                    other)
    assert refused.returncode == 1 and sha in refused.stderr and release.sha256_file(other) in refused.stderr


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_adapter_analyzes_the_cmu_slide_with_a_bundle_of_its_features(name, cmu_slide, tmp_path, monkeypatch,
                                                                          capsys):
    """Build item 5 (c) for every timm-based release: a tiny bundle whose encoder is the adapter's spec (as its
    feature files record it) analyses the real slide through ``msrl analyze``, encoding with the adapter."""
    from msrl_model.infer.random_bundle import make_random_bundle

    rel = _reduce(monkeypatch, name)
    ckpt, _ = _checkpoint(tmp_path, rel, seed=7)
    spec = build_encoder(f"{name}@{ckpt}").spec()
    bundle = make_random_bundle(tmp_path / f"{name}.msrl", patch_dim=rel.dim, n_cases=20, seed=2,
                                encoder={**spec, "spec": name})
    out = tmp_path / "out"
    assert _analyze([str(cmu_slide), "--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--quiet",
                     "--cache", str(tmp_path / "cache"), "--weights", f"{name}={ckpt}"]) == 0, capsys.readouterr().err
    result = json.loads(next(out.glob("*.json")).read_text())
    assert result["encoder"]["name"] == name and result["encoder"]["dim"] == rel.dim
    from msrl_model.features.h5io import read_features

    cached = read_features(next((tmp_path / "cache").glob("*.h5")))
    assert cached.features.shape == (len(result["coords"]), rel.dim)  # the adapter's features, one row a patch
