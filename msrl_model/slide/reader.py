"""Opening whole-slide images: one :class:`Slide` over OpenSlide, with tiffslide as the fallback.

``open_slide(path)`` tries OpenSlide first (every format libopenslide knows: Aperio SVS, Hamamatsu,
MIRAX, Leica, Philips, Ventana, DICOM, generic tiled TIFF) and falls back to tiffslide for TIFF files
OpenSlide refuses (e.g. some OME-TIFFs). A DICOM whole-slide series is opened by its folder or by any
one of its ``.dcm`` files, and either way the slide is the folder (see :mod:`msrl_model.slide.paths`:
its id is the folder's name, its cache key hashes the series' files). Whatever the backend, reads come back as H x W x 3 uint8
RGB with any alpha composited on white, and failures come back as :mod:`msrl_model.errors` classes
with one-line messages:

* :class:`NotASlideError` - no backend recognises the file (a text file named ``.svs``, a PNG, ...),
  or a folder holds no DICOM whole-slide file;
* :class:`CorruptSlideError` - the file is a TIFF / recognised slide format but is truncated or
  damaged. TIFF files are checked at open: every tile of every page must lie inside the file, and a
  probe read of the first and last tile of level 0 and of the lowest level must decode (DICOM too;
  every whole-slide ``.dcm`` file of a series must open);
* :class:`UnreadableTileError` - a later read failed; the message names the region;
* :class:`SlideError` - a readable file MSRL Studio does not analyse: not 8-bit (e.g. a float32 or
  16-bit TIFF), a folder holding several DICOM series (several slides), or declaring an absurd size (more than :data:`MAX_LEVEL0_PIXELS` px, or a TIFF page
  holding fewer tiles than its declared size needs - a few KB claiming 10⁶ × 10⁶ px). These checks
  read only the file's directory, so nothing proportional to the declared size is ever allocated.

Level-0 resolution (``mpp``, micrometres per pixel) comes from the metadata, else from the objective
power as ``mpp = 10 / objective_power`` (20x -> 0.5, 40x -> 0.25), else 0.25 is assumed; the last two
add a line to ``Slide.warnings`` and ``mpp_source`` says which applied.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from msrl_model.errors import CorruptSlideError, NotASlideError, SlideError, UnreadableTileError
from msrl_model.slide.paths import dicom_files, sha256_head, slide_id_of, slide_location

__all__ = ["Slide", "open_slide", "Backend", "MppSource", "ASSUMED_MPP"]

Backend = Literal["openslide", "tiffslide"]
MppSource = Literal["metadata", "objective-power", "assumed"]

ASSUMED_MPP = 0.25  # µm/px assumed when neither mpp nor objective power is recorded (a 40x scan)
_MPP_RANGE = (0.01, 100.0)  # plausible level-0 µm/px; values outside are treated as missing
MAX_LEVEL0_PIXELS = 10**11  # level-0 area refused above this (the largest 80x scans are ~6e10 px)
MAX_LEVEL0_SIDE = 1_000_000  # level-0 width/height refused above this
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PLAIN_IMAGE_MAGICS = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP"}


def _composite_on_white(arr: np.ndarray) -> np.ndarray:
    """H x W x C (C in 1, 2, 3, 4; uint8) -> H x W x 3 uint8 RGB, alpha (if any) composited on white."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        raise UnreadableTileError(f"unsupported pixel type {arr.dtype}; only 8-bit RGB slides are supported")
    channels = arr.shape[2]
    if channels in (2, 4):
        color, alpha = arr[..., :-1], arr[..., -1:]
        if not (alpha == 255).all():
            a = alpha.astype(np.uint16)
            color = ((color.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        arr = color
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def _pil_to_rgb(image) -> np.ndarray:
    """A PIL image of any mode -> H x W x 3 uint8 RGB on white."""
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA")
    return _composite_on_white(np.asarray(image))


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _check_tiff_tiles_inside(path: Path, size: int) -> None:
    """Raise CorruptSlideError if a TIFF's pages cannot be parsed or any tile/strip lies past the end."""
    import tifffile

    problems: list[str] = []

    def catch(record: logging.LogRecord) -> bool:  # tifffile logs (not raises) a broken IFD chain
        if record.levelno >= logging.ERROR:
            problems.append(record.getMessage())
            return False
        return True

    tiff_log = logging.getLogger("tifffile")
    tiff_log.addFilter(catch)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if not pages or problems:
                raise CorruptSlideError(
                    f"{path} is a truncated or damaged TIFF ({_short(problems[0]) if problems else 'no pages'}); "
                    "copy or export the slide again")
            _check_declared_size(path, int(pages[0].imagewidth), int(pages[0].imagelength))
            dtype = pages[0].dtype
            if dtype is None or np.dtype(dtype) != np.uint8:
                bits = f"{np.dtype(dtype).name} " if dtype is not None else ""
                raise SlideError(f"{path} is a {bits}TIFF; MSRL Studio reads 8-bit RGB whole-slide images "
                                 "(brightfield scans such as H&E) - convert it to 8-bit RGB or choose another slide")
            for index, page in enumerate(pages):
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                needed = math.prod(int(c) for c in page.chunked) if getattr(page, "chunked", None) else 0
                if offsets.size < needed:
                    raise CorruptSlideError(
                        f"{path} is damaged: TIFF page {index} declares {int(page.imagewidth)}x"
                        f"{int(page.imagelength)} px but holds only {offsets.size} of the {needed} tiles or "
                        "strips that needs; copy or export the slide again")
                if offsets.size and int((offsets + counts).max()) > size:
                    raise CorruptSlideError(
                        f"{path} is truncated: image data of TIFF page {index} ends past the end of the "
                        f"file ({size} bytes); copy or download the slide again")
    except SlideError:
        raise
    except Exception as exc:  # tifffile raises many types on damaged files
        raise CorruptSlideError(f"{path} is a damaged TIFF ({type(exc).__name__}: {_short(exc)}); "
                                "copy or export the slide again") from exc
    finally:
        tiff_log.removeFilter(catch)


def _check_declared_size(path: Path, width: int, height: int) -> None:
    """SlideError for a level 0 larger than any real scan (checked before anything is allocated)."""
    if width > MAX_LEVEL0_SIDE or height > MAX_LEVEL0_SIDE or width * height > MAX_LEVEL0_PIXELS:
        raise SlideError(f"{path} declares {width}x{height} px ({width * height:.1e} px) at level 0, more than "
                         f"any whole-slide scan (the limit is {MAX_LEVEL0_PIXELS:.0e} px and {MAX_LEVEL0_SIDE:,} px "
                         "a side); the file is damaged or not a slide - check it")


def _short(exc: BaseException, limit: int = 160) -> str:
    """One line of an exception's text."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _float_or_none(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


class Slide:
    """An open whole-slide image. Use as a context manager or call :meth:`close`.

    Coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)``; arrays are
    ``H x W x 3`` uint8 RGB. Reads are safe from several threads (both backends allow it).
    """

    def __init__(self, path: Path, backend: Backend, handle, files: list[Path] | None = None) -> None:
        self.path: Path = path  # the slide file, or the folder of a DICOM series
        self.files: list[Path] = files or [path]  # what the slide is read from (a series: its .dcm files)
        self.slide_id: str = slide_id_of(path)
        self.backend: Backend = backend
        self._handle = handle
        self._lock = threading.Lock()
        self.warnings: list[str] = []

        self.dimensions: tuple[int, int] = tuple(int(v) for v in handle.dimensions)
        self.level_count: int = int(handle.level_count)
        self.level_dimensions: list[tuple[int, int]] = [(int(w), int(h)) for w, h in handle.level_dimensions]
        self.level_downsamples: list[float] = [float(d) for d in handle.level_downsamples]
        self.properties: dict[str, str] = {str(k): str(v) for k, v in dict(handle.properties).items()
                                           if v is not None}
        self.associated_image_names: list[str] = sorted(handle.associated_images.keys())
        self.vendor: str | None = self._prop("vendor")
        self.objective_power: float | None = _float_or_none(self._prop("objective-power"))
        if self.objective_power is None:
            self.objective_power = _float_or_none(self.properties.get("aperio.AppMag"))
        self.mpp, self.mpp_source = self._resolve_mpp()

    # -- metadata ---------------------------------------------------------------------------------
    def _prop(self, name: str) -> str | None:
        """A backend-normalised property (``openslide.<name>`` or ``tiffslide.<name>``)."""
        value = self.properties.get(f"{self.backend}.{name}")
        return value if value not in (None, "", "None") else None

    def _resolve_mpp(self) -> tuple[float, MppSource]:
        mpps = [_float_or_none(self._prop(k)) for k in ("mpp-x", "mpp-y")]
        mpps = [m for m in mpps if m is not None and _MPP_RANGE[0] <= m <= _MPP_RANGE[1]]
        if not mpps:
            aperio = _float_or_none(self.properties.get("aperio.MPP"))
            if aperio is not None and _MPP_RANGE[0] <= aperio <= _MPP_RANGE[1]:
                mpps = [aperio]
        if mpps:
            return float(np.mean(mpps)), "metadata"
        if self.objective_power is not None:
            mpp = 10.0 / self.objective_power
            self.warnings.append(
                f"{self.path.name}: no microns-per-pixel in the metadata; using {mpp:.3g} µm/px from the "
                f"{self.objective_power:g}x objective power (10 / magnification) - check the scanner settings")
            return mpp, "objective-power"
        self.warnings.append(
            f"{self.path.name}: neither microns-per-pixel nor objective power in the metadata; assuming "
            f"{ASSUMED_MPP} µm/px (a 40x scan) - patches will be the wrong physical size if this is wrong")
        return ASSUMED_MPP, "assumed"

    def level_mpp(self, level: int) -> float:
        """µm/px at ``level`` (level-0 mpp times the level's downsample)."""
        return self.mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, ds: float) -> int:
        """The coarsest level whose downsample is <= ``ds`` (0.1 % tolerance), i.e. never upsampling."""
        fits = [level for level, level_ds in enumerate(self.level_downsamples) if level_ds <= ds * 1.001]
        return max(fits, key=lambda level: self.level_downsamples[level], default=0)

    # -- pixels -----------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size = (w, h)`` pixels of ``level`` whose top-left is ``location`` (level-0 px).

        Returns h x w x 3 uint8 RGB; parts outside the slide are white. Raises UnreadableTileError.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")
        x0, y0 = (int(v) for v in location)
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        try:
            if self.backend == "openslide":
                arr = _composite_on_white(np.asarray(self._handle.read_region((x0, y0), level, (w, h))))
            else:
                arr = self._read_tiffslide(x0, y0, level, w, h)
        except UnreadableTileError:
            raise
        except Exception as exc:
            if self.backend == "openslide":
                self._reopen()  # libopenslide refuses all further reads once one has failed
            raise UnreadableTileError(
                f"{self.path.name}: cannot decode the region at ({x0}, {y0}) level {level} size {w}x{h} "
                f"({_short(exc)}); the file may be damaged - re-export or copy it again") from exc
        return arr

    def _read_tiffslide(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        arr = self._handle.read_region((x0, y0), level, (w, h), as_array=True, padding=True)
        ds = self.level_downsamples[level]
        rx0, ry0 = int(x0 / ds), int(y0 / ds)  # tiffslide's own level-coordinate transform
        lw, lh = self.level_dimensions[level]
        arr = _composite_on_white(np.asarray(arr))
        if rx0 < 0 or ry0 < 0 or rx0 + w > lw or ry0 + h > lh:  # tiffslide pads with black: make it white
            arr = arr.copy()
            arr[: max(0, min(h, -ry0))] = 255
            arr[max(0, min(h, lh - ry0)):] = 255
            arr[:, : max(0, min(w, -rx0))] = 255
            arr[:, max(0, min(w, lw - rx0)):] = 255
        return arr

    def _reopen(self) -> None:
        import openslide

        with self._lock:
            try:
                old, self._handle = self._handle, openslide.OpenSlide(str(self.files[0]))
                old.close()
            except Exception:  # keep the old handle; the next read reports its own error
                pass

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (``label``, ``macro``, ``thumbnail``...) as H x W x 3 uint8 RGB."""
        if name not in self.associated_image_names:
            raise SlideError(f"{self.path.name} has no associated image {name!r}; "
                             f"it has: {', '.join(self.associated_image_names) or 'none'}")
        try:
            return _pil_to_rgb(self._handle.associated_images[name])
        except Exception as exc:
            raise UnreadableTileError(f"{self.path.name}: cannot decode the associated image {name!r} "
                                      f"({_short(exc)}); the file may be damaged") from exc

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide scaled to fit ``max_size x max_size`` (aspect kept), H x W x 3 uint8 RGB."""
        from PIL import Image

        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_size
        size = (max(1, round(w0 / scale)), max(1, round(h0 / scale)))
        level = self.best_level_for_downsample(scale)
        region = self.read_region((0, 0), level, self.level_dimensions[level])
        return np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BOX))

    def sha256_head(self) -> str:
        """The slide's cache key: hex sha256 of the file's first MiB followed by its size in bytes as
        decimal text; for a DICOM series, of the files' such digests (:func:`~msrl_model.slide.paths.sha256_head`)."""
        return sha256_head(self.files)

    def size_bytes(self) -> int:
        """Bytes on disk of the slide's files (a DICOM series: all its files)."""
        return sum(f.stat().st_size for f in self.files)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (f"Slide({self.slide_id!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp:.4g} "
                f"[{self.mpp_source}], backend={self.backend})")

    def _probe(self) -> None:
        """Decode the first and last tile of level 0 and of the lowest level; CorruptSlideError if not."""
        for level in sorted({0, self.level_count - 1}):
            lw, lh = self.level_dimensions[level]
            ds = self.level_downsamples[level]
            for lx, ly in ((0, 0), (lw - 1, lh - 1)):
                try:
                    self.read_region((int(lx * ds), int(ly * ds)), level, (1, 1))
                except UnreadableTileError as exc:
                    raise CorruptSlideError(
                        f"{self.path} is damaged: a test read of level {level} failed "
                        f"({_short(exc.__cause__ or exc)}); copy or export the slide again") from exc


