"""The main window's file dialogs, its About text, the Open recent list and Settings ▸ Foundation models
(both kept in QSettings)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from PySide6.QtCore import QSettings, qVersion
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QGridLayout, QLabel, QLineEdit, QMenu,
                               QMessageBox, QPushButton, QVBoxLayout, QWidget)

from msrl_model import RESEARCH_USE_ONLY, __version__

APP = "MSRL Studio"
SLIDE_SUFFIXES = ("svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "svslide", "bif", "dcm")
SLIDE_FILTER = (f"Whole-slide images ({' '.join('*.' + s for s in SLIDE_SUFFIXES)});;"
                "DICOM whole-slide series, any one of its files (*.dcm);;All files (*)")
EXPRESSION_FILTER = "Expression tables (*.csv *.txt);;All files (*)"
MAX_RECENT = 10
WEIGHTS_GROUP = "foundation_models"  # QSettings group: registry name -> checkpoint path


def _folder(settings: QSettings, key: str) -> str:
    return str(settings.value(key, str(Path.home())))


def choose_slide(parent: QWidget, settings: QSettings) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, "Open slide", _folder(settings, "paths/last_dir"), SLIDE_FILTER)
    return path or None


def choose_dicom_folder(parent: QWidget, settings: QSettings) -> str | None:
    """A folder holding one DICOM whole-slide series (its .dcm files); opened as one slide."""
    path = QFileDialog.getExistingDirectory(parent, "Open DICOM folder (one whole-slide series)",
                                            _folder(settings, "paths/last_dir"))
    return path or None


def choose_bundle(parent: QWidget, current: Path | None) -> Path | None:
    """A bundle folder (its manifest.json chosen) or a .msrl file."""
    start = str(current.parent if current else Path.home())
    dialog = QFileDialog(parent, "Open model bundle", start, "MSRL model bundles (*.msrl manifest.json)")
    dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
    if not dialog.exec():
        return None
    chosen = Path(dialog.selectedFiles()[0])
    return chosen.parent if chosen.name == "manifest.json" else chosen


def choose_expression(parent: QWidget, settings: QSettings) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, "Load expression for this case",
                                          _folder(settings, "paths/expression_dir"), EXPRESSION_FILTER)
    return path or None


def choose_export(parent: QWidget, settings: QSettings, title: str, stem: str, suffix: str,
                  file_filter: str) -> str | None:
    start = Path(_folder(settings, "paths/export_dir")) / f"{stem}{suffix}"
    path, _ = QFileDialog.getSaveFileName(parent, title, str(start), file_filter)
    return path or None


def about_text(log_path: Path | None) -> str:
    log_line = str(log_path) if log_path else "not available (the log folder is not writable)"
    return (f"<h3>{APP} {__version__}</h3>"
            f"<p><b>{RESEARCH_USE_ONLY}.</b> Predictions are research outputs of the MSRL method "
            f"and must not be used to diagnose or treat patients.</p>"
            f"<p>Slides read with OpenSlide / tiffslide; Qt {qVersion()} (PySide6).</p>"
            f"<p>Log file:<br><code>{log_line}</code></p>")


class RecentFiles:
    """File ▸ Open recent: the last ``MAX_RECENT`` slides opened, newest first, in ``settings``."""

    def __init__(self, settings: QSettings, menu: QMenu, open_slide: Callable[[str], object]) -> None:
        self.settings, self.menu, self.open_slide = settings, menu, open_slide
        self.rebuild()

    def files(self) -> list[str]:
        value = self.settings.value("recent/files", [])
        if isinstance(value, str):  # QSettings INI gives a bare string for one-element lists
            value = [value]
        return [str(v) for v in (value or [])]

    def set(self, files: list[str]) -> None:
        self.settings.setValue("recent/files", files[:MAX_RECENT])
        self.settings.sync()
        self.rebuild()

    def remember(self, path: Path) -> None:
        item = str(path.resolve())
        self.set([item] + [f for f in self.files() if f != item])

    def forget(self, path: Path) -> None:
        item = str(path.resolve())
        if item in self.files():
            self.set([f for f in self.files() if f != item])

    def rebuild(self) -> None:
        self.menu.clear()
        files = self.files()
        for i, item in enumerate(files):
            act = self.menu.addAction(f"&{i + 1 if i < 9 else 0}  {Path(item).name}")
            act.setStatusTip(item)
            act.setToolTip(item)
            act.triggered.connect(lambda _=False, p=item: self.open_slide(p))
        if files:
            self.menu.addSeparator()
            self.menu.addAction("Clear list", lambda: self.set([]))
        self.menu.setEnabled(bool(files))


def stored_weights(settings: QSettings) -> dict[str, str]:
    """The checkpoint paths chosen in Settings ▸ Foundation models: ``{registry name: path}``."""
    settings.beginGroup(WEIGHTS_GROUP)
    try:
        return {key: str(settings.value(key, "")) for key in settings.childKeys() if str(settings.value(key, ""))}
    finally:
        settings.endGroup()


def hand_to_resolver(weights: Mapping[str, str]) -> None:
    """Give ``weights`` to the encoders' weights resolver (:mod:`msrl_model.weights`: no torch, so this
    costs nothing at start-up)."""
    from msrl_model.weights import use_app_weights

    use_app_weights(weights)


def apply_stored_weights(settings: QSettings) -> None:
    """At start-up: the stored choices to the resolver (torch stays unloaded until a model is needed)."""
    hand_to_resolver(stored_weights(settings))


class FoundationModelsDialog(QDialog):
    """Settings ▸ Foundation models: per registered foundation model, the checkpoint file on this computer.

    The choices are kept in ``settings`` (group ``foundation_models``) and handed to the one weights
    resolver (:mod:`msrl_model.weights`), where they come after ``--weights`` and before the
    ``MSRL_WEIGHTS_<NAME>`` variables, a TRIDENT ``local_ckpts.json`` and the Hugging Face cache.
    """

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        from msrl_model.encoders.release import registered_releases
        from msrl_model.weights import JSON_ENV, env_name

        super().__init__(parent)
        self.setWindowTitle("Foundation models")
        self.settings = settings
        self.releases = registered_releases()
        stored = stored_weights(settings)
        intro = QLabel("Where each foundation model's weights are on this computer: a model bundle trained on "
                       "that model's features needs them to analyse a slide. Nothing is ever downloaded. For an "
                       f"entry left empty, MSRL_WEIGHTS_<NAME>, the local_ckpts.json named by {JSON_ENV} and "
                       "then the Hugging Face cache are searched.")
        intro.setWordWrap(True)
        grid = QGridLayout()
        self.edits: dict[str, QLineEdit] = {}
        for i, rel in enumerate(self.releases):
            edit = QLineEdit(stored.get(rel.name, ""))
            edit.setObjectName(f"weights_{rel.name}")
            edit.setPlaceholderText(f"{rel.weights_file} — not set")
            edit.setMinimumWidth(360)
            browse = QPushButton("Browse…")
            browse.clicked.connect(lambda _=False, r=rel: self.browse(r))
            clear = QPushButton("Clear")
            clear.clicked.connect(edit.clear)
            edit.setToolTip(f"Empty: {env_name(rel.name)}, the local_ckpts.json named by {JSON_ENV}, then the "
                            f"Hugging Face cache are searched")
            hint = QLabel(f"{rel.hf_repo} · {rel.weights_file}, {rel.size_text}")
            hint.setStyleSheet("color: #9aa0a8; font-size: 11px;")
            grid.addWidget(QLabel(f"<b>{rel.name}</b>"), 2 * i, 0)
            grid.addWidget(edit, 2 * i, 1)
            grid.addWidget(browse, 2 * i, 2)
            grid.addWidget(clear, 2 * i, 3)
            grid.addWidget(hint, 2 * i + 1, 1, 1, 3)
            self.edits[rel.name] = edit
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(grid)
        layout.addWidget(buttons)

    def browse(self, rel) -> None:
        """Pick ``rel``'s checkpoint file (``rel`` a :class:`msrl_model.encoders.release.Release`)."""
        current = self.edits[rel.name].text().strip()
        start = str(Path(current).parent) if current else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(
            self, f"Weights of {rel.name} ({rel.weights_file})", start,
            f"{rel.weights_file} ({rel.weights_file});;Checkpoints (*.bin *.pth *.pt *.safetensors);;All files (*)")
        if path:
            self.edits[rel.name].setText(path)

    def paths(self) -> dict[str, str]:
        """``{name: path}`` of the entries that are set."""
        return {name: edit.text().strip() for name, edit in self.edits.items() if edit.text().strip()}

    def problems(self) -> list[str]:
        """One line per entry naming a file or folder that does not exist."""
        return [f"{name}: {path} does not exist" for name, path in self.paths().items()
                if not Path(path).expanduser().exists()]

    def save(self) -> None:
        """Store the entries (cleared ones removed) and hand them to the weights resolver."""
        self.settings.beginGroup(WEIGHTS_GROUP)
        self.settings.remove("")  # the whole group: cleared entries go
        for name, path in self.paths().items():
            self.settings.setValue(name, path)
        self.settings.endGroup()
        self.settings.sync()
        hand_to_resolver(self.paths())

    def accept(self) -> None:
        problems = self.problems()
        if problems:
            QMessageBox.warning(self, "Foundation models", "\n".join(problems) +
                                "\n\nChoose the checkpoint with Browse…, or clear the entry.")
            return
        self.save()
        super().accept()
