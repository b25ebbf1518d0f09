"""Bundle security and integrity (issue 15): the manifest schema, symlinks and paths outside the
bundle, reads bounded by the declared sizes, signatures and provenance, the record of the synthetic
flag inside the hashed files, and the pinned fingerprint of the shipped bundle."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from msrl_model.errors import BundleError
from msrl_model.infer.bundle import load_bundle, read_manifest, write_bundle
from msrl_model.infer.bundle import shipped as shipped_mod
from msrl_model.infer.bundle.contents import RECORD_KEY
from msrl_model.infer.bundle.reader import _Source
from msrl_model.infer.bundle.shipped import SHIPPED_MANIFEST_SHA256, SHIPPED_PROVENANCE, is_shipped_location
from msrl_model.infer.bundle.signing import (SIGNATURE, TRUSTED_KEYS_ENV, UNSIGNED, generate_key, load_signing_key,
                                             public_key_path)
from msrl_model.infer.random_bundle import make_random_bundle

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "resources" / "bundle"


@pytest.fixture(autouse=True)
def _no_trusted_keys(tmp_path, monkeypatch):
    """No test sees the user's real trusted-keys folder."""
    empty = tmp_path / "no-trusted-keys"
    empty.mkdir()
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(empty))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("b") / "bundle", n_cases=12, seed=3, thumbnails=False)


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("z") / "b.msrl", n_cases=12, seed=3, thumbnails=False)


def _copy(src: Path, dst_dir: Path, name: str = "copy") -> Path:
    dst = dst_dir / name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _edit(d: Path, fn) -> None:
    manifest = json.loads((d / "manifest.json").read_text())
    fn(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text
    return text


def _set(path: str, value):
    """An edit setting manifest[path] (dotted, [i] for list items) to value."""
    def edit(m):
        keys = path.replace("[", ".").replace("]", "").split(".")
        obj = m
        for k in keys[:-1]:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        last = keys[-1]
        if isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
    return edit


# ---- 1. the manifest schema ---------------------------------------------------------------------

def _files_entry_string(m):
    m["files"]["weights.safetensors"] = "92468b91feae3adb01d2d7e8f6e51d8a5718a6643086a9852fb02fc330360b86"


def _size_not_number(m):
    m["files"]["buffer.h5"]["bytes"] = "lots"


def _drop(path: str):
    def edit(m):
        keys = path.split(".")
        obj = m
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return edit


def _nan_metric(m):
    m["tasks"][0]["metrics"]["c_index"]["mean"] = float("nan")  # json.dumps writes NaN


CASES = [  # (edit, what the one-line message must say)
    (_files_entry_string, "manifest field files['weights.safetensors'] must be an object"),
    (_size_not_number, "manifest field files['buffer.h5'].bytes must be an integer"),
    (_set("genomics", None), "manifest field genomics must be an object (task 'survival' uses variant msrl"),
    (_set("tasks[1].classes", [1, 2]), "manifest field tasks[1].classes must be a list of strings"),
    (_set("tasks", {}), "manifest field tasks must be a non-empty list"),
    (_set("tasks[0].kind", "regression"), "manifest field tasks[0].kind must be one of"),
    (_set("tasks[0].name", "a/b"), "manifest field tasks[0].name must be a task name without '/'"),
    (_set("tasks[0].bin_edges_months", [0, "x", None]), "tasks[0].bin_edges_months[1] must be a number"),
    (_set("tasks[0].n_buffer", "12"), "tasks[0].n_buffer must be an integer"),
    (_set("tasks[0].metrics", {"c_index": {"mean": "0.9"}}), "tasks[0].metrics.c_index.mean must be a number or null"),
    (_nan_metric, "manifest.json is damaged (non-JSON constant NaN)"),
    (_set("encoder.dim", "32"), "manifest field encoder.dim must be an integer"),
    (_drop("encoder.name"), "manifest field encoder.name must be present"),
    (_set("tiling.patch_size", "256"), "manifest field tiling must be valid"),
    (_set("tissue", [1]), "manifest field tissue must be an object"),
    (_set("config", []), "manifest field config must be an object"),
    (_set("config.d", "big"), "manifest field config must be a valid model configuration"),
    (_set("cohort.synthetic", "false"), "manifest field cohort.synthetic must be true or false"),
    (_set("cohort", None), "manifest field cohort must be an object"),
    (_set("cohort.projects", 3), "manifest field cohort.projects must be a list"),
    (_set("genomics.group_names", ["only one"]), "manifest field genomics.group_names must be a list of 4 names"),
    (_set("genomics.expression_scale", 1), "manifest field genomics.expression_scale must be a string"),
    (_set("software", "MSRL"), "manifest field software must be an object"),
    (_set("files", []), "manifest field files must be an object"),
    (lambda m: m["files"].pop("weights.safetensors"), "manifest field files['weights.safetensors'] must be present"),
    (lambda m: m["files"]["buffer.h5"].update(sha256=5), "files['buffer.h5'].sha256 must be a SHA-256"),
    (lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}),
     "manifest field files['../../etc/passwd'] must be a plain file name"),
    (lambda m: m["files"].update({"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}}),
     "manifest field files['/etc/passwd'] must be a plain file name"),
    (lambda m: m["files"].update({"zeros.bin": {"sha256": "0" * 64, "bytes": 2 << 30}}),
     "manifest field files['zeros.bin'] must be one of the files of a bundle"),
    (lambda m: m["files"]["model_card.md"].update(bytes=1 << 30), "files['model_card.md'].bytes must be at most"),
]


@pytest.mark.parametrize("edit,message", CASES, ids=[m[:60] for _, m in CASES])
def test_malformed_manifest_gives_one_line_naming_the_field(bundle_dir, tmp_path, edit, message):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, edit)
    with pytest.raises(BundleError) as err:
        load_bundle(d)
    text = _one_line(err.value)
    assert message in text, text
    if message.startswith("manifest field"):
        assert text.endswith("the bundle is damaged — rebuild or re-download it")
        with pytest.raises(BundleError, match="manifest field"):
            read_manifest(d)  # the bare manifest reader checks the schema too


