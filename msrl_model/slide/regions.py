r"""Regions of interest: include/exclude areas of a slide, which patches they select, and their GeoJSON.

A :class:`Region` is a polygonal area in level-0 pixels (a shapely ``Polygon``/``MultiPolygon``,
made valid) with a mode, ``include`` or ``exclude``. A :class:`RegionSet` selects the patches that
Analyze uses:

.. math::
    A = \Big(\bigcup_{\text{include}} R_i \ \text{(the whole slide when there is none)}\Big)
        \setminus \bigcup_{\text{exclude}} R_j, \qquad
    \text{patch } (x, y) \text{ kept} \iff (x + s/2,\ y + s/2) \in \bar A

with ``(x, y)`` the patch's level-0 top-left and ``s`` its side in level-0 pixels. **The centre rule**
(rather than ">= 50 % of the patch's area"): it is what a pathologist sees when drawing along the
tissue (a patch is in when the middle of it is), it is one vectorised point-in-polygon test per
patch (``shapely.intersects_xy`` on a prepared geometry, O(N log V)), and for a patch cut by a
straight edge it agrees with the 50 % area rule. A centre on a boundary counts as inside (closed
sets), so an exclude region's edge removes the patch and an include region's edge keeps it.

Files are GeoJSON as QuPath writes and reads them (``qupath-core/.../io/QuPathTypeAdapters.java``,
``PathObjectTypeAdapter.parseObject``): a ``FeatureCollection`` (or a bare list of features, or one
``Feature``) whose features carry ``properties.objectType`` (``annotation``), ``classification``
``{name, color [r, g, b]}`` and an ``id`` (a UUID). On import only ``annotation`` objects (or features
without ``objectType``, which QuPath also reads as annotations) with polygonal geometry become
regions; points, lines, detections, tiles and cells are skipped with a note. A region's mode is, in
order: the user's choice for its classification (``modes``), the mode MSRL Studio stored in its
``metadata.msrl_role``, else :func:`default_mode` of its classification. Files written here carry
the mode in ``metadata.msrl_role`` and QuPath's own classes ``Region*`` (include) and ``Ignore*``
(exclude) when the region has none, so they open in QuPath as-is and come back unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from msrl_model.errors import MSRLError
from msrl_model.files import atomic_write

__all__ = ["EXCLUDE", "INCLUDE", "MODES", "SKIP", "Region", "RegionSet", "brush_geometry", "classifications",
           "default_mode", "geometry_feature", "geometry_json", "mask_geometry", "parse_class_modes", "polygon_geometry",
           "read_regions", "regions_for_slides", "regions_from_geojson", "write_regions"]

INCLUDE, EXCLUDE, SKIP = "include", "exclude", "skip"
MODES = (INCLUDE, EXCLUDE)
ROLE_KEY = "msrl_role"  # the metadata key that records a region's mode ("include" | "exclude") or "tissue"
TISSUE_ROLE = "tissue"  # exported tissue contours: never read back as regions
# QuPath's built-in classes for these modes (qupath-core/.../classes/PathClass.java, StandardPathClasses)
QUPATH_CLASS = {INCLUDE: ("Region*", (0, 0, 180)), EXCLUDE: ("Ignore*", (180, 180, 180))}
# classification names (lower case, prefix) that default to exclude: QuPath's ignored classes and the usual
# names for what a pathologist wants left out
_EXCLUDE_PREFIXES = ("exclude", "ignore", "artefact", "artifact", "background", "pen", "fold", "bubble")
_COORD_DECIMALS = 2  # level-0 pixels: 1/100 px is finer than any drawing


def default_mode(classification: str | None) -> str:
    """The mode a QuPath classification name suggests: ``Region*`` includes; any other name ending with
    ``*`` is one of QuPath's ignored classes (``Ignore*``, ``Artefact*``, ``Background*``:
    ``PathClassTools.isIgnoredClass``) and excludes, as do names starting with exclude / ignore /
    artefact / background / pen / fold / bubble; everything else (Tumor, Stroma, none) includes."""
    name = (classification or "").strip()
    if name == "Region*":
        return INCLUDE
    low = name.lower()
    return EXCLUDE if name.endswith("*") or low.startswith(_EXCLUDE_PREFIXES) else INCLUDE


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The valid polygonal part of ``geometry`` (``Polygon``/``MultiPolygon``; empty when there is none)."""
    geometry = shapely.make_valid(geometry)
    if isinstance(geometry, (Polygon, MultiPolygon)):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    return shapely.union_all(parts) if parts else Polygon()


