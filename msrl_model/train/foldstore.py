"""Per-fold results of a cross-validation on disk, written as each fold ends, and the resume of a
restarted run after its last finished fold.

Layout in the run's output folder (every file written atomically, :func:`~msrl_model.files.atomic_write`)::

    folds/run.json                   the run's identity: its fingerprint and what it is made of
    folds/fold_<k>.json              fold k (0-based) of the first (or only) repeat
    folds/repeat_<r>/fold_<k>.json   fold k of repeat r >= 1 (``--repeats``)
    oof_predictions.csv              out-of-fold predictions of every finished fold

A fold file holds ``repeat``, ``fold``, ``fingerprint``, ``n_train``, ``n_test``, ``rows`` (the
fold's metric rows: method, task, repeat, fold, metric, value), ``predictions`` (per task and method
the test cases' indices and risk or class probabilities), ``seconds`` ``{"pretrain", "finetune",
"predict", "total"}``, ``epochs`` ``{"pretrain", "finetune"}`` (benchmarks read these two) and
``graph`` (per task, MSRL's graph diagnostics on the fold's test cases,
:mod:`msrl_model.train.graphcheck`) and ``bin_edges`` (per survival task, the fold's bin edges in
months; a survival task's predictions also hold ``survival``, each test case's S_j at their ends).
Floats are written with all their digits, so a resumed run ends with the same table as an
uninterrupted one.

``oof_predictions.csv`` has the columns ``case`` (case id), ``fold``, ``repeat``, ``method``,
``task``, ``risk`` (survival tasks) and one ``prob_<class>`` column per class of the
classification tasks (empty where a row's task has no such class).

**Resume.** The fingerprint is a digest of everything that determines the folds' numbers: the
model configuration, the training settings, the cohort (its tables, gene groups and feature files
by name and size), the seed, tasks, variants, the number of folds and the software version. A
run started again with the same ``--out`` reads back the folds whose files carry its fingerprint
and trains only the others; one whose fingerprint differs from ``folds/run.json`` is refused,
naming what differs. The repeats are not part of it: ``--repeats 3`` after a finished
``--repeats 1`` run trains only repeats 1 and 2. The device is not either: folds resumed on another
device differ from an uninterrupted run by float rounding only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import msrl_model
from msrl_model.cohort import Cohort
from msrl_model.errors import MSRLError
from msrl_model.files import atomic_write
from msrl_model.nn.config import MSRLConfig
from msrl_model.train.checkpoint import run_id
from msrl_model.train.settings import TrainSettings

FOLDS_DIR = "folds"
RUN_FILE = "run.json"
OOF_FILE = "oof_predictions.csv"
CLAIM_SUFFIX = ".claim"
FINAL_CLAIM = "final.claim"


class ResumeMismatchError(MSRLError):
    """The output folder holds folds of a run with other settings."""


def cohort_fingerprint(cohort: Cohort) -> str:
    """SHA-256 of what training reads from a cohort: the case table, expression, genes, gene groups,
    slides and each feature file's name and size (not its path: a moved cohort is the same)."""
    digest = hashlib.sha256()
    digest.update(cohort.cases.to_csv(index=False).encode())
    digest.update(np.ascontiguousarray(cohort.expression).tobytes())
    digest.update(json.dumps([cohort.genes, cohort.group_names, [g.tolist() for g in cohort.gene_groups],
                              cohort.labels]).encode())
    for case in cohort.case_ids:
        for path in cohort.case_feature_paths(case):
            digest.update(f"{case}\x1f{path.name}\x1f{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def run_identity(cohort: Cohort, cfg: MSRLConfig, settings: TrainSettings, *, seed: int, tasks: list[str],
                 variants: list[str], n_folds: int, ablation_tasks: list[str] | None = None) -> dict[str, Any]:
    """What determines the numbers of every fold of a cross-validation (module docstring)."""
    identity = {"version": msrl_model.__version__, "config": cfg.to_dict(), "settings": settings.to_dict(),
                "cohort": cohort_fingerprint(cohort), "seed": int(seed), "tasks": list(tasks),
                "variants": list(variants), "n_folds": int(n_folds)}
    if ablation_tasks is not None:
        identity["ablation_tasks"] = list(ablation_tasks)
    return identity


