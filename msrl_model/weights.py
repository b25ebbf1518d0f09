"""Where a foundation model's weights are: the one resolver ``msrl extract``, ``msrl analyze`` and the app read.

For an encoder registry name (``uni_v1``, ``virchow2``, ...) the checkpoint is, first found wins:

1. the path after ``@`` in the spec (``uni_v1@/data/uni/pytorch_model.bin``);
2. a ``--weights NAME=PATH`` given on the command line (:func:`use_weights`);
3. the file chosen in the app's Settings ▸ Foundation models (the app hands its stored choices to
   :func:`use_app_weights`; this module knows nothing of Qt);
4. the environment variable ``MSRL_WEIGHTS_<NAME>`` (name upper-cased, ``-`` → ``_``:
   ``MSRL_WEIGHTS_UNI_V1``);
5. the JSON file named by ``MSRL_WEIGHTS_JSON``, in TRIDENT's ``local_ckpts.json`` format
   (``{"uni_v1": "/path/to/pytorch_model.bin", ...}``, as in mahmoodlab/TRIDENT
   ``trident/patch_encoder_models/local_ckpts.json``; an empty value means "not set");
6. the model's file in the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), ``models--<org>--<repo>/snapshots/<rev>/<file>``.

A path may name the checkpoint file or the folder holding it (a Hugging Face snapshot folder). Nothing
here touches the network.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from msrl_model.errors import EncoderError

ENV_PREFIX = "MSRL_WEIGHTS_"
JSON_ENV = "MSRL_WEIGHTS_JSON"
_cli_weights: dict[str, str] = {}
_app_weights: dict[str, str] = {}
APP_SETTING = "the app's Settings ▸ Foundation models"


def env_name(name: str) -> str:
    """``MSRL_WEIGHTS_<NAME>`` for the registry name ``name`` (``uni_v1`` → ``MSRL_WEIGHTS_UNI_V1``)."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def parse_weights_args(items: list[str] | None) -> dict[str, str]:
    """``["uni_v1=/p/x.bin", ...]`` (the ``--weights`` values) → ``{name: path}``; EncoderError when malformed."""
    out: dict[str, str] = {}
    for item in items or []:
        name, eq, path = item.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise EncoderError(f"--weights {item!r}: write --weights NAME=PATH, e.g. --weights uni_v1=/data/uni/pytorch_model.bin")
        out[name.strip()] = path.strip()
    return out


def use_weights(mapping: Mapping[str, str]) -> None:
    """Make ``{name: path}`` (``--weights``) the command line's checkpoints for this process (replacing any
    given before); they take precedence over the environment and files."""
    _cli_weights.clear()
    _cli_weights.update({str(k): str(v) for k, v in mapping.items()})


def use_app_weights(mapping: Mapping[str, str]) -> None:
    """Make ``{name: path}`` (the app's Settings ▸ Foundation models) the app's checkpoints for this process,
    replacing any given before; empty paths are dropped. They come after ``--weights`` and before the
    environment."""
    _app_weights.clear()
    _app_weights.update({str(k): str(v) for k, v in mapping.items() if str(v).strip()})


def read_ckpts_json(path: Path) -> dict[str, str]:
    """``{name: path}`` of a ``local_ckpts.json`` (empty values dropped); EncoderError when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EncoderError(f"cannot read the weights file {path} ({err}); fix it or remove it") from None
    if not isinstance(data, dict):
        raise EncoderError(f"weights file {path} is not a JSON object of encoder name → checkpoint path")
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str) and v.strip()}


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder as huggingface_hub resolves it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(hf_home).expanduser() / "hub"


def hf_cached_file(repo: str, filename: str) -> Path | None:
    """``filename`` of the cached snapshot of ``repo`` (the ``main`` ref first), or None."""
    folder = hf_hub_cache() / ("models--" + repo.replace("/", "--"))
    ref = folder / "refs" / "main"
    if ref.is_file():
        candidate = folder / "snapshots" / ref.read_text().strip() / filename
        if candidate.is_file():
            return candidate
    snapshots = sorted((folder / "snapshots").glob(f"*/{filename}")) if (folder / "snapshots").is_dir() else []
    return snapshots[0] if snapshots else None


def configured_path(name: str) -> tuple[str, str] | None:
    """``(path, where it was set)`` for ``name`` from ``--weights``, the app's setting, the environment or
    ``MSRL_WEIGHTS_JSON``; None when none names it."""
    if name in _cli_weights:
        return _cli_weights[name], "--weights"
    if name in _app_weights:
        return _app_weights[name], APP_SETTING
    var = env_name(name)
    if os.environ.get(var):
        return os.environ[var], var
    json_path = os.environ.get(JSON_ENV)
    if json_path:
        found = read_ckpts_json(Path(json_path).expanduser()).get(name)
        if found:
            return found, f"{JSON_ENV} ({json_path})"
    return None


def resolve_checkpoint(name: str, explicit: str | None, hf_repo: str, filename: str, size_text: str) -> Path:
    """The checkpoint file of encoder ``name`` (see the module docstring for the order); EncoderError
    naming the expected file, its size and every place it may be put when it is not found."""
    chosen = (explicit, "the spec after '@'") if explicit else configured_path(name)
    if chosen is not None:
        raw, where = chosen
        p = Path(raw).expanduser()
        if p.is_dir():
            p = p / filename
        if not p.is_file():
            raise EncoderError(f"{name} checkpoint {p} (set by {where}) does not exist: it should be {filename} "
                               f"({size_text}) from the Hugging Face repo {hf_repo}; fix the path")
        return p
    cached = hf_cached_file(hf_repo, filename)
    if cached is not None:
        return cached
    expected = hf_hub_cache() / f"models--{hf_repo.replace('/', '--')}" / "snapshots" / "<revision>" / filename
    raise EncoderError(
        f"no local weights for {name}: it needs {filename} ({size_text}) from the Hugging Face repo {hf_repo} "
        f"(gated: request access there); put it in {expected}, choose it in {APP_SETTING}, "
        f"or pass --weights {name}=/path/to/{filename}, "
        f"set {env_name(name)}=/path/to/{filename}, or list it in a TRIDENT local_ckpts.json named by {JSON_ENV} "
        f"— nothing is ever downloaded")


__all__ = ["APP_SETTING", "configured_path", "env_name", "hf_cached_file", "hf_hub_cache", "parse_weights_args",
           "read_ckpts_json", "resolve_checkpoint", "use_app_weights", "use_weights"]