def polygon_geometry(points: Iterable[tuple[float, float]]) -> BaseGeometry:
    """The area inside a drawn outline (level-0 (x, y) vertices, closed automatically; a self-crossing
    outline is split into its valid pieces). Empty with fewer than 3 distinct vertices."""
    pts = [(float(x), float(y)) for x, y in points]
    if len({p for p in pts}) < 3:
        return Polygon()
    return _polygonal(Polygon(pts))


def brush_geometry(points: Iterable[tuple[float, float]], radius: float) -> BaseGeometry:
    """The area painted by a round brush of ``radius`` level-0 px along the stroke ``points``."""
    pts = [(float(x), float(y)) for x, y in points]
    if not pts or radius <= 0:
        return Polygon()
    line = shapely.Point(pts[0]) if len(pts) == 1 else LineString(pts)
    return _polygonal(line.buffer(float(radius), quad_segs=8))


def mask_geometry(mask: np.ndarray, downsample: float, size: tuple[float, float] | None = None) -> BaseGeometry:
    """The outline of a boolean mask (H x W, mask pixel (r, c) covering level-0
    ``[c·d, (c+1)·d) x [r·d, (r+1)·d)``) as a polygon in level-0 pixels, holes included, clipped to the
    slide's ``size`` (width, height) when given.

    The contours are traced at the half level between pixel centres (``skimage.measure.find_contours``
    on the zero-padded mask) and combined by symmetric difference (even-odd: a contour inside another is
    a hole), then simplified within half a mask pixel."""
    from skimage.measure import find_contours

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return Polygon()
    d = float(downsample)
    rings = []
    for contour in find_contours(np.pad(mask, 1).astype(np.float32), 0.5):
        xy = (contour[:, ::-1] - 1.0 + 0.5) * d  # (row, col) of the padded mask -> level-0 (x, y) of pixel centres
        if len(xy) >= 4:
            rings.append(Polygon(xy).buffer(0))
    area = Polygon()
    for ring in rings:
        area = area.symmetric_difference(ring)
    area = area.simplify(d / 2)
    return _polygonal(area.intersection(shapely.box(0, 0, *size)) if size is not None else area)


@dataclass(frozen=True)
class Region:
    """One include/exclude area of a slide."""

    geometry: BaseGeometry  # valid shapely Polygon / MultiPolygon in level-0 pixels
    mode: str = INCLUDE  # "include" | "exclude"
    name: str = ""  # shown in lists and in QuPath
    classification: str | None = None  # QuPath class name (None: QuPath's Region* / Ignore* on export)
    color: tuple[int, int, int] | None = None  # the classification's colour, RGB 0..255
    id: str = field(default_factory=lambda: str(uuid.uuid4()))  # UUID, QuPath's object id

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"region mode {self.mode!r} is not one of {MODES}")

    @property
    def area(self) -> float:
        """Area in level-0 pixels²."""
        return float(self.geometry.area)


def _ring(coords: Iterable[tuple[float, ...]]) -> list[list[float]]:
    return [[round(float(x), _COORD_DECIMALS), round(float(y), _COORD_DECIMALS)] for x, y, *_ in coords]


