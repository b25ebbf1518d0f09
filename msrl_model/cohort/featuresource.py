"""Where a cohort's feature files are (architecture §3): the one resolver that cohort validation
(``cohort/load.py``, ``cohort/featurefiles.py``) and training (``train/data.py`` reads
``Cohort.feature_paths``) share, so both read the same files. Files are read where they are; nothing
is copied.

The source is the cohort config's ``features`` entry (a path, relative to the cohort directory or
absolute), else ``features_dir`` (default ``features/``) when that folder exists, else a TRIDENT or
CLAM tree found in the cohort directory itself. A source is one of:

* a folder of ``<slide_id>.h5`` files: this tool's ``features/``, or a TRIDENT
  ``features_<encoder>/`` folder (``<slide_id>.pt`` is tried when there is no ``.h5``);
* a TRIDENT job directory: its single ``<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/`` folder is
  used; with several (other magnifications or encoders) the cohort is refused with their list, and
  ``features`` must name one of them;
* a CLAM directory: ``h5_files/<slide_id>.h5`` (features and coords), else ``pt_files/<slide_id>.pt``
  (a torch tensor N×D, read with ``torch.load(weights_only=True)``; see
  :func:`msrl_model.features.h5io.read_features`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from msrl_model.cohort.format import CohortConfig, Problems

# TRIDENT's per-setting folder: e.g. "20x_256px_0px_overlap".
TRIDENT_SETTING = re.compile(r"^\d+(\.\d+)?x_\d+px_\d+px_overlap$")


@dataclass
class FeatureSource:
    """The folders feature files are looked up in, in order, each with the suffixes tried there."""

    kind: str  # "msrl" (a folder of .h5), "trident", "clam"
    folders: list[tuple[Path, tuple[str, ...]]]  # (folder, suffixes) searched in order
    root: Path  # the cohort directory (messages name folders relative to it when inside it)

    @property
    def label(self) -> str:
        """The first folder, as messages name it."""
        return self.name(self.folders[0][0])

    def name(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def path_for(self, slide_id: str) -> Path | None:
        """The feature file of ``slide_id``, or None."""
        for folder, suffixes in self.folders:
            for suffix in suffixes:
                p = folder / f"{slide_id}{suffix}"
                if p.is_file():
                    return p
        return None

    def expected(self, slide_id: str) -> str:
        """How a missing file of ``slide_id`` is named in messages."""
        folder, suffixes = self.folders[0]
        return f"{self.name(folder)}/{slide_id}{suffixes[0]}"

    def describe(self) -> str:
        return f"{self.kind} feature files in " + " or ".join(
            f"{self.name(f)}/ (<slide_id>{'|'.join(s)})" for f, s in self.folders)


def _trident_folders(job_dir: Path) -> list[Path]:
    return sorted(d for d in job_dir.glob("*/features_*")
                  if d.is_dir() and TRIDENT_SETTING.match(d.parent.name))


def classify(path: Path, root: Path, problems: Problems, origin: str) -> FeatureSource | None:
    """The source a folder is (see the module docstring); None (and a problem) when it is ambiguous."""
    trident = _trident_folders(path)
    if len(trident) == 1:
        return FeatureSource("trident", [(trident[0], (".h5", ".pt"))], root)
    if len(trident) > 1:
        shown = FeatureSource("trident", [(trident[0], (".h5",))], root)
        choices = ", ".join(shown.name(d) for d in trident)
        problems.add(f"{origin} is a TRIDENT job directory with {len(trident)} feature folders ({choices}); "
                     f"choose one with \"features\": \"<one of them>\" in cohort.json (or cohort.toml)")
        return None
    if path.name.startswith("features_") and TRIDENT_SETTING.match(path.parent.name):
        return FeatureSource("trident", [(path, (".h5", ".pt"))], root)
    clam = [(path / sub, (suffix,)) for sub, suffix in (("h5_files", ".h5"), ("pt_files", ".pt"))
            if (path / sub).is_dir()]
    if clam:
        return FeatureSource("clam", clam, root)
    return FeatureSource("msrl", [(path, (".h5", ".pt"))], root)


def resolve_feature_source(root: Path, config: CohortConfig, problems: Problems) -> FeatureSource | None:
    """The cohort's feature source, or None when it has none (a configured one that is missing or
    ambiguous is a problem)."""
    if config.features:
        path = Path(config.features).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else root / path))  # "../x" named plainly
        if not path.is_dir():
            problems.add(f"cohort config: features {config.features!r} is not a folder ({path}); give the "
                         "features/ folder, a TRIDENT job or features_<encoder>/ folder, or a CLAM folder")
            return None
        return classify(path, root, problems, f"features {config.features!r}")
    default = root / config.features_dir
    if default.is_dir():
        return classify(default, root, problems, f"{config.features_dir}/")
    if _trident_folders(root) or (root / "h5_files").is_dir() or (root / "pt_files").is_dir():
        return classify(root, root, problems, "the cohort directory")
    return None


__all__ = ["FeatureSource", "TRIDENT_SETTING", "classify", "resolve_feature_source"]
