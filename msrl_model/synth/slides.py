"""Synthetic H&E slides written as pyramidal Aperio SVS files (synthetic data, not real tissue).

``render_slide`` paints an RGB image (see :mod:`msrl_model.synth.render`), ``write_svs`` stores any
RGB image as an Aperio-style SVS that OpenSlide reports as vendor ``aperio`` and tiffslide reads,
and ``make_slide`` does both. Layout of the written file (as real Aperio scanners write it):

* page 0: level 0, tiled JPEG, ImageDescription ``Aperio Image Library ...|AppMag = 20|MPP = 0.5``;
* page 1: a stripped (untiled) JPEG thumbnail, at most 1024 px on its long side;
* pages 2..: further pyramid levels (downsample 4, 16, ...) as ordinary tiled JPEG pages;
* then a label (LZW, NewSubfileType 1) and a macro image (JPEG, NewSubfileType 9).

Everything is deterministic: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from msrl_model.errors import MSRLError
from msrl_model.synth.render import SlideMorphology, downsample_mean, render_slide

__all__ = ["SlideMorphology", "render_slide", "write_svs", "make_slide", "run_slide_command",
           "SLIDE_KINDS"]

SLIDE_KINDS = ("tissue", "blank")
_APERIO_HEADER = "Aperio Image Library v12.0.15"
_THUMBNAIL_MAX = 1024
_LEVEL_FACTOR = 4
_MIN_LEVEL_SIDE = 512
_MAX_SIDE = 200_000


def _pyramid_downsamples(width: int, height: int) -> list[int]:
    """Downsamples 1, 4, 16, ... adding a level while the previous one is longer than 512 px."""
    downsamples = [1]
    while max(width, height) // downsamples[-1] > _MIN_LEVEL_SIDE:
        nxt = downsamples[-1] * _LEVEL_FACTOR
        if min(width, height) // nxt < 1:
            break
        downsamples.append(nxt)
    return downsamples


def _resize_to(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average resize of an H x W x 3 uint8 image to height x width x 3 (Pillow box filter)."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BOX))


def _associated_images(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic barcode-like label (H x W x 3) and a macro photo of the whole glass."""
    label = np.full((300, 300, 3), 245, np.uint8)
    label[40:80, 30:270] = 20  # a dark "barcode" band
    label[40:80, 30:270:7] = 245
    label[120:140, 30:200] = 60  # a text-like bar
    h, w = rgb.shape[:2]
    mw = 1024
    mh = max(1, round(h * (mw * 0.7) / w))
    macro = np.full((max(mh + 40, 200), mw, 3), 230, np.uint8)
    macro[:, : int(mw * 0.25)] = (200, 205, 215)  # frosted label end of the glass
    small = _resize_to(rgb, int(mw * 0.7), mh)
    x0 = int(mw * 0.28)
    macro[20 : 20 + mh, x0 : x0 + small.shape[1]] = small
    return label, macro