def geometry_json(geometry: BaseGeometry) -> dict[str, Any]:
    """A Polygon/MultiPolygon as a GeoJSON geometry with closed rings of [x, y] lists (coordinates rounded
    to 1/100 px); QuPath's reader builds JTS ``LinearRing`` s from them, which must be closed."""
    polygons = list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]
    rings = [[_ring(p.exterior.coords), *[_ring(h.coords) for h in p.interiors]] for p in polygons]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": rings[0]}
    return {"type": "MultiPolygon", "coordinates": rings}


def geometry_feature(geometry: BaseGeometry, object_type: str, *, feature_id: str, name: str | None = None,
                     classification: tuple[str, tuple[int, int, int]] | None = None,
                     measurements: Mapping[str, float] | None = None,
                     metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One QuPath GeoJSON feature: ``{type: Feature, id, geometry, properties: {objectType, name?,
    classification? {name, color}, measurements?, metadata?}}`` in the layout QuPath writes."""
    props: dict[str, Any] = {"objectType": object_type}
    if name:
        props["name"] = name
    if classification is not None:
        props["classification"] = {"name": classification[0], "color": [int(c) for c in classification[1]]}
    if measurements:
        props["measurements"] = {str(k): float(v) for k, v in measurements.items()}
    if metadata:
        props["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    return {"type": "Feature", "id": feature_id, "geometry": geometry_json(geometry), "properties": props}


@dataclass
class RegionSet:
    """The regions of one slide and the patch selection they make (see the module docstring)."""

    regions: list[Region] = field(default_factory=list)  # drawing order
    notes: list[str] = field(default_factory=list)  # what an import skipped, for the user

    def __len__(self) -> int:
        return len(self.regions)

    def __bool__(self) -> bool:
        return bool(self.regions)

    def of_mode(self, mode: str) -> list[Region]:
        return [r for r in self.regions if r.mode == mode]

    def area(self) -> BaseGeometry | None:
        """The selected area A (include union minus exclude union); None: no include region, i.e. the
        whole slide minus the exclude regions (:meth:`excluded`)."""
        include = self.of_mode(INCLUDE)
        if not include:
            return None
        return shapely.union_all([r.geometry for r in include]).difference(self.excluded())

    def excluded(self) -> BaseGeometry:
        return shapely.union_all([r.geometry for r in self.of_mode(EXCLUDE)]) if self.of_mode(EXCLUDE) \
            else Polygon()

    def select(self, coords: np.ndarray, patch_size_level0: float) -> np.ndarray:
        """(N,) bool: the patches (level-0 top-left ``coords`` (N, 2), side ``patch_size_level0``) whose
        centre lies in the selected area (boundary included). All True without regions."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        keep = np.ones(len(coords), dtype=bool)
        if not self.regions or not len(coords):
            return keep
        cx, cy = coords[:, 0] + patch_size_level0 / 2.0, coords[:, 1] + patch_size_level0 / 2.0
        include = self.area()
        if include is not None:
            shapely.prepare(include)
            keep &= shapely.intersects_xy(include, cx, cy)
        excluded = self.excluded()
        if not excluded.is_empty:  # an exclude region's boundary removes the patch too
            shapely.prepare(excluded)
            keep &= ~shapely.intersects_xy(excluded, cx, cy)
        return keep

    def apply(self, features: np.ndarray, coords: np.ndarray,
              patch_size_level0: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The rows of ``features`` (N, D) and ``coords`` (N, 2) that :meth:`select` keeps, with the
        :meth:`summary` of the selection. MSRLError when no patch is selected."""
        keep = self.select(coords, patch_size_level0)
        if not keep.any():
            raise MSRLError(
                f"none of the {len(keep):,} tissue patches has its centre inside the included regions (outside the "
                "excluded ones); draw the include regions over tissue, or remove the regions to analyse the whole slide")
        return np.asarray(features)[keep], np.asarray(coords)[keep], self.summary(int(keep.sum()), len(keep))

    def with_mode(self, index: int, mode: str) -> RegionSet:
        """A copy with region ``index`` set to ``mode``."""
        regions = list(self.regions)
        regions[index] = replace(regions[index], mode=mode)
        return RegionSet(regions, list(self.notes))

    def to_geojson(self) -> dict[str, Any]:
        """A QuPath ``FeatureCollection`` of ``annotation`` features (see the module docstring)."""
        return {"type": "FeatureCollection", "features": [self.feature(r) for r in self.regions]}

    @staticmethod
    def feature(region: Region) -> dict[str, Any]:
        """One region as a QuPath annotation feature (its classification, else QuPath's class for its mode)."""
        cls = (region.classification, region.color or QUPATH_CLASS[region.mode][1]) if region.classification \
            else QUPATH_CLASS[region.mode]
        return geometry_feature(region.geometry, "annotation", feature_id=region.id, name=region.name or None,
                                classification=cls, metadata={ROLE_KEY: region.mode})

    def fingerprint(self) -> str:
        """SHA-256 of the regions' modes and geometry (canonical, coordinates rounded): equal for equal regions."""
        canon = [[r.mode, geometry_json(shapely.normalize(r.geometry))] for r in self.regions]
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()

    def summary(self, kept: int, total: int) -> dict[str, Any]:
        """What a result records about the selection: counts, the rule and the fingerprint."""
        return {"include": len(self.of_mode(INCLUDE)), "exclude": len(self.of_mode(EXCLUDE)),
                "rule": "patch centre inside", "patches_selected": int(kept), "patches_on_tissue": int(total),
                "sha256": self.fingerprint()}


def _features(data: Any) -> list[Any]:
    """The feature list of a GeoJSON document as QuPath's ``PathIO.readObjectsFromGeoJSON`` accepts it: a
    FeatureCollection, a bare list of features, or one Feature."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if data.get("type") == "FeatureCollection" and isinstance(data.get("features"), list):
            return data["features"]
        if data.get("type") == "Feature":
            return [data]
    raise MSRLError("this is not a QuPath GeoJSON export: expected a FeatureCollection, a list of features or a "
                    "Feature (in QuPath: File ▸ Export objects as GeoJSON)")


def _classification(props: Mapping[str, Any]) -> tuple[str | None, tuple[int, int, int] | None]:
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls, None
    if not isinstance(cls, dict):
        return None, None
    name = cls.get("name") or (":".join(map(str, cls["names"])) if isinstance(cls.get("names"), list) else None)
    color = cls.get("color")
    rgb = tuple(int(c) for c in color[:3]) if isinstance(color, list) and len(color) >= 3 else None
    return (str(name) if name else None), rgb  # type: ignore[return-value]


def regions_from_geojson(data: Any, modes: Mapping[str, str] | None = None) -> RegionSet:
    """Regions from a parsed QuPath GeoJSON document (see the module docstring for what is read).

    ``modes``: classification name -> "include" | "exclude" | "skip" (the user's choice; "" names the
    unclassified annotations). Raises MSRLError when the document is not GeoJSON features."""
    modes = dict(modes or {})
    regions: list[Region] = []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for f in _features(data):
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            skip("features without a geometry")
            continue
        props = f.get("properties") if isinstance(f.get("properties"), dict) else {}
        kind = str(props.get("objectType") or props.get("object_type") or props.get("type") or "annotation")
        metadata = props.get("metadata") if isinstance(props.get("metadata"), dict) else {}
        role = str(metadata.get(ROLE_KEY) or "")
        if kind != "annotation" or role == TISSUE_ROLE:
            skip(f"{kind} objects" if kind != "annotation" else "tissue outlines")
            continue
        cls, color = _classification(props)
        mode = modes.get(cls or "") or (role if role in MODES else None) or default_mode(cls)
        if mode == SKIP:
            skip(f"annotations of class {cls or 'none'} (skipped by choice)")
            continue
        try:
            geometry = _polygonal(shape(f["geometry"]))
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            skip(f"annotations with unreadable geometry ({err})")
            continue
        if geometry.is_empty:
            skip("point or line annotations (no area)")
            continue
        fid = f.get("id")
        try:
            rid = str(uuid.UUID(str(fid)))
        except ValueError:
            rid = str(uuid.uuid4())
        regions.append(Region(geometry, mode, str(props.get("name") or ""), cls, color, rid))
    notes = [f"skipped {n} {why}" for why, n in skipped.items()]
    return RegionSet(regions, notes)


def classifications(path: str | os.PathLike) -> dict[str, int]:
    """Classification name ("" for none) -> number of annotations in a QuPath GeoJSON file, to let the user
    choose a mode per class before importing."""
    counts: dict[str, int] = {}
    for f in _features(_load(path)):
        props = f.get("properties") if isinstance(f, dict) and isinstance(f.get("properties"), dict) else {}
        if str(props.get("objectType") or "annotation") == "annotation":
            name = _classification(props)[0] or ""
            counts[name] = counts.get(name, 0) + 1
    return counts


def _load(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MSRLError(f"cannot read {path}: {err.strerror or err}; check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MSRLError(f"{path.name} is not a GeoJSON text file ({err}); export the annotations from QuPath with "
                        "File ▸ Export objects as GeoJSON") from None


def read_regions(path: str | os.PathLike, modes: Mapping[str, str] | None = None) -> RegionSet:
    """The regions of a QuPath GeoJSON file (:func:`regions_from_geojson`); MSRLError when it cannot be used."""
    return regions_from_geojson(_load(path), modes)


def write_regions(path: str | os.PathLike, regions: RegionSet) -> Path:
    """Write ``regions`` as QuPath GeoJSON (atomically); returns the path."""
    return atomic_write(Path(path), json.dumps(regions.to_geojson(), indent=1, allow_nan=False) + "\n")


def parse_class_modes(items: Iterable[str]) -> dict[str, str]:
    """``["Tumor=include", "Necrosis=exclude", "Other=skip"]`` (``msrl analyze --region-class``) as a dict;
    MSRLError on a malformed item."""
    modes: dict[str, str] = {}
    for item in items:
        name, sep, mode = str(item).rpartition("=")
        if not sep or mode.strip().lower() not in (*MODES, SKIP):
            raise MSRLError(f"--region-class {item!r}: write CLASS=include, CLASS=exclude or CLASS=skip "
                            "(CLASS as QuPath names it, e.g. Tumor=include)")
        modes[name.strip()] = mode.strip().lower()
    return modes


def regions_for_slides(slides: list[Path], source: str | os.PathLike | None,
                       modes: Mapping[str, str] | None = None) -> dict[Path, RegionSet | None]:
    """The regions of each slide (``msrl analyze --regions``): ``source`` a GeoJSON file (only with one
    slide: regions belong to a slide) or a folder holding ``<slide_id>.geojson`` (or
    ``<slide_id>.regions.geojson``) per slide; a slide without one, or ``source`` None, gets None (its
    whole tissue). MSRLError when a file cannot be used."""
    if source is None:
        return {s: None for s in slides}
    source = Path(source)
    if source.is_file():
        if len(slides) != 1:
            raise MSRLError(f"--regions {source.name} is one slide's regions but {len(slides)} slides are analysed; "
                            "give a folder of <slide_id>.geojson files instead")
        return {slides[0]: read_regions(source, modes)}
    if not source.is_dir():
        raise MSRLError(f"--regions {source}: no such file or folder")
    found: dict[Path, RegionSet | None] = {}
    for slide in slides:
        candidates = [source / f"{slide.stem}.geojson", source / f"{slide.stem}.regions.geojson"]
        path = next((c for c in candidates if c.is_file()), None)
        found[slide] = read_regions(path, modes) if path is not None else None
    return found
