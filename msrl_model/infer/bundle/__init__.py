"""Model bundles (architecture §3): everything the app needs to predict, in one directory or ``.msrl`` zip.

Layout (no pickle anywhere: JSON, safetensors, HDF5, Markdown)::

    manifest.json        format/software version, encoder + tiling/tissue params, model config,
                         tasks (classes or survival bin edges in months, variant, CV metrics with
                         n_folds; optional class_names and conformal_scores), training-cohort summary,
                         genomics summary, optional applicability {statistic, level, k, scores},
                         size + SHA-256 of every other file
    weights.safetensors  every task's MSRLNet state dict, keys "<task>/<parameter>"
    buffer.h5            /tasks/<task>/nodes (N, node_dim) float32   buffer node features
                         /tasks/<task>/pathways (N, n_groups) float32 authentic Hallmark scores
                         /tasks/<task>/cases/c<i> one dataset per case-table column (attrs list the
                                              names and kinds; strings UTF-8 variable length,
                                              c<i>_na = NA mask where the column has NAs)
                         /tasks/<task>/thumbnails  optional, variable-length uint8 (JPEG bytes)
                         /genomics/{genes, group_names, group_index, group_offsets, scaler_mean,
                                    scaler_std}  the MSRL_multi input pipeline
                         /applicability/slide_means (m, P) float32  optional: the training slides'
                                              profiles of the out-of-distribution check
    model_card.md        the model card (Markdown)
    signature.json       optional: Ed25519 signature of manifest.json (signing.py)

A ``.msrl`` file is a zip of exactly these files (stored, no sub-directory). In the manifest JSON an
infinite survival bin edge (the open last bin) is written as ``null``; NaN metrics as ``null``.

Security (architecture §10): every field of the manifest is checked against a schema (schema.py);
only regular files directly inside a bundle directory are read (no symbolic links), never more than
the manifest declares; the weights and buffer record the synthetic flag, cohort summary and metrics
inside them (contents.RECORD_KEY) and must agree with the manifest; a signature must verify; the
shipped bundle's manifest is pinned by its SHA-256 (shipped.py). :attr:`Bundle.provenance` says who
signed the bundle ("signed by …", "unsigned — provenance unknown").

:func:`load_bundle` checks, in this order, and raises :class:`~msrl_model.errors.BundleError` with a
one-line message saying which problem and what to do: readable (a directory or an intact zip),
manifest present and valid JSON, format version not newer than :data:`FORMAT_VERSION`, every listed
file present, not truncated (size) and unmodified (SHA-256), the config valid, the weights matching
the networks the config builds (names and shapes), the buffer datasets' shapes, and, when the caller
says which encoder produced its features, the encoder.

Modules: :mod:`~msrl_model.infer.bundle.contents` (file names, dataclasses),
:mod:`~msrl_model.infer.bundle.manifest` (the manifest dict), :mod:`~msrl_model.infer.bundle.buffer`
(``buffer.h5``), :mod:`~msrl_model.infer.bundle.reader` and :mod:`~msrl_model.infer.bundle.writer`.
"""

from __future__ import annotations

from msrl_model.infer.bundle.contents import (BUFFER, FORMAT_VERSION, MANIFEST, MODEL_CARD, WEIGHTS, Bundle,
                                              GenomicsBlock, TaskBundle)
from msrl_model.infer.bundle.manifest import check_encoder, json_safe, sha256_file
from msrl_model.infer.bundle.reader import load_bundle, read_manifest
from msrl_model.infer.bundle.shipped import SHIPPED_MANIFEST_SHA256, check_shipped, is_shipped_location
from msrl_model.infer.bundle.signing import SIGNATURE, SigningKey, generate_key, load_signing_key
from msrl_model.infer.bundle.writer import write_bundle

__all__ = ["BUFFER", "Bundle", "FORMAT_VERSION", "GenomicsBlock", "MANIFEST", "MODEL_CARD", "SHIPPED_MANIFEST_SHA256",
           "SIGNATURE", "SigningKey", "TaskBundle", "WEIGHTS", "check_encoder", "check_shipped", "generate_key",
           "is_shipped_location", "json_safe", "load_bundle", "load_signing_key", "read_manifest", "sha256_file",
           "write_bundle"]
