"""Reading a bundle, a directory or a ``.msrl`` zip, and validating every part of it on the way."""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from pathlib import Path
from typing import Any

from torch import Tensor

from msrl_model.errors import BundleError
from msrl_model.infer.bundle.buffer import read_genomics, read_task_buffer
from msrl_model.infer.bundle.contents import (BUFFER, MANIFEST, MODEL_CARD, WEIGHTS, Bundle, GenomicsBlock,
                                              TaskBundle, expected_shapes)
from msrl_model.infer.bundle.manifest import (ManifestModel, bundle_error, check_encoder, manifest_model,
                                              parse_manifest, sha256_file)
from msrl_model.nn.msrl import TaskSpec


class _Source:
    """The bundle's files, from a directory or a zip, as bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            return
        if not path.is_file():
            raise BundleError(f"model bundle {path} not found; check the path or reinstall the bundle")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise BundleError(f"model bundle {path} is truncated or not a bundle ({err}); "
                              "copy or download the bundle again") from None

    def exists(self, name: str) -> bool:
        if self.zip is None:
            return (self.path / name).is_file()
        return name in self.zip.namelist()

    def size(self, name: str) -> int:
        if self.zip is None:
            return (self.path / name).stat().st_size
        return self.zip.getinfo(name).file_size

    def read(self, name: str) -> bytes:
        try:
            if self.zip is None:
                return (self.path / name).read_bytes()
            return self.zip.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
            raise BundleError(f"model bundle {self.path}: {name} is truncated or unreadable ({err}); "
                              "copy or download the bundle again") from None

    def sha256(self, name: str) -> str:
        if self.zip is None:
            return sha256_file(self.path / name)
        return hashlib.sha256(self.read(name)).hexdigest()

    def h5(self, name: str) -> Path | io.BytesIO:
        """What :class:`h5py.File` opens for ``name``: the file itself, or its bytes from the zip."""
        return self.path / name if self.zip is None else io.BytesIO(self.read(name))

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _read_manifest(src: _Source) -> tuple[dict[str, Any], bytes]:
    if not src.exists(MANIFEST):
        raise bundle_error(src.path, f"{MANIFEST} is missing; this is not an MSRL Studio bundle")
    raw = src.read(MANIFEST)
    return parse_manifest(raw, src.path), raw


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed manifest of a bundle (no other check); BundleError when it cannot be read."""
    src = _Source(Path(path))
    try:
        return _read_manifest(src)[0]
    finally:
        src.close()


def _verify_files(src: _Source, manifest: dict[str, Any]) -> None:
    """BundleError unless every file the manifest lists is present with its size and SHA-256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or BUFFER not in files:
        raise bundle_error(src.path, f"{MANIFEST} does not list {WEIGHTS} and {BUFFER}; the bundle is incomplete")
    for name, info in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise bundle_error(src.path, f"{MANIFEST} lists an invalid file name {name!r}")
        if not src.exists(name):
            raise bundle_error(src.path, f"{name} is missing; copy or download the bundle again")
        size = src.size(name)
        if size < int(info["bytes"]):
            raise bundle_error(src.path, f"{name} is truncated ({size} of {info['bytes']} bytes); "
                                         "copy or download the bundle again")
        if size != int(info["bytes"]) or src.sha256(name) != info["sha256"]:
            raise bundle_error(src.path, f"{name} does not match its SHA-256 in {MANIFEST} (modified or corrupted); "
                                         "do not use it, copy or download the bundle again")


def _check_networks(model: ManifestModel, path: Path) -> None:
    """BundleError when a task's networks cannot even be built from the config (before any file is read)."""
    for spec, variant, _ in model.tasks:
        try:
            expected_shapes(model.config, spec, variant)
        except ValueError as err:
            raise bundle_error(path, f"task {spec.name!r} is invalid ({err})") from None


def _read_weights(src: _Source) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(src.read(WEIGHTS))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise bundle_error(src.path, f"{WEIGHTS} is truncated or unreadable ({err}); "
                                     "copy or download the bundle again") from None


def _task_state(weights: dict[str, Tensor], model: ManifestModel, spec: TaskSpec, variant: str,
                path: Path) -> dict[str, Tensor]:
    """Task ``spec.name``'s state dict (keys ``<task>/<parameter>`` without the prefix), checked
    against the names and shapes of the network the config builds."""
    prefix = f"{spec.name}/"
    state = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected_shapes(model.config, spec, variant):
        raise bundle_error(path, f"{WEIGHTS} does not match the networks of task {spec.name!r} (names or shapes "
                                 "differ); the bundle is inconsistent, rebuild it")
    return state


def _read_buffer(src: _Source, model: ManifestModel, weights: dict[str, Tensor]
                 ) -> tuple[dict[str, TaskBundle], GenomicsBlock | None]:
    """Every task (weights + buffer) and the genomics block; BundleError when ``buffer.h5`` is damaged."""
    import h5py

    tasks = {}
    try:
        with h5py.File(src.h5(BUFFER), "r") as f:
            for spec, variant, entry in model.tasks:
                state = _task_state(weights, model, spec, variant, src.path)
                nodes, pathways, cases, thumbs = read_task_buffer(f, spec.name, variant, entry, model.config,
                                                                  src.path)
                tasks[spec.name] = TaskBundle(spec=spec, variant=variant, state_dict=state, buffer_nodes=nodes,
                                              cases=cases, pathways=pathways,
                                              metrics=dict(entry.get("metrics") or {}), thumbnails=thumbs)
            genomics = read_genomics(f, model.expression_scale or "log") if "genomics" in f else None
    except BundleError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise bundle_error(src.path, f"{BUFFER} is truncated or unreadable ({err}); "
                                     "copy or download the bundle again") from None
    if genomics is not None and (model.expression_scale is None
                                 or tuple(len(g) for g in genomics.groups) != model.config.group_sizes):
        raise bundle_error(src.path, f"{BUFFER} gene groups do not match the model configuration; "
                                     "the bundle is inconsistent")
    return tasks, genomics


def load_bundle(path: str | Path, expected_encoder: dict | None = None) -> Bundle:
    """Load and validate a bundle (directory or ``.msrl`` zip).

    Args:
        path: the bundle.
        expected_encoder: {name, version[, dim]} of the encoder that produced the caller's features
            (e.g. a feature file's attrs); any difference raises BundleError.

    Raises:
        BundleError: missing, truncated, tampered, newer-format, invalid or encoder-mismatched bundle.
    """
    path = Path(path)
    src = _Source(path)
    try:
        manifest, raw_manifest = _read_manifest(src)
        _verify_files(src, manifest)
        model = manifest_model(manifest, path)
        if expected_encoder is not None:
            check_encoder(model.encoder, expected_encoder, path)
        _check_networks(model, path)
        tasks, genomics = _read_buffer(src, model, _read_weights(src))
        model_card = src.read(MODEL_CARD).decode("utf-8", "replace") if MODEL_CARD in manifest["files"] else ""
    finally:
        src.close()
    return Bundle(path=path, manifest=manifest, fingerprint=hashlib.sha256(raw_manifest).hexdigest(),
                  config=model.config, tasks=tasks, encoder=model.encoder, tiling=dict(manifest.get("tiling", {})),
                  tissue=dict(manifest.get("tissue", {})), genomics=genomics,
                  cohort_summary=dict(manifest.get("cohort", {})), model_card=model_card)
