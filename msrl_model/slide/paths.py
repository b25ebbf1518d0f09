"""Which paths are slides: slide files, and DICOM whole-slide series (a folder of ``.dcm`` files).

A DICOM whole-slide image is not one file but a *series*: one ``.dcm`` instance per pyramid level
(a level may be split over several), plus label / overview / thumbnail instances, all in one folder.
MSRL Studio treats **the folder as the slide**: opening the folder or any one of its ``.dcm`` files
opens the same slide (:func:`slide_location` maps a ``.dcm`` file to its folder), whose id is the
folder's name and whose cache key hashes all its ``.dcm`` files. A folder holds one series; several
series in one folder are refused when opened (:func:`msrl_model.slide.reader.open_slide`).

These helpers only look at names and directory listings (no slide is opened, nothing heavy is
imported), so a worklist can call them on a folder of many slides:

* :func:`is_dicom_series` - a folder holding ``.dcm`` files;
* :func:`slide_paths_in` - the slides of a folder: its slide files and its DICOM-series subfolders
  (or the folder itself when it is a DICOM series);
* :func:`slide_id_of` - the id a slide's results and features are named by;
* :func:`sha256_head` - the cache key of a slide file or of a series' files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SLIDE_EXTENSIONS", "DICOM_SUFFIX", "is_dicom_series", "dicom_files", "slide_location",
           "slide_id_of", "slide_paths_in", "sha256_head"]

# File suffixes of the whole-slide formats OpenSlide or tiffslide read (lower case, with the dot).
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                    ".bif", ".dcm")
DICOM_SUFFIX = ".dcm"  # the instances of a DICOM series; matched case-insensitively
HASH_HEAD_BYTES = 1 << 20  # sha256_head hashes the first MiB of each file


def _is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() == DICOM_SUFFIX and path.is_file()


def dicom_files(folder: str | Path) -> list[Path]:
    """The ``.dcm`` files directly inside ``folder`` (not its subfolders), sorted by name; [] when
    ``folder`` is not a readable directory."""
    try:
        return sorted((p for p in Path(folder).iterdir() if _is_dicom_file(p)), key=lambda p: p.name)
    except OSError:  # not a directory, gone, or no permission
        return []


def is_dicom_series(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one ``.dcm`` file (a DICOM whole-slide series:
    MSRL Studio opens such a folder as one slide). Looks only at names, opens nothing."""
    path = Path(path)
    return path.is_dir() and bool(dicom_files(path))


def slide_location(path: str | Path) -> Path:
    """Where the slide of ``path`` lives: a ``.dcm`` file's folder (its series), else ``path`` itself."""
    path = Path(path)
    return path.parent if _is_dicom_file(path) else path


def slide_id_of(path: str | Path) -> str:
    """The slide's id (the name of its feature and result files): a file's stem (``a/CMU-1.svs`` ->
    ``CMU-1``), a DICOM series' folder name (``a/CMU-1.dicom`` and ``a/CMU-1.dicom/x.dcm`` ->
    ``CMU-1.dicom``: folder names are kept whole, as DICOM exports often name them by dotted UIDs)."""
    location = slide_location(path)
    return location.name if location.is_dir() else location.stem


def slide_paths_in(folder: str | Path) -> list[Path]:
    """The slides of ``folder``, sorted by name: ``[folder]`` when it is itself a DICOM series, else
    its slide files (by suffix, :data:`SLIDE_EXTENSIONS`) and its subfolders that are DICOM series.
    Not recursive beyond that one level; [] for an unreadable folder."""
    folder = Path(folder)
    if is_dicom_series(folder):
        return [folder]
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    slides = [p for p in children
              if (p.suffix.lower() in SLIDE_EXTENSIONS and p.is_file()) or is_dicom_series(p)]
    return sorted(slides, key=lambda p: (p.name, str(p)))


def _file_sha256_head(path: Path) -> str:
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read(HASH_HEAD_BYTES))
    digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()


def sha256_head(files: Iterable[str | Path]) -> str:
    """A slide's cache key, hex sha256, cheap to compute (reads at most 1 MiB per file).

    One file ``f``: ``sha256(first MiB of f ‖ size of f in bytes as decimal text)``. Several files (a
    DICOM series): ``h_i`` = that digest (hex) of each file, then ``sha256("\\n".join(sorted(h_i)))``:
    sorted by digest, so renaming or moving the folder keeps the key and changing, adding or removing
    a file changes it."""
    digests = [_file_sha256_head(Path(f)) for f in files]
    if not digests:
        raise ValueError("sha256_head needs at least one file")
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