def _open_backend(path: Path, backend: Backend):
    if backend == "openslide":
        import openslide

        return openslide.OpenSlide(str(path))
    import tiffslide

    return tiffslide.TiffSlide(str(path))


def _checked(slide: Slide) -> Slide:
    """``slide`` once its declared size is plausible and its probe reads decode; else closed and raised."""
    try:
        _check_declared_size(slide.path, *slide.dimensions)
        slide._probe()
    except SlideError:
        slide.close()
        raise
    return slide


def _dicom_series_uid(path: Path) -> str:
    """The SeriesInstanceUID of a DICOM whole-slide file (OpenSlide opens its series to read it)."""
    import openslide

    with openslide.OpenSlide(str(path)) as handle:
        return str(handle.properties.get("dicom.SeriesInstanceUID", ""))


def _open_dicom_series(folder: Path) -> Slide:
    """The DICOM whole-slide series in ``folder`` as one slide (OpenSlide; see :mod:`msrl_model.slide.paths`).

    Every ``.dcm`` file is asked for its series: OpenSlide opens a series from any one of its files
    and silently skips files it cannot read or of another series, so without this a damaged level
    or a second slide in the folder would go unnoticed. Other DICOM objects (a CT image, a report:
    the ``DICM`` marker at byte 128 but not a whole-slide image) are ignored.
    """
    import openslide

    files = dicom_files(folder)
    if not files:
        raise NotASlideError(f"{folder} is a folder without DICOM (.dcm) files; a folder opens as a slide only "
                             "when it holds a DICOM whole-slide series - choose a slide file or such a folder")
    series: dict[str, list[Path]] = {}
    failures: list[str] = []
    for file in files:
        if openslide.OpenSlide.detect_format(str(file)) != "dicom":
            if _head(file, 132)[128:] != b"DICM":  # not even a DICOM file: truncated, or misnamed
                failures.append(f"{file.name} is not a readable DICOM file")
            continue
        try:
            series.setdefault(_dicom_series_uid(file), []).append(file)
        except Exception as exc:  # OpenSlide raises assorted types on bad input
            failures.append(f"{file.name}: {_short(exc)}")
    if failures:
        raise CorruptSlideError(f"{folder}: {len(failures)} of its {len(files)} .dcm files cannot be read "
                                f"({failures[0]}); the series may be truncated or damaged - copy or export it again")
    if not series:
        raise NotASlideError(f"{folder}: none of its {len(files)} .dcm files is a DICOM whole-slide image "
                             "(VL Whole Slide Microscopy); choose the folder of a whole-slide series")
    if len(series) > 1:
        raise SlideError(f"{folder} holds {len(series)} DICOM series, i.e. {len(series)} slides; put each "
                         "series' .dcm files in a folder of its own and open one folder at a time")
    members = next(iter(series.values()))
    try:
        slide = Slide(folder, "openslide", _open_backend(members[0], "openslide"), files=members)
    except Exception as exc:
        raise CorruptSlideError(f"{folder}: OpenSlide cannot open the DICOM series ({_short(exc)}); it may be "
                                "damaged - copy or export it again") from exc
    return _checked(slide)