def write_svs(path: str | Path, rgb: np.ndarray, mpp: float = 0.5, app_mag: float = 20,
              tile_size: int = 256, quality: int = 90) -> Path:
    """Write ``rgb`` (H x W x 3 uint8) as a pyramidal Aperio SVS at ``path``; returns the path.

    Level k has downsample 4**k; levels are added while the previous one is longer than 512 px.
    """
    import tifffile

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MSRLError(f"write_svs needs an H x W x 3 uint8 image, got shape {rgb.shape} "
                        f"dtype {rgb.dtype}; convert the image to 8-bit RGB first")
    if tile_size % 16 or tile_size <= 0:
        raise MSRLError(f"tile size {tile_size} is not a positive multiple of 16; use e.g. 256")
    height, width = rgb.shape[:2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    downsamples = _pyramid_downsamples(width, height)
    common = f"|AppMag = {app_mag:g}|MPP = {mpp:g}"
    head = (f"{_APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] "
            f"({tile_size}x{tile_size})")
    scan = ("|StripeWidth = 2040|ScanScope ID = SYNTH"
            "|Date = 01/01/26|Time = 00:00:00|Title = synthetic H&E (not a real patient)")
    tw = min(_THUMBNAIL_MAX, width)
    th = max(1, round(height * tw / width))
    if th > _THUMBNAIL_MAX:
        th, tw = _THUMBNAIL_MAX, max(1, round(width * _THUMBNAIL_MAX / height))

    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}}
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif:
        tif.write(rgb, photometric="rgb", **jpeg, tile=(tile_size, tile_size),
                  description=f"{head} JPEG/RGB Q={quality}{common}{scan}", metadata=None)
        thumb = _resize_to(rgb, tw, th)
        tif.write(thumb, photometric="rgb", **jpeg, rowsperstrip=16,
                  description=f"{_APERIO_HEADER}\r\n{width}x{height} -> {tw}x{th} - {common}",
                  metadata=None)
        level = rgb
        for ds_prev, ds in zip(downsamples, downsamples[1:]):
            level = downsample_mean(level, ds // ds_prev)
            lh, lw = level.shape[:2]
            tif.write(level, photometric="rgb", **jpeg, tile=(tile_size, tile_size),
                      description=f"{head} -> {lw}x{lh} JPEG/RGB Q={quality}{common}",
                      metadata=None)
        label, macro = _associated_images(rgb)
        tif.write(label, photometric="rgb", compression="lzw", subfiletype=1, rowsperstrip=64,
                  description=f"{_APERIO_HEADER}\r\nlabel {label.shape[1]}x{label.shape[0]}",
                  metadata=None)
        tif.write(macro, photometric="rgb", **jpeg, subfiletype=9, rowsperstrip=64,
                  description=f"{_APERIO_HEADER}\r\nmacro {macro.shape[1]}x{macro.shape[0]}",
                  metadata=None)
    return path


def _check_size(width: int, height: int) -> None:
    if not (64 <= width <= _MAX_SIDE and 64 <= height <= _MAX_SIDE):
        raise MSRLError(f"slide size {width}x{height} is out of range; use a width and height "
                        f"between 64 and {_MAX_SIDE} pixels")


def make_slide(path: str | Path, width: int, height: int, seed: int, kind: str = "tissue",
               morphology: SlideMorphology | None = None) -> Path:
    """Render a synthetic ``kind`` slide (``tissue`` or ``blank``); write it as SVS at ``path``."""
    if kind not in SLIDE_KINDS:
        raise MSRLError(f"unknown slide kind {kind!r}; use one of {', '.join(SLIDE_KINDS)}")
    _check_size(width, height)
    rgb = render_slide(width, height, seed, morphology or SlideMorphology(), kind=kind)
    return write_svs(path, rgb)


def run_slide_command(args: argparse.Namespace) -> int:
    """``msrl synth slide OUT --width W --height H --seed S --kind K``: write one slide."""
    if args.kind not in SLIDE_KINDS:
        raise MSRLError(f"unknown slide kind {args.kind!r}; use --kind "
                        f"{' or --kind '.join(SLIDE_KINDS)}")
    _check_size(args.width, args.height)
    if args.seed < 0:
        raise MSRLError(f"seed {args.seed} is negative; use a seed >= 0")
    out = Path(args.out)
    if out.suffix.lower() != ".svs":
        raise MSRLError(f"output {out} does not end in .svs; name the output e.g. slide.svs")
    path = make_slide(out, args.width, args.height, args.seed, kind=args.kind)
    levels = len(_pyramid_downsamples(args.width, args.height))
    size_mb = path.stat().st_size / 1e6
    print(path)
    print(f"synthetic {args.kind} slide {args.width}x{args.height}, seed {args.seed}, "
          f"{levels} levels, mpp 0.5, 20x, {size_mb:.1f} MB")
    return 0
