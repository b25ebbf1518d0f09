"""The MSRL model configuration: one flat dataclass, three presets, TOML in and out.

Every size and hyper-parameter of the model and its two training stages lives here so that a run is
fully described by one small TOML file (``MSRLConfig.from_toml`` / ``MSRLConfig.to_toml``).
``group_sizes`` is the only field that comes from data (the gene groups of the cohort); presets leave
it empty and the cohort loader fills it in with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msrl_model.errors import MSRLError


class ConfigError(MSRLError):
    """A model configuration (TOML file or values) is invalid."""


@dataclass(frozen=True)
class MSRLConfig:
    # ---- inputs -------------------------------------------------------------------------------
    patch_dim: int = 1536  # dimension of the patch features in the h5 files (GigaPath 1536)
    group_sizes: tuple[int, ...] = ()  # genes per gene group (e.g. 50 Hallmark sets); from the cohort
    # ---- model width --------------------------------------------------------------------------
    d: int = 768  # model dim: h, g and the Inductor prompt are d-dim; the fused f is 2d
    # ---- slide encoder phi_H -------------------------------------------------------------------
    slide_layers: int = 2  # pre-norm transformer blocks over [CLS; patches]
    slide_heads: int = 8  # attention heads (d must be divisible by this)
    slide_mlp_ratio: float = 4.0  # MLP hidden width = slide_mlp_ratio * d
    slide_dropout: float = 0.1  # dropout on patch embeddings, residual branches and the MLP hidden layer
    max_patches_train: int = 4096  # random patch subsample per bag while training; 0 = use all
    # ---- genomics encoder phi_G and Inductor (SNN) --------------------------------------------
    snn_layers: int = 2  # SNN blocks (Linear -> ELU -> AlphaDropout) per gene group and in the Inductor
    snn_dropout: float = 0.25  # AlphaDropout rate of the SNN blocks (MCAT / SurvPath use 0.25)
    # ---- graph structure learner and GCN ------------------------------------------------------
    gsl_layers: int = 2  # attentive GSL layers (x * omega), ReLU between layers
    k: int = 12  # neighbours kept per node (top-(k+1) including self)
    tau: float = 0.2  # InfoNCE temperature
    gcn_layers: int = 3  # GCN layers
    gcn_hidden: int = 512  # GCN hidden width
    gcn_out: int = 256  # GCN output width (node embedding Z)
    # ---- pre-training (pan-cancer, self-supervised) -------------------------------------------
    pretrain_lr: float = 1e-4  # Adam learning rate
    pretrain_epochs: int = 400  # epochs over the pre-training graph
    edge_drop: float = 0.2  # A^aug: fraction of anchor edges dropped
    edge_add: float = 0.2  # A^aug: random edges added, as a fraction of the anchor's edge count
    anchor_momentum: float = 0.9999  # SUBLIME bootstrapping: A_anchor <- m A_anchor + (1 - m) A_learned
    # ---- fine-tuning (per task) ---------------------------------------------------------------
    finetune_lr: float = 1e-5  # AdamW peak learning rate
    finetune_min_lr: float = 1e-7  # end of the cosine schedule
    finetune_epochs: int = 50  # epochs
    warmup_epochs: int = 10  # linear warm-up epochs before the cosine decay
    weight_decay: float = 1e-2  # AdamW weight decay
    batch_size: int = 16  # cases per fine-tuning step (graph over [buffer; batch])
    buffer_size: int = 0  # FIFO buffer length; 0 = all training cases
    ema_momentum: float = 0.99  # target <- m * target + (1 - m) * online
    mixup_alpha: float = 1.0  # Beta(a, a) mixing weight of the two mixup views of a patch bag
    # ---- tasks -----------------------------------------------------------------------------------
    n_bins: int = 4  # discrete-time survival bins (quartiles of uncensored times)
    nll_alpha: float = 0.0  # weight of the uncensored term in the NLL survival loss (MCAT default 0)
    head_dropout: float = 0.0  # dropout before the task heads
    readout_skip: bool = False  # head reads Z + W_s f (the node's own features, "jumping knowledge")

    # ---- derived ------------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        """Number of gene groups."""
        return len(self.group_sizes)

    @property
    def fused_dim(self) -> int:
        """Dimension of f = concatenate(g, h)."""
        return 2 * self.d

    # ---- presets ------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> MSRLConfig:
        """Paper scale: GigaPath 1536-d patches, d = 768, GSL 2 layers, GCN 3 layers -> 256, K = 12."""
        return cls(**overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> MSRLConfig:
        """Demo scale, trainable on a laptop CPU in minutes (builtin encoder features)."""
        base = dict(
            patch_dim=264,  # the builtin-he encoder's dim; training sets it from the feature files
            d=128, slide_layers=2, slide_heads=4, max_patches_train=512,
            gcn_hidden=128, gcn_out=64, pretrain_lr=1e-3, pretrain_epochs=100, finetune_lr=1e-4,
            finetune_min_lr=1e-6, finetune_epochs=30, warmup_epochs=3, anchor_momentum=0.999,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> MSRLConfig:
        """Test scale: a few thousand parameters, runs in milliseconds."""
        base = dict(
            patch_dim=32, d=16, slide_layers=1, slide_heads=2, max_patches_train=64, slide_dropout=0.0,
            snn_dropout=0.0, gsl_layers=2, k=3, gcn_layers=2, gcn_hidden=16, gcn_out=8,
            pretrain_lr=1e-3, pretrain_epochs=5, finetune_lr=1e-3, finetune_min_lr=1e-5,
            finetune_epochs=3, warmup_epochs=1, batch_size=4, anchor_momentum=0.99,
        )
        return cls(**{**base, **overrides})

    # ---- validation ---------------------------------------------------------------------------
    def __post_init__(self) -> None:
        object.__setattr__(self, "group_sizes", tuple(int(s) for s in self.group_sizes))
        problems = []
        if self.d <= 0 or self.d % 4:
            problems.append(f"d={self.d} must be a positive multiple of 4 (2-D sinusoidal positions)")
        if self.slide_heads <= 0 or self.d % max(self.slide_heads, 1):
            problems.append(f"d={self.d} must be divisible by slide_heads={self.slide_heads}")
        for name in ("patch_dim", "slide_layers", "snn_layers", "gsl_layers", "k", "gcn_layers",
                     "gcn_hidden", "gcn_out", "n_bins", "batch_size", "pretrain_epochs", "finetune_epochs"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        for name in ("max_patches_train", "buffer_size", "warmup_epochs"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if not isinstance(self.readout_skip, bool):
            problems.append(f"readout_skip={self.readout_skip!r} must be true or false")
        for name in ("slide_dropout", "snn_dropout", "head_dropout", "edge_drop", "nll_alpha"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1)")
        for name in ("ema_momentum", "anchor_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1]")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            problems.append(f"tau={self.tau} must be a positive number")
        if any(s <= 0 for s in self.group_sizes):
            problems.append("every gene group needs at least one gene (group_sizes must be positive)")
        if problems:
            raise ConfigError("invalid model configuration: " + "; ".join(problems))

    # ---- TOML ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), the TOML / JSON form."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MSRLConfig:
        """Build from a plain dict; unknown keys and wrong types raise :class:`ConfigError`."""
        return cls(**typed_fields(cls, values, "model configuration key"))

    def to_toml(self, path: str | Path) -> Path:
        """Write the configuration as a flat TOML table (every field, so the file is complete)."""
        lines = ["# MSRL model configuration (msrl_model.nn.config.MSRLConfig)"]
        for name, value in self.to_dict().items():
            lines.append(f"{name} = {_toml_value(value)}")
        path = Path(path)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_toml(cls, path: str | Path) -> MSRLConfig:
        """Read a TOML file written by :meth:`to_toml` (or by hand; missing keys keep their defaults)."""
        return cls.from_dict(read_toml(path, "model configuration"))


def _toml_value(value: Any) -> str:
    """TOML literal for the scalar / list-of-int values of :class:`MSRLConfig`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON strings are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def read_toml(path: str | Path, what: str = "configuration") -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file raises :class:`ConfigError` saying which."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {path} is not valid TOML ({err}); fix or regenerate it") from None


def typed_fields(cls: type, values: dict[str, Any], label: str) -> dict[str, Any]:
    """``values`` checked against the fields of the dataclass ``cls`` (whose defaults give the types).

    Ints are accepted for float fields, lists of ints for tuple fields; unknown keys and wrong types
    raise :class:`ConfigError` naming them (``label`` says what a key is, e.g. "[train] setting").
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown {label}s {unknown}; valid keys: {sorted(fields)}")
    defaults = cls()
    typed: dict[str, Any] = {}
    for name, value in values.items():
        want = type(getattr(defaults, name))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if want is tuple:
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)
        else:
            ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{label} {name!r} must be {want.__name__}, got {value!r}")
        typed[name] = tuple(value) if want is tuple else value
    return typed


__all__ = ["ConfigError", "MSRLConfig", "read_toml", "typed_fields"]