def open_slide(path: str | Path, backend: Literal["auto", "openslide", "tiffslide"] = "auto") -> Slide:
    """Open a whole-slide image. ``backend="auto"`` tries OpenSlide, then tiffslide for TIFF files.

    ``path`` may be a DICOM series: its folder or any one of its ``.dcm`` files (OpenSlide only).

    Raises SlideError (missing file), NotASlideError (no backend recognises it) or CorruptSlideError
    (a TIFF or recognised slide format that is truncated or damaged).
    """
    if backend not in ("auto", "openslide", "tiffslide"):
        raise ValueError(f"backend must be 'auto', 'openslide' or 'tiffslide', got {backend!r}")
    path = Path(path).expanduser()
    series = slide_location(path)
    if series.is_dir():
        if backend == "tiffslide":
            raise NotASlideError(f"{path}: tiffslide does not read DICOM; open it with backend 'openslide'")
        return _open_dicom_series(series)
    if not path.is_file():
        raise SlideError(f"{path}: no such file; check the path")
    size = path.stat().st_size
    if size == 0:
        raise CorruptSlideError(f"{path} is empty (0 bytes); copy or download the slide again")
    head = _head(path, 8)
    is_tiff = head[:4] in _TIFF_MAGICS

    import openslide

    detected = openslide.OpenSlide.detect_format(str(path))
    if backend == "auto":
        candidates: list[Backend] = (["openslide"] if detected else []) + (["tiffslide"] if is_tiff else [])
    else:
        candidates = [backend]

    if is_tiff:
        _check_tiff_tiles_inside(path, size)

    failures: list[str] = []
    for name in candidates:
        try:
            handle = _open_backend(path, name)
        except Exception as exc:  # both libraries raise assorted types on bad input
            failures.append(f"{name}: {_short(exc)}")
            continue
        try:
            slide = Slide(path, name, handle)
        except Exception as exc:  # a backend may refuse only when asked for the levels
            handle.close()
            failures.append(f"{name}: {_short(exc)}")
            continue
        return _checked(slide)

    if is_tiff or detected:
        kind = f"{detected} slide" if detected else "TIFF file"
        reason = "; ".join(failures) or "no reader accepts it"
        raise CorruptSlideError(f"{path} looks like a {kind} but cannot be opened ({reason}); it may be "
                                "truncated or damaged - copy or export it again")
    plain = next((fmt for magic, fmt in _PLAIN_IMAGE_MAGICS.items() if head.startswith(magic)), None)
    what = f"a plain {plain} image, not a whole-slide image" if plain else \
        "not a whole-slide image OpenSlide or tiffslide can read"
    raise NotASlideError(f"{path} is {what}; choose a whole-slide file (.svs, .tif, .ndpi, .mrxs, .scn, "
                         ".vms, .bif, or a DICOM series: its folder or one of its .dcm files)")