def analyze(argv: list[str]) -> int:
    from msrl_model.infer.cli import register

    parser = argparse.ArgumentParser(prog="msrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.func(args)


@pytest.mark.parametrize("edit,field", [(_files_entry_string, "files['weights.safetensors']"),
                                        (_size_not_number, "files['buffer.h5'].bytes"),
                                        (_set("genomics", None), "genomics")])
def test_issue_reproductions_in_analyze_exit_2_and_in_the_app(bundle_dir, cmu_slide, tmp_path, capsys, edit, field):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, edit)
    code = analyze([str(cmu_slide), "--bundle", str(d), "--out", str(tmp_path / "out"), "--device", "cpu",
                    "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 0 and "Traceback" not in err
    assert f"manifest field {field} must be" in err
    # the app: the same BundleError from its predictor cache, shown as is (not "Unexpected error: TypeError")
    from msrl_app.analysis import PredictorCache
    from msrl_app.events import format_error

    with pytest.raises(BundleError) as exc:
        PredictorCache().get(d, "cpu")
    shown = format_error("Could not load the model", exc.value, None, None, None)
    assert shown == str(exc.value) and "Unexpected error" not in shown and f"manifest field {field}" in shown


def test_written_bundles_pass_the_schema_and_writer_refuses_what_reader_would(bundle_dir, tmp_path):
    b = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="cannot write the bundle .*cohort.synthetic must be present"):
        write_bundle(tmp_path / "x", config=b.config, tasks=list(b.tasks.values()), encoder=b.encoder,
                     tiling=b.tiling, tissue=b.tissue, genomics=b.genomics, cohort_summary={"n_cases": 3},
                     model_card="card")
    assert not (tmp_path / "x").exists()


# ---- 2. symlinks, paths outside the bundle, bounded reads ---------------------------------------


def _point_card_at(d: Path, target: Path) -> None:
    """model_card.md → target, with the manifest's hash and size of the target (a careful attacker)."""
    (d / "model_card.md").unlink()
    os.symlink(target, d / "model_card.md")
    data = target.read_bytes()
    _edit(d, lambda m: m["files"].update({"model_card.md": {"sha256": hashlib.sha256(data).hexdigest(),
                                                            "bytes": len(data)}}))


def test_symlink_to_a_file_outside_is_refused(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    target = Path("/etc/passwd") if Path("/etc/passwd").is_file() else tmp_path / "secret"
    if not target.exists():
        target.write_text("root:x:0:0\n")
    _point_card_at(d, target)
    with pytest.raises(BundleError, match=r"model_card\.md is a symbolic link") as err:
        load_bundle(d)
    assert "refusing" in _one_line(err.value)


def test_symlinks_inside_the_bundle_are_refused_too(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    (d / "weights.safetensors").rename(d / "w.bin")
    os.symlink("w.bin", d / "weights.safetensors")
    with pytest.raises(BundleError, match=r"weights\.safetensors is a symbolic link"):
        load_bundle(d)
    d2 = _copy(bundle_dir, tmp_path, "copy2")
    (d2 / "manifest.json").rename(tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", d2 / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest\.json is a symbolic link"):
        load_bundle(d2)


def test_a_directory_in_place_of_a_file_is_refused(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    (d / "model_card.md").unlink()
    (d / "model_card.md").mkdir()
    with pytest.raises(BundleError, match=r"model_card\.md is not a regular file"):
        load_bundle(d)


def test_the_bundle_directory_itself_may_be_reached_by_a_link(bundle_dir, tmp_path):
    os.symlink(bundle_dir, tmp_path / "link")
    assert load_bundle(tmp_path / "link").tasks


def _zip_with_big_member(src: Path, out: Path, member: str, size: int) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename != member:
                zout.writestr(info.filename, zin.read(info.filename), zipfile.ZIP_STORED)
        with zout.open(member, "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(block)


def test_large_zip_member_is_refused_without_being_read(bundle_zip, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.msrl"
    _zip_with_big_member(bundle_zip, bomb, "model_card.md", 50 << 20)  # 50 MiB of zeros, declared ~100 bytes
    assert bomb.stat().st_size < (1 << 20)
    opened = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(BundleError) as err:
        load_bundle(bomb)
    text = _one_line(err.value)
    assert f"model_card.md is larger ({50 << 20} bytes) than manifest.json declares" in text
    assert "model_card.md" not in opened  # refused from the zip directory, never decompressed


def test_large_directory_file_is_refused_from_its_size(bundle_dir, tmp_path, monkeypatch):
    d = _copy(bundle_dir, tmp_path)
    with open(d / "model_card.md", "r+b") as f:
        f.truncate(2 << 30)  # a sparse 2 GiB file: nothing to read if the reader checks first
    reads = []
    real = os.open

    def spy(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(BundleError, match=r"model_card\.md is larger \(2147483648 bytes\) than manifest\.json"):
        load_bundle(d)
    assert "model_card.md" not in reads


def test_reads_stop_past_the_declared_size(bundle_dir, bundle_zip):
    for path in (bundle_dir, bundle_zip):
        src = _Source(path)
        try:
            with pytest.raises(BundleError, match=r"larger than the 10 bytes declared"):
                b"".join(src.chunks("model_card.md", 10))
        finally:
            src.close()


def test_huge_manifest_is_refused_without_reading(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    with open(d / "manifest.json", "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(BundleError, match=r"manifest\.json is 1073741824 bytes, far larger"):
        load_bundle(d)


# ---- 3a. signing --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    return generate_key(tmp_path_factory.mktemp("keys") / "lab-smith.pem")[0]


def _signed_copy(bundle: Path, tmp_path: Path, key_file: Path, name: str = "signed") -> Path:
    """A copy of ``bundle`` written again by write_bundle with ``sign_key``."""
    b = load_bundle(bundle)
    out = tmp_path / name
    return write_bundle(out, config=b.config, tasks=list(b.tasks.values()), encoder=b.encoder, tiling=b.tiling,
                        tissue=b.tissue, genomics=b.genomics, cohort_summary=b.cohort_summary,
                        model_card=b.model_card, sign_key=load_signing_key(key_file))


def test_keygen_writes_a_private_key_0600_and_the_public_key_beside_it(tmp_path, capsys):
    from msrl_model.cli import main

    assert main(["keygen", str(tmp_path / "k.pem")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert public_key_path(tmp_path / "k.pem") == tmp_path / "k.pub.pem"
    assert b"PUBLIC KEY" in (tmp_path / "k.pub.pem").read_bytes() and "keep it secret" in out
    assert main(["keygen", str(tmp_path / "k.pem")]) == 2  # never overwrites a key by accident
    assert "exists" in capsys.readouterr().err


def test_signed_bundle_by_a_trusted_key(bundle_dir, tmp_path, key_file, monkeypatch):
    d = _signed_copy(bundle_dir, tmp_path, key_file)
    assert (d / SIGNATURE).is_file()
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(public_key_path(key_file), trusted)
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(trusted))
    b = load_bundle(d)
    assert b.signature_trusted and b.signer == "lab-smith"
    assert b.provenance == f"signed by lab-smith (key {b.key_fingerprint})"
    assert b.manifest.provenance == b.provenance


def test_signed_bundle_by_an_unknown_key(bundle_dir, tmp_path, key_file):
    b = load_bundle(_signed_copy(bundle_dir, tmp_path, key_file))
    assert not b.signature_trusted and b.provenance.startswith("signed by an unknown key")
    assert "lab-smith" in b.provenance


def test_unsigned_bundle(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.provenance == UNSIGNED == "unsigned — provenance unknown" and b.signer is None


def test_signed_zip_bundle(bundle_zip, tmp_path, key_file):
    b = load_bundle(bundle_zip)
    out = write_bundle(tmp_path / "s.msrl", config=b.config, tasks=list(b.tasks.values()), encoder=b.encoder,
                       tiling=b.tiling, tissue=b.tissue, genomics=b.genomics, cohort_summary=b.cohort_summary,
                       model_card=b.model_card, sign_key=load_signing_key(key_file, "Lab Smith"))
    with zipfile.ZipFile(out) as zf:
        assert SIGNATURE in zf.namelist()
    assert "claims to be 'Lab Smith'" in load_bundle(out).provenance


def test_tampered_signature_or_manifest_is_refused(bundle_dir, tmp_path, key_file):
    d = _signed_copy(bundle_dir, tmp_path, key_file)
    doc = json.loads((d / SIGNATURE).read_text())
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 1
    (d / SIGNATURE).write_text(json.dumps({**doc, "signature": base64.b64encode(bytes(sig)).decode()}))
    with pytest.raises(BundleError, match="its signature does not verify") as err:
        load_bundle(d)
    _one_line(err.value)
    (d / SIGNATURE).write_text(json.dumps({**doc, "signer": "Someone Else"}))  # the name is signed too
    with pytest.raises(BundleError, match="its signature does not verify"):
        load_bundle(d)
    (d / SIGNATURE).write_text(json.dumps(doc))
    load_bundle(d)
    _edit(d, lambda m: m["tasks"][0]["metrics"]["c_index"].update(mean=0.9))  # an edit of a signed manifest
    with pytest.raises(BundleError, match="its signature does not verify"):
        load_bundle(d)
    (d / SIGNATURE).write_text("{not json")
    with pytest.raises(BundleError, match=r"signature\.json is malformed"):
        load_bundle(d)
    (d / SIGNATURE).write_text(json.dumps({**doc, "public_key": "AAAA"}))
    with pytest.raises(BundleError, match=r"signature\.json is malformed \(field public_key"):
        load_bundle(d)


def test_a_key_that_is_not_one_is_refused_before_training(tmp_path, capsys):
    from msrl_model.train.cli import add_arguments

    (tmp_path / "bad.pem").write_text("not a key\n")
    parser = argparse.ArgumentParser(prog="train")
    add_arguments(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--preset", "tiny", "--out", str(tmp_path / "o"), "--sign-key", str(tmp_path / "bad.pem")])
    assert exc.value.code == 2
    assert "is not an unencrypted PEM private key" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_provenance_reaches_the_result_and_the_model_card(bundle_dir, tmp_path):
    import numpy as np

    from msrl_model.infer.predictor import Predictor
    from msrl_model.infer.results import PredictionResult

    p = Predictor.from_bundle(bundle_dir, device="cpu")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2) * 512
    r = p.predict(rng.standard_normal((12, 32)).astype(np.float32), grid.astype(np.int64), 512)
    assert r.bundle_provenance == UNSIGNED
    old = r.to_dict()
    del old["bundle_provenance"]  # a result written before the field existed
    assert PredictionResult.from_dict(old).bundle_provenance == ""
    pytest.importorskip("PySide6")
    from msrl_app.controls import model_card_html

    assert "unsigned — provenance unknown" in model_card_html(p.bundle.manifest)
    assert "signed by X (key 1)" in model_card_html({"cohort": {}}, "signed by X (key 1)")


# ---- 3b. the synthetic flag (and cohort, metrics) recorded inside the hashed files -------------------


def test_written_bundles_record_cohort_inside_weights_and_buffer(bundle_dir):
    import h5py
    from safetensors import safe_open

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    with safe_open(str(bundle_dir / "weights.safetensors"), "pt") as f:
        in_weights = json.loads(f.metadata()[RECORD_KEY])
    with h5py.File(bundle_dir / "buffer.h5", "r") as f:
        in_buffer = json.loads(f.attrs[RECORD_KEY])
    assert in_weights == in_buffer
    assert in_weights["synthetic"] is True and in_weights["cohort"] == manifest["cohort"]
    assert in_weights["metrics"] == {t["name"]: t["metrics"] for t in manifest["tasks"]}


@pytest.mark.parametrize("edit,message", [
    (_set("cohort.synthetic", False), "manifest.json says the training cohort is not synthetic but "
                                      "weights.safetensors records a synthetic cohort"),
    (_set("cohort.n_cases", 5000), "the cohort summary in manifest.json differs from the one recorded in "
                                   "weights.safetensors"),
    (_set("tasks[0].metrics.c_index.mean", 0.789), "the cross-validated metrics in manifest.json differ"),
])
def test_manifest_disagreeing_with_the_inner_record_is_refused(bundle_dir, tmp_path, edit, message):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, edit)
    with pytest.raises(BundleError) as err:
        load_bundle(d)
    assert message in _one_line(err.value) and "the manifest was edited" in str(err.value)


def test_bundles_without_the_inner_record_still_load(bundle_dir, tmp_path):
    """A bundle written before the inner record existed (weights and buffer without it, the manifest
    hashing those files) loads as before; so does the shipped one, which has the record."""
    import h5py
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    with safe_open(str(old / "weights.safetensors"), "np") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != RECORD_KEY}
    save_file(load_file(str(old / "weights.safetensors")), str(old / "weights.safetensors"), metadata=meta)
    with h5py.File(old / "buffer.h5", "a") as f:
        del f.attrs[RECORD_KEY]
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("weights.safetensors", "buffer.h5"):
        data = (old / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (old / "manifest.json").write_text(json.dumps(manifest))
    b = load_bundle(old)
    assert set(b.tasks) == set(load_bundle(bundle_dir).tasks) and not b.shipped
    shipped = load_bundle(SHIPPED)
    assert shipped.synthetic and shipped.shipped


# ---- 3c. the pinned shipped bundle --------------------------------------------------------------


def test_pinned_fingerprint_is_the_committed_manifest():
    """Rebuilding resources/bundle must update SHIPPED_MANIFEST_SHA256 (msrl_model/infer/bundle/shipped.py)."""
    assert hashlib.sha256((SHIPPED / "manifest.json").read_bytes()).hexdigest() == SHIPPED_MANIFEST_SHA256


def test_shipped_bundle_loads_as_shipped():
    assert is_shipped_location(SHIPPED) and not is_shipped_location(SHIPPED.parent)
    b = load_bundle(SHIPPED)
    assert b.shipped and b.provenance == SHIPPED_PROVENANCE and b.fingerprint == SHIPPED_MANIFEST_SHA256


def _shipped_copy(tmp_path: Path) -> Path:
    """resources/bundle copied (hard links where possible: they are regular files, not symlinks)."""
    dst = tmp_path / "resources" / "bundle"
    dst.mkdir(parents=True)
    for p in SHIPPED.iterdir():
        if p.name == "manifest.json":
            shutil.copy(p, dst / p.name)  # edited below: never a link to the real one
            continue
        try:
            os.link(p, dst / p.name)
        except OSError:
            shutil.copy(p, dst / p.name)
    return dst


@pytest.mark.parametrize("old,new", [('"mean": 0.6841658468054669', '"mean": 0.7841658468054669'),
                                     ('"synthetic": true', '"synthetic": false')])
def test_edited_shipped_manifest_is_refused(tmp_path, monkeypatch, capsys, cmu_slide, old, new):
    d = _shipped_copy(tmp_path)
    text = (d / "manifest.json").read_text()
    assert text.count(old) == 1
    (d / "manifest.json").write_text(text.replace(old, new))  # valid JSON, nothing else fixed
    with pytest.raises(BundleError) as err:
        load_bundle(d, shipped=True)
    text = _one_line(err.value)
    assert "the model bundle shipped with MSRL Studio" in text and "was modified" in text and "reinstall" in text
    # at a shipped location the pin applies by itself (the app's default bundle, msrl analyze --bundle)
    monkeypatch.setattr(shipped_mod, "resource_dirs", lambda: [tmp_path / "resources"])
    with pytest.raises(BundleError, match="was modified"):
        load_bundle(d)
    code = analyze([str(cmu_slide), "--bundle", str(d), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    err_text = capsys.readouterr().err
    assert code == 2 and "was modified" in err_text and "Traceback" not in err_text
    # elsewhere the same edited copy is refused too: the record inside its weights disagrees
    monkeypatch.setattr(shipped_mod, "resource_dirs", lambda: [])
    with pytest.raises(BundleError, match="the manifest was edited after the bundle was written"):
        load_bundle(d)


def test_buffer_dataset_larger_than_declared_is_refused_before_reading(bundle_dir, tmp_path):
    """A hashed buffer.h5 (size and SHA-256 fixed in the manifest) whose nodes dataset declares 10⁷ rows
    of a fill value: a few KB on disk, 2.5 GB if read. Its shape is checked against n_buffer first."""
    import h5py

    d = _copy(bundle_dir, tmp_path)
    with h5py.File(d / "buffer.h5", "r+") as f:
        g = f["tasks"]["survival"]
        width = g["nodes"].shape[1]
        del g["nodes"]
        g.create_dataset("nodes", shape=(10_000_000, width), dtype="f4", chunks=(65536, width), compression="gzip")
    data = (d / "buffer.h5").read_bytes()
    assert len(data) < (8 << 20)
    _edit(d, lambda m: m["files"].update({"buffer.h5": {"sha256": hashlib.sha256(data).hexdigest(),
                                                        "bytes": len(data)}}))
    with pytest.raises(BundleError, match=r"buffer\.h5 task 'survival' has inconsistent shapes \(nodes \(10000000,"):
        load_bundle(d)