@dataclass
class FoldRecord:
    """The results of one finished fold (one repeat's fold k)."""

    repeat: int
    fold: int
    n_train: int
    n_test: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # {method, task, repeat, fold, metric, value}
    # (task, method) -> {"case", "risk" | "probs"}: the test cases' predictions
    predictions: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # pretrain, finetune, predict, total
    epochs: dict[str, int] = field(default_factory=dict)  # pretrain, finetune
    graph: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> MSRL graph diagnostics (graphcheck)
    bin_edges: dict[str, list[float]] = field(default_factory=dict)  # survival task -> the fold's bin edges (months)

    def to_json(self, fingerprint: str) -> dict[str, Any]:
        preds: dict[str, dict[str, dict[str, list]]] = {}
        for (task, method), entry in self.predictions.items():
            preds.setdefault(task, {})[method] = {k: v.tolist() for k, v in entry.items()}
        return {"repeat": self.repeat, "fold": self.fold, "fingerprint": fingerprint, "n_train": self.n_train,
                "n_test": self.n_test, "rows": self.rows, "predictions": preds, "seconds": self.seconds,
                "epochs": self.epochs, "graph": self.graph, "bin_edges": self.bin_edges}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FoldRecord:
        preds = {}
        for task, methods in data["predictions"].items():
            for method, entry in methods.items():
                preds[(task, method)] = {k: np.asarray(v, dtype=np.int64 if k == "case" else np.float64)
                                         for k, v in entry.items()}
        return cls(int(data["repeat"]), int(data["fold"]), int(data["n_train"]), int(data["n_test"]),
                   list(data["rows"]), preds, dict(data["seconds"]), dict(data["epochs"]),
                   {task: dict(d) for task, d in data.get("graph", {}).items()},
                   {task: [float(e) for e in edges] for task, edges in data.get("bin_edges", {}).items()})


