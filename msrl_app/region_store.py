"""The regions of interest of the open slide, Qt-free: drawn or imported, saved per slide, reloaded.

:class:`RegionStore` holds a :class:`~msrl_model.slide.regions.RegionSet` (replaced, never changed in
place, so the set an Analyze took stays as it was) and announces every change on ``changed``. Each
change is saved at once as QuPath GeoJSON next to the app's results of the slide:
``<cache>/results/<slide stem>-<first 12 hex of the slide's sha256_head>.regions.geojson`` (the
fingerprint of the slide's bytes, so the regions follow the slide when it is moved or renamed and two
slides with the same name keep their own); opening the slide again loads them. An empty set removes
the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from msrl_app.events import EventSignal
from msrl_model.slide.regions import MODES, Region, RegionSet, read_regions, write_regions

log = logging.getLogger(__name__)

__all__ = ["RegionStore", "regions_file"]


def regions_file(folder: Path, slide: Path, sha256_head: str) -> Path:
    """Where the regions of ``slide`` (with that fingerprint) are kept in the results ``folder``."""
    return Path(folder) / f"{Path(slide).stem}-{sha256_head[:12]}.regions.geojson"


class RegionStore:
    """The open slide's regions (see the module docstring). ``changed`` is emitted with the new set."""

    def __init__(self, folder: Path | None = None) -> None:
        self.changed = EventSignal("regions")
        self.folder = folder  # the results folder; None: ``<cache>/results`` at each slide
        self.regions = RegionSet()  # the current set (replaced at each change)
        self.path: Path | None = None  # the file of the open slide's regions; None: no slide
        self.bounds: BaseGeometry | None = None  # the slide's rectangle (level-0 px): regions are clipped to it

    def results_folder(self) -> Path:
        """The folder of the saved regions (``folder``, else ``<cache>/results``)."""
        from msrl_app.analysis import cache_dir

        return self.folder if self.folder is not None else cache_dir() / "results"

    def open_slide(self, slide: Path | None, handle: Any = None) -> None:
        """Switch to ``slide`` (its opened handle gives the fingerprint): load its saved regions, if any.
        A saved file that cannot be read is logged and left alone (the slide opens without regions)."""
        self.path, self.bounds, regions = None, None, RegionSet()
        if slide is not None and getattr(handle, "dimensions", None):
            self.bounds = shapely.box(0, 0, *handle.dimensions)
        if slide is not None and callable(getattr(handle, "sha256_head", None)):
            try:
                self.path = regions_file(self.results_folder(), slide, handle.sha256_head())
                if self.path.is_file():
                    regions = read_regions(self.path)
            except Exception as exc:  # noqa: BLE001 - a damaged file never stops a slide from opening
                log.warning("regions of %s not loaded from %s: %s", slide.name, self.path, exc)
        self._set(regions, save=False)

    def _set(self, regions: RegionSet, save: bool = True) -> None:
        self.regions = regions
        if save and self.path is not None:
            if regions:
                write_regions(self.path, regions)
            else:
                self.path.unlink(missing_ok=True)
        self.changed.emit(regions)

    def current(self) -> RegionSet | None:
        """The regions Analyze uses; None when there are none (the whole tissue is analysed)."""
        return self.regions if self.regions else None

    def add(self, geometry: BaseGeometry, mode: str, name: str = "") -> bool:
        """Add a drawn region (False, nothing added, when the geometry has no area)."""
        if self.bounds is not None:
            geometry = geometry.intersection(self.bounds)
        if geometry.is_empty or geometry.area <= 0:
            return False
        n = len(self.regions.of_mode(mode)) + 1
        region = Region(geometry, mode, name or f"{mode.capitalize()} {n}")
        self._set(RegionSet([*self.regions.regions, region]))
        return True

    def remove(self, index: int) -> None:
        regions = list(self.regions.regions)
        del regions[index]
        self._set(RegionSet(regions))

    def set_mode(self, index: int, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"region mode {mode!r} is not one of {MODES}")
        self._set(self.regions.with_mode(index, mode))

    def clear(self) -> None:
        self._set(RegionSet())

    def import_file(self, path: str | os.PathLike, modes: Mapping[str, str] | None = None) -> RegionSet:
        """Add the annotations of a QuPath GeoJSON file (``modes``: class name -> include / exclude / skip);
        returns what was imported (its ``notes`` say what was skipped). MSRLError when the file is unusable."""
        imported = read_regions(path, modes)
        if self.bounds is not None:
            imported = RegionSet([replace(r, geometry=r.geometry.intersection(self.bounds)) for r in imported.regions
                                  if r.geometry.intersects(self.bounds)], imported.notes)
        if imported:
            self._set(RegionSet([*self.regions.regions, *imported.regions]))
        return imported

    def index_at(self, x: float, y: float) -> int | None:
        """The topmost (last drawn) region containing the level-0 point (x, y), or None."""
        for i in range(len(self.regions) - 1, -1, -1):
            if shapely.intersects_xy(self.regions.regions[i].geometry, x, y):
                return i
        return None
