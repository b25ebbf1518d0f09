"""Reading a bundle, a directory or a ``.msrl`` zip, and validating every part of it on the way."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch import Tensor

from msrl_model.errors import BundleError
from msrl_model.infer.bundle.buffer import read_genomics, read_slide_profiles, read_task_buffer
from msrl_model.infer.bundle.contents import (BUFFER, MANIFEST, MODEL_CARD, RECORD_KEY, WEIGHTS, Bundle,
                                              GenomicsBlock, LoadedManifest, TaskBundle, expected_shapes)
from msrl_model.infer.bundle.manifest import (ManifestModel, bundle_error, check_encoder, manifest_model,
                                              parse_manifest)
from msrl_model.infer.bundle.schema import validate_manifest
from msrl_model.infer.bundle.shipped import SHIPPED_PROVENANCE, check_shipped, is_shipped_location
from msrl_model.infer.bundle.signing import MAX_SIGNATURE_BYTES, SIGNATURE, verify_signature
from msrl_model.nn.msrl import TaskSpec


# manifest.json has no declared size: a bundle manifest is a few KB, this bounds what a hostile one costs
MAX_MANIFEST_BYTES = 16 << 20
CHUNK = 1 << 20
_NOT_OWN_FILE = "a bundle must hold its own files, never links or paths to files elsewhere"


class _Source:
    """The bundle's files, from a directory or a zip.

    Every read is bounded: by the size the manifest declares (refused before reading when the file or
    the zip member is larger, and reading stops one chunk past it), by :data:`MAX_MANIFEST_BYTES` for
    the manifest and :data:`~msrl_model.infer.bundle.signing.MAX_SIGNATURE_BYTES` for the signature.
    In a directory only regular files directly inside it are read: a symbolic link (even one pointing
    inside), a device or a path resolving elsewhere is refused, and files are opened without
    following links (``O_NOFOLLOW``) so a link swapped in after the check is refused too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self._kept: dict[str, bytes] = {}  # verified bytes of the files read later (weights; zip buffer)
        if path.is_dir():
            self.root = path.resolve()
            return
        if not path.is_file():
            raise BundleError(f"model bundle {path} not found; check the path or reinstall the bundle")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise BundleError(f"model bundle {path} is truncated or not a bundle ({err}); "
                              "copy or download the bundle again") from None

    def _unreadable(self, name: str, err: BaseException) -> BundleError:
        return bundle_error(self.path, f"{name} is truncated or unreadable ({err}); copy or download the bundle again")

    def _lstat(self, name: str) -> os.stat_result | None:
        """The directory entry ``name`` (None when absent); BundleError unless it is a regular file of
        the bundle directory itself."""
        entry = self.path / name
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._unreadable(name, err) from None
        if stat.S_ISLNK(st.st_mode):
            raise bundle_error(self.path, f"{name} is a symbolic link; {_NOT_OWN_FILE} — refusing the bundle "
                                          "(copy the bundle with its real files)")
        if not stat.S_ISREG(st.st_mode):
            raise bundle_error(self.path, f"{name} is not a regular file; {_NOT_OWN_FILE} — refusing the bundle")
        if entry.resolve().parent != self.root:
            raise bundle_error(self.path, f"{name} resolves outside the bundle directory; {_NOT_OWN_FILE} — "
                                          "refusing the bundle")
        return st

    def size(self, name: str) -> int | None:
        """The size of file ``name`` without reading it; None when the bundle has no such file."""
        if self.zip is None:
            st = self._lstat(name)
            return None if st is None else st.st_size
        try:
            return self.zip.getinfo(name).file_size
        except KeyError:
            return None

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def open(self, name: str) -> BinaryIO:
        """A binary file object of ``name`` (caller closes it), never through a symbolic link."""
        if self.zip is not None:
            try:
                return self.zip.open(name)
            except (KeyError, zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as err:
                raise self._unreadable(name, err) from None
        st = self._lstat(name)
        if st is None:
            raise bundle_error(self.path, f"{name} is missing; copy or download the bundle again")
        try:
            fd = os.open(self.path / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        except OSError as err:  # ELOOP: replaced by a link since the check
            raise bundle_error(self.path, f"{name} cannot be opened as a plain file ({err.strerror or err}); "
                                          f"{_NOT_OWN_FILE}") from None
        f = os.fdopen(fd, "rb")
        now = os.fstat(f.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            f.close()
            raise bundle_error(self.path, f"{name} changed while the bundle was being read; try again")
        return f

    def chunks(self, name: str, limit: int) -> Iterator[bytes]:
        """The bytes of ``name`` in blocks; BundleError as soon as more than ``limit`` bytes come."""
        total = 0
        try:
            with self.open(name) as f:
                while block := f.read(min(CHUNK, limit - total + 1)):
                    total += len(block)
                    if total > limit:
                        raise bundle_error(self.path, f"{name} is larger than the {limit} bytes declared for it; "
                                                      "it was modified or is not this bundle's file — do not "
                                                      "use it, copy or download the bundle again")
                    yield block
        except BundleError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as err:
            raise self._unreadable(name, err) from None

    def read(self, name: str, limit: int) -> bytes:
        """All of ``name`` (at most ``limit`` bytes, else BundleError); kept bytes when verified earlier."""
        if name in self._kept:
            return self._kept[name]
        return b"".join(self.chunks(name, limit))

    def verify(self, name: str, size: int, sha256: str, keep: bool) -> None:
        """BundleError unless ``name`` is ``size`` bytes with this SHA-256 (read once, in blocks, never
        past ``size``); ``keep`` its bytes for a later :meth:`read` / :meth:`h5`."""
        actual = self.size(name)
        if actual is None:
            raise bundle_error(self.path, f"{name} is missing; copy or download the bundle again")
        if actual < size:
            raise bundle_error(self.path, f"{name} is truncated ({actual} of {size} bytes); "
                                          "copy or download the bundle again")
        if actual > size:
            raise bundle_error(self.path, f"{name} is larger ({actual} bytes) than manifest.json declares ({size}); "
                                          "it was modified or is not this bundle's file — do not use it, copy or "
                                          "download the bundle again")
        digest = hashlib.sha256()
        blocks = []
        total = 0
        for block in self.chunks(name, size):
            digest.update(block)
            total += len(block)
            if keep:
                blocks.append(block)
        if total != size or digest.hexdigest() != sha256:
            raise bundle_error(self.path, f"{name} does not match its SHA-256 in {MANIFEST} (modified or corrupted); "
                                          "do not use it, copy or download the bundle again")
        if keep:
            self._kept[name] = b"".join(blocks)

    def h5(self, name: str) -> BinaryIO:
        """What :class:`h5py.File` opens for ``name``: the open file, or its verified bytes from the zip."""
        if self.zip is None:
            return self.open(name)
        return io.BytesIO(self._kept[name])

    def close(self) -> None:
        self._kept.clear()
        if self.zip is not None:
            self.zip.close()


def _read_manifest(src: _Source) -> tuple[dict[str, Any], bytes]:
    size = src.size(MANIFEST)
    if size is None:
        raise bundle_error(src.path, f"{MANIFEST} is missing; this is not an MSRL Studio bundle")
    if size > MAX_MANIFEST_BYTES:
        raise bundle_error(src.path, f"{MANIFEST} is {size} bytes, far larger than any bundle manifest; "
                                     "this is not an MSRL Studio bundle")
    raw = src.read(MANIFEST, MAX_MANIFEST_BYTES)
    return parse_manifest(raw, src.path), raw


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed manifest of a bundle, checked against the schema (no file is hashed); BundleError
    when it cannot be read or is malformed."""
    src = _Source(Path(path))
    try:
        manifest = _read_manifest(src)[0]
    finally:
        src.close()
    validate_manifest(manifest, path)
    return manifest


def _verify_files(src: _Source, manifest: dict[str, Any]) -> None:
    """BundleError unless every file the (schema-checked) manifest lists is present with its size and
    SHA-256. The weights (and a zip's buffer) are kept: they are read once."""
    for name, info in manifest["files"].items():
        keep = name == WEIGHTS or (name == BUFFER and src.zip is not None) or name == MODEL_CARD
        src.verify(name, int(info["bytes"]), str(info["sha256"]), keep)


def _read_signature(src: _Source) -> bytes | None:
    size = src.size(SIGNATURE)
    if size is None:
        return None
    if size > MAX_SIGNATURE_BYTES:
        raise bundle_error(src.path, f"{SIGNATURE} is {size} bytes, far larger than a signature; the bundle is "
                                     "damaged — rebuild or re-download it")
    return src.read(SIGNATURE, MAX_SIGNATURE_BYTES)


def _inner_record(raw: Any, where: str, path: Path) -> dict[str, Any] | None:
    """The integrity record written inside weights/buffer (None for older bundles without one)."""
    if raw is None:
        return None
    try:
        record = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        raise bundle_error(path, f"the integrity record in {where} is unreadable; the bundle is damaged — "
                                 "rebuild or re-download it")
    return record


def _check_record(record: dict[str, Any] | None, manifest: dict[str, Any], where: str, path: Path) -> None:
    """BundleError when the manifest disagrees with the record inside ``where`` (the hashed
    weights/buffer file): its synthetic flag, cohort summary or cross-validated metrics were edited."""
    if record is None:
        return
    edited = "the manifest was edited after the bundle was written — do not use it, copy or download the bundle again"
    cohort = manifest["cohort"]
    if "synthetic" in record and record["synthetic"] is not cohort["synthetic"]:
        said = "synthetic" if cohort["synthetic"] else "not synthetic"
        inner = "a synthetic" if record["synthetic"] else "a real"
        raise bundle_error(path, f"{MANIFEST} says the training cohort is {said} but {where} records {inner} "
                                 f"cohort; {edited}")
    if "cohort" in record and record["cohort"] != cohort:
        raise bundle_error(path, f"the cohort summary in {MANIFEST} differs from the one recorded in {where}; {edited}")
    metrics = {t["name"]: t["metrics"] for t in manifest["tasks"]}
    if "metrics" in record and record["metrics"] != metrics:
        raise bundle_error(path, f"the cross-validated metrics in {MANIFEST} differ from those recorded in {where}; "
                                 f"{edited}")


def _safetensors_record(data: bytes) -> Any:
    """The ``msrl_record`` entry of a safetensors file's ``__metadata__`` (None when absent)."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if not 0 < n <= len(data) - 8:
        return None
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta.get(RECORD_KEY) if isinstance(meta, dict) else None


def _check_networks(model: ManifestModel, path: Path) -> None:
    """BundleError when a task's networks cannot even be built from the config (before any file is read)."""
    for spec, variant, _ in model.tasks:
        try:
            expected_shapes(model.config, spec, variant)
        except ValueError as err:
            raise bundle_error(path, f"task {spec.name!r} is invalid ({err})") from None


def _read_weights(src: _Source, manifest: dict[str, Any]) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    data = src.read(WEIGHTS, int(manifest["files"][WEIGHTS]["bytes"]))
    try:
        weights = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise bundle_error(src.path, f"{WEIGHTS} is truncated or unreadable ({err}); "
                                     "copy or download the bundle again") from None
    _check_record(_inner_record(_safetensors_record(data), WEIGHTS, src.path), manifest, WEIGHTS, src.path)
    return weights


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


def _class_names(spec: TaskSpec, entry: dict[str, Any]) -> list[str] | None:
    """The task's readable class names: the manifest's ``class_names``, else (a bundle written before
    they were kept) the default wording of :func:`msrl_model.cohort.labels.class_names` (TP53_mut 0/1
    → wild-type/mutant, …), which leaves any other class as its code. None for a survival task."""
    from msrl_model.cohort.labels import class_names

    if spec.kind != "classification":
        return None
    return [str(n) for n in entry["class_names"]] if "class_names" in entry else class_names(spec.name, spec.classes)


def _read_buffer(src: _Source, model: ManifestModel, weights: dict[str, Tensor], manifest: dict[str, Any]
                 ) -> tuple[dict[str, TaskBundle], GenomicsBlock | None, np.ndarray | None]:
    """Every task (weights + buffer), the genomics block and the training slides' profiles of the
    applicability check (when the manifest has ``applicability``); BundleError when ``buffer.h5`` is damaged."""
    import h5py

    tasks = {}
    try:
        with src.h5(BUFFER) as handle, h5py.File(handle, "r") as f:
            _check_record(_inner_record(f.attrs.get(RECORD_KEY), BUFFER, src.path), manifest, BUFFER, src.path)
            for spec, variant, entry in model.tasks:
                state = _task_state(weights, model, spec, variant, src.path)
                nodes, pathways, cases, thumbs = read_task_buffer(f, spec.name, variant, entry, model.config,
                                                                  src.path)
                tasks[spec.name] = TaskBundle(spec=spec, variant=variant, state_dict=state, buffer_nodes=nodes,
                                              cases=cases, pathways=pathways,
                                              metrics=dict(entry.get("metrics") or {}), thumbnails=thumbs,
                                              class_names=_class_names(spec, entry),
                                              conformal_scores=entry.get("conformal_scores"),
                                              conformal_weights=entry.get("conformal_weights"))
            n_genes = manifest["genomics"]["n_genes"] if manifest["genomics"] is not None else None
            genomics = (read_genomics(f, model.expression_scale or "log", n_genes, model.config.group_sizes)
                        if "genomics" in f else None)
            block = manifest.get("applicability")
            profiles = (read_slide_profiles(f, len(block["scores"]), model.config.patch_dim)
                        if block is not None else None)
    except BundleError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise bundle_error(src.path, f"{BUFFER} is truncated or unreadable ({err}); "
                                     "copy or download the bundle again") from None
    if genomics is not None and (model.expression_scale is None
                                 or tuple(len(g) for g in genomics.groups) != model.config.group_sizes):
        raise bundle_error(src.path, f"{BUFFER} gene groups do not match the model configuration; "
                                     "the bundle is inconsistent")
    return tasks, genomics, profiles


def load_bundle(path: str | Path, expected_encoder: dict | None = None, *, shipped: bool | None = None) -> Bundle:
    """Load and validate a bundle (directory or ``.msrl`` zip).

    Args:
        path: the bundle.
        expected_encoder: {name, version[, dim]} of the encoder that produced the caller's features
            (e.g. a feature file's attrs); any difference raises BundleError.
        shipped: check the manifest against the fingerprint pinned for the bundle shipped with MSRL
            Studio (:mod:`~msrl_model.infer.bundle.shipped`); None (default): when ``path`` is a shipped
            location (``resources/bundle``, ``resources/*.msrl``).

    Raises:
        BundleError: missing, truncated, tampered (files, manifest against the pin, the signature or
        the record inside the weights/buffer), newer-format, malformed (schema), symlinked or
        encoder-mismatched bundle.
    """
    path = Path(path)
    if shipped is None:
        shipped = is_shipped_location(path)
    src = _Source(path)
    try:
        parsed, raw_manifest = _read_manifest(src)
        fingerprint = hashlib.sha256(raw_manifest).hexdigest()
        if shipped:
            check_shipped(fingerprint, path)
        validate_manifest(parsed, path)
        manifest = LoadedManifest(parsed)
        provenance = verify_signature(_read_signature(src), raw_manifest, path)
        _verify_files(src, manifest)
        model = manifest_model(manifest, path)
        if expected_encoder is not None:
            check_encoder(model.encoder, expected_encoder, path)
        _check_networks(model, path)
        tasks, genomics, profiles = _read_buffer(src, model, _read_weights(src, manifest), manifest)
        model_card = ""
        if MODEL_CARD in manifest["files"]:
            model_card = src.read(MODEL_CARD, int(manifest["files"][MODEL_CARD]["bytes"])).decode("utf-8", "replace")
    finally:
        src.close()
    text = provenance.text
    if shipped:
        text = SHIPPED_PROVENANCE if not provenance.signed else f"{SHIPPED_PROVENANCE}; {text}"
    manifest.provenance = text
    return Bundle(path=path, manifest=manifest, fingerprint=fingerprint, config=model.config, tasks=tasks,
                  encoder=model.encoder, tiling=dict(manifest["tiling"]), tissue=dict(manifest["tissue"]),
                  genomics=genomics, cohort_summary=dict(manifest["cohort"]), model_card=model_card,
                  provenance=text, signer=provenance.signer, key_fingerprint=provenance.key_fingerprint,
                  signature_trusted=provenance.trusted, shipped=shipped, slide_profiles=profiles)