def _differences(stored: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """What differs between two run identities, e.g. ``["config (d, finetune_lr)", "seed"]``."""
    out = []
    for key in identity:
        old, new = stored.get(key), identity[key]
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            out.append(f"{key} ({', '.join(keys)})")
        else:
            out.append(key)
    return out


class FoldStore:
    """The ``folds/`` folder of one run in ``out`` (module docstring).

    Args:
        out: the run's output folder.
        identity: :func:`run_identity` of this run.
        write: whether this process writes (rank 0 under torchrun; every process reads).
    """

    def __init__(self, out: str | Path, identity: dict[str, Any], write: bool = True) -> None:
        self.out = Path(out)
        self.dir = self.out / FOLDS_DIR
        self.identity = identity
        self.fingerprint = run_id(identity)
        self.write = write

    def check(self) -> None:
        """Refuse (:class:`ResumeMismatchError`) when ``folds/`` belongs to a run with other settings."""
        path = self.dir / RUN_FILE
        if not path.is_file():
            return
        stored = self._read(path)
        if stored.get("fingerprint") != self.fingerprint:
            what = ", ".join(_differences(stored.get("identity", {}), self.identity)) or "the fingerprint"
            raise ResumeMismatchError(
                f"{self.out} holds cross-validation folds of another run ({what} differ); use a new --out, "
                f"or delete {self.dir} to start this run over there")

    def begin(self) -> None:
        """:meth:`check`, then record this run's identity in ``folds/run.json``."""
        self.check()
        if self.write:
            atomic_write(self.dir / RUN_FILE, json.dumps({"fingerprint": self.fingerprint,
                                                          "identity": self.identity}, indent=1) + "\n")

    def path(self, repeat: int, fold: int) -> Path:
        """The file of fold ``fold`` of repeat ``repeat``."""
        folder = self.dir if repeat == 0 else self.dir / f"repeat_{repeat}"
        return folder / f"fold_{fold}.json"

    def load(self, repeat: int, fold: int) -> FoldRecord | None:
        """The finished fold of this run, or None when it has not been written (or by another run)."""
        path = self.path(repeat, fold)
        if not path.is_file():
            return None
        data = self._read(path)
        if data.get("fingerprint") != self.fingerprint:
            return None
        return FoldRecord.from_json(data)

    def save(self, record: FoldRecord) -> None:
        """Write ``record``'s fold file (by the writing process only)."""
        if self.write:
            atomic_write(self.path(record.repeat, record.fold),
                         json.dumps(record.to_json(self.fingerprint), indent=1) + "\n")

    def write_oof(self, oof: dict[tuple[str, str], dict[str, np.ndarray]], cohort: Cohort) -> None:
        """Rewrite ``oof_predictions.csv`` from ``oof`` (by the writing process only)."""
        if self.write:
            atomic_write(self.out / OOF_FILE, oof_csv(oof, cohort))

    def claim_path(self, repeat: int | None = None, fold: int | None = None) -> Path:
        """The claim file of a fold, or ``folds/final.claim`` (no arguments) for the final models."""
        if repeat is None or fold is None:
            return self.dir / FINAL_CLAIM
        path = self.path(repeat, fold)
        return path.with_name(path.name + CLAIM_SUFFIX)

    def claim(self, path: Path) -> dict[str, Any] | None:
        """Take the claim ``path`` (:meth:`claim_path`) for this process.

        Returns None when this process now holds it, else the holder ``{"host", "pid", "started"}``
        of a live claim. A claim whose holder died on this host is taken over.
        """
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = claim_holder(path)
                if holder is None or not _holder_died(holder):
                    return holder or {"host": "?", "pid": -1, "started": 0.0}
                path.unlink(missing_ok=True)  # its process is gone: take the fold over
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(mine, f)
            return None
        return claim_holder(path) or {"host": "?", "pid": -1, "started": 0.0}

    @staticmethod
    def release(path: Path) -> None:
        """Remove this process's claim ``path`` (a claim of another process is left alone)."""
        holder = claim_holder(path)
        if holder is not None and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
            path.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MSRLError(f"cannot read {path} ({err}); delete it to train that fold again") from None


def claim_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the claim ``path`` (``{"host", "pid", "started"}``); None when there is no claim.
    A claim being written right now (empty or partial) reads as held by an unknown process."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"host": "?", "pid": -1, "started": 0.0}
    return data if isinstance(data, dict) else {"host": "?", "pid": -1, "started": 0.0}


def _holder_died(holder: dict[str, Any]) -> bool:
    """Whether a claim's process is known to be gone (it ran on this host and its pid is free)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def describe_holder(holder: dict[str, Any]) -> str:
    """``process 1234 on node7 since 01:02:03`` for messages."""
    started = time.strftime("%H:%M:%S", time.localtime(float(holder.get("started", 0.0))))
    return f"process {holder.get('pid')} on {holder.get('host')} since {started}"


def _task_classes(cohort: Cohort, task: str) -> list[str]:
    """The class names of a classification task in head-output order (none for survival)."""
    return [] if task == "survival" else list(cohort.labels[task])


def oof_csv(oof: dict[tuple[str, str], dict[str, np.ndarray]], cohort: Cohort) -> str:
    """The text of ``oof_predictions.csv`` (module docstring) for ``oof`` entries
    ``(task, method) -> {"case", "fold", "repeat", "risk" | "probs"}``, rows by repeat, fold, task and
    method in the order of ``oof``."""
    classes: list[str] = []
    for task, _ in oof:
        classes += [c for c in _task_classes(cohort, task) if c not in classes]
    fields = ["case", "fold", "repeat", "method", "task", "risk"] + [f"prob_{c}" for c in classes]
    ids = cohort.case_ids
    records = []
    for order, ((task, method), entry) in enumerate(oof.items()):
        task_classes = _task_classes(cohort, task)
        for i, case in enumerate(entry["case"]):
            row = {"case": ids[int(case)], "fold": int(entry["fold"][i]), "repeat": int(entry["repeat"][i]),
                   "method": method, "task": task}
            if "risk" in entry:
                row["risk"] = repr(float(entry["risk"][i]))
            if "probs" in entry:
                row.update({f"prob_{c}": repr(float(p)) for c, p in zip(task_classes, entry["probs"][i])})
            records.append(((row["repeat"], row["fold"], order), row))
    records.sort(key=lambda r: r[0])  # stable: cases keep their order within a (task, method)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(row for _, row in records)
    return text.getvalue()


__all__ = ["CLAIM_SUFFIX", "FINAL_CLAIM", "FOLDS_DIR", "FoldRecord", "FoldStore", "OOF_FILE",
           "ResumeMismatchError", "claim_holder", "cohort_fingerprint", "describe_holder", "oof_csv", "run_identity"]
