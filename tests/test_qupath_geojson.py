"""Regions of interest (msrl_model.slide.regions) and QuPath GeoJSON (msrl_model.infer.geojson): the patch
selection against the geometry, QuPath's annotation export read as regions, and the export checked
against the rules of QuPath's GeoJSON reader (:func:`qupath_rule_violations`)."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from msrl_model.infer.geojson import qupath_geojson, tissue_outline
from msrl_model.infer.random_bundle import make_random_bundle
from msrl_model.slide.regions import (EXCLUDE, INCLUDE, SKIP, Region, RegionSet, brush_geometry, default_mode,
                                      mask_geometry, polygon_geometry, read_regions, regions_from_geojson,
                                      write_regions)

OBJECT_TYPES = {"tile", "cell", "detection", "annotation", "tmaCore", "root", "unknown"}
GEOMETRY_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}


def qupath_rule_violations(doc, width: float, height: float) -> list[str]:
    """What QuPath's GeoJSON import would reject or misread in ``doc``; [] when it imports as-is.

    Derived from QuPath's reader (github.com/qupath/qupath, qupath-core/src/main/java/qupath/lib/io/):
    ``PathIO.readObjectsFromGeoJSON`` / ``QuPathTypeAdapters.PathObjectCollectionTypeAdapter.read`` take a
    FeatureCollection's ``features`` array (or a bare array); ``QuPathTypeAdapters.PathObjectTypeAdapter
    .parseObject`` reads ``id`` as a UUID (else ignored), ``geometry`` through ``ROITypeAdapters
    .parseGeometry`` (a ``type`` among the GeoJSON geometries and ``coordinates``; polygon rings become JTS
    ``LinearRing`` s, which must be closed with at least 4 points), ``properties.objectType`` (tile, cell,
    detection, annotation, tmaCore, root; others become annotations with a warning), ``classification``
    through ``GsonTools.PathClassTypeAdapter.read`` (an object needs ``name``/``names`` AND ``color``, else a
    JsonParseException; color an [r, g, b(, a)] int array), ``measurements`` through
    ``MeasurementListTypeAdapter.read`` (an object of numbers; we also require them finite) and ``metadata``
    (an object of primitives). Coordinates are level-0 pixels of the image: we require them inside
    [0, width] x [0, height]."""
    problems: list[str] = []
    if not (isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list)):
        return ["not a FeatureCollection with a features array"]
    for k, f in enumerate(doc["features"]):
        where = f"feature {k}"
        if not isinstance(f, dict) or f.get("type") != "Feature":
            problems.append(f"{where}: not a Feature")
            continue
        try:
            uuid.UUID(str(f.get("id")))
        except ValueError:
            problems.append(f"{where}: id {f.get('id')!r} is not a UUID")
        geom = f.get("geometry")
        if not isinstance(geom, dict) or geom.get("type") not in GEOMETRY_TYPES or "coordinates" not in geom:
            problems.append(f"{where}: geometry without a GeoJSON type and coordinates")
            continue
        polygons = {"Polygon": [geom["coordinates"]], "MultiPolygon": geom["coordinates"]}.get(geom["type"], [])
        for poly in polygons:
            for ring in poly:
                if len(ring) < 4 or ring[0] != ring[-1]:
                    problems.append(f"{where}: a ring is not closed with >= 4 points")
                for x, y in ring:
                    if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
                        problems.append(f"{where}: ({x}, {y}) outside the {width}x{height} slide")
                        break
        props = f.get("properties")
        if not isinstance(props, dict):
            problems.append(f"{where}: no properties")
            continue
        if props.get("objectType") not in OBJECT_TYPES:
            problems.append(f"{where}: objectType {props.get('objectType')!r}")
        cls = props.get("classification")
        if cls is not None and not (isinstance(cls, str) or (
                isinstance(cls, dict) and ("name" in cls or "names" in cls) and isinstance(cls.get("color"), list)
                and len(cls["color"]) in (3, 4) and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"]))):
            problems.append(f"{where}: classification {cls!r} is not {{name, color [r, g, b]}}")
        m = props.get("measurements")
        if m is not None and not (isinstance(m, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for k, v in m.items())):
            problems.append(f"{where}: measurements are not an object of finite numbers")
        md = props.get("metadata")
        if md is not None and not (isinstance(md, dict) and all(isinstance(v, (str, int, float, bool)) for v in md.values())):
            problems.append(f"{where}: metadata is not an object of primitives")
    return problems


def qupath_annotations(width: int, height: int) -> dict:
    """A file as QuPath 0.5 exports annotations: a tumour with a hole, an ignored fold, a Region*, a point,
    a detection (skipped) and an unclassified annotation."""
    def feature(geometry, props, fid=None):
        return {"type": "Feature", "id": fid or str(uuid.uuid4()), "geometry": geometry, "properties": props}

    tumour = [[[100, 100], [1500, 100], [1500, 2000], [100, 2000], [100, 100]],
              [[600, 600], [900, 600], [900, 900], [600, 900], [600, 600]]]
    fold = [[[1000, 1200], [1400, 1200], [1400, 1500], [1000, 1500], [1000, 1200]]]
    return {"type": "FeatureCollection", "features": [
        feature({"type": "Polygon", "coordinates": tumour},
                {"objectType": "annotation", "name": "tumour", "classification": {"name": "Tumor", "color": [200, 0, 0]}}),
        feature({"type": "Polygon", "coordinates": fold},
                {"objectType": "annotation", "classification": {"name": "Ignore*", "color": [180, 180, 180]}}),
        feature({"type": "Point", "coordinates": [50, 50]}, {"objectType": "annotation"}),
        feature({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]}, {"objectType": "detection"}),
        feature({"type": "Polygon", "coordinates": [[[1600, 100], [width, 100], [width, 400], [1600, 400], [1600, 100]]]},
                {"objectType": "annotation", "isLocked": False}),
    ]}


def grid(width: int, height: int, step: int) -> np.ndarray:
    return np.array([[x, y] for y in range(0, height - step + 1, step) for x in range(0, width - step + 1, step)],
                    dtype=np.int64)


def test_default_modes_follow_qupath_classes():
    assert [default_mode(n) for n in ("Region*", "Tumor", None, "Stroma")] == [INCLUDE] * 4
    assert [default_mode(n) for n in ("Ignore*", "Artefact*", "Background*", "Exclude", "pen mark")] == [EXCLUDE] * 5


def test_patch_centre_rule_against_the_geometry():
    size = 256
    coords = grid(4096, 4096, size)
    include = Region(polygon_geometry([(300, 300), (3000, 300), (3000, 2500), (300, 2500)]), INCLUDE)
    exclude = Region(brush_geometry([(1408, 1408)], 500), EXCLUDE)  # a disc of radius 500 (32-gon)
    keep = RegionSet([include, exclude]).select(coords, size)
    centres = coords + size / 2
    in_rect = (centres[:, 0] >= 300) & (centres[:, 0] <= 3000) & (centres[:, 1] >= 300) & (centres[:, 1] <= 2500)
    dist = np.hypot(centres[:, 0] - 1408, centres[:, 1] - 1408)
    assert not np.any((dist > 495) & (dist < 505)), "no centre near the polygonised circle: the expectation is exact"
    np.testing.assert_array_equal(keep, in_rect & (dist >= 500))
    assert 0 < keep.sum() < in_rect.sum()
    # exclude only: every patch but those in the disc; no regions: every patch
    np.testing.assert_array_equal(RegionSet([exclude]).select(coords, size), dist >= 500)
    assert RegionSet().select(coords, size).all()


def test_apply_refuses_a_selection_without_patches():
    from msrl_model.errors import MSRLError

    coords = grid(1024, 1024, 256)
    regions = RegionSet([Region(box(5000, 5000, 6000, 6000), INCLUDE)])
    with pytest.raises(MSRLError, match="none of the 16 tissue patches"):
        regions.apply(np.zeros((16, 3)), coords, 256)


def test_qupath_annotations_become_regions(tmp_path):
    path = tmp_path / "annotations.geojson"
    path.write_text(json.dumps(qupath_annotations(2220, 2967)))
    regions = read_regions(path)
    assert [(r.classification, r.mode) for r in regions.regions] == [("Tumor", INCLUDE), ("Ignore*", EXCLUDE),
                                                                     (None, INCLUDE)]
    assert regions.regions[0].area == pytest.approx(1400 * 1900 - 300 * 300)  # the hole is kept
    assert sorted(regions.notes) == ["skipped 1 detection objects", "skipped 1 point or line annotations (no area)"]
    chosen = read_regions(path, {"Tumor": EXCLUDE, "": SKIP})  # the user's choice per class
    assert [(r.classification, r.mode) for r in chosen.regions] == [("Tumor", EXCLUDE), ("Ignore*", EXCLUDE)]
    # a bare list of features and a single Feature are read as QuPath reads them
    features = qupath_annotations(2220, 2967)["features"]
    assert len(regions_from_geojson(features)) == 3 and len(regions_from_geojson(features[0])) == 1


def test_regions_round_trip_through_their_file(tmp_path):
    regions = RegionSet([Region(polygon_geometry([(0, 0), (500, 0), (500, 800)]), INCLUDE, "a"),
                         Region(brush_geometry([(100, 100), (300, 200)], 40), EXCLUDE)])
    write_regions(tmp_path / "r.geojson", regions)
    back = read_regions(tmp_path / "r.geojson")
    assert [(r.mode, r.name, r.id) for r in back.regions] == [(r.mode, r.name, r.id) for r in regions.regions]
    assert back.fingerprint() == regions.fingerprint()
    assert qupath_rule_violations(regions.to_geojson(), 500, 800) == []


def test_mask_outline_keeps_holes_and_stays_in_the_slide():
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:35, 10:45] = True
    mask[15:20, 20:25] = False  # a hole
    outline = mask_geometry(mask, 16.0, (800, 640))
    assert outline.geom_type == "Polygon" and len(outline.interiors) == 1
    assert outline.area == pytest.approx((30 * 35 - 5 * 5) * 16 ** 2, rel=0.05)
    assert shapely.box(0, 0, 800, 640).contains(outline)


def test_rule_check_catches_what_qupath_rejects():
    good = {"type": "Feature", "id": str(uuid.uuid4()), "properties": {"objectType": "annotation"},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]}}
    assert qupath_rule_violations({"type": "FeatureCollection", "features": [good]}, 10, 10) == []
    bad = [
        {**good, "id": "patch-1"},
        {**good, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5]]]}},
        {**good, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [5, 5], [0, 0]]]}},
        {**good, "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {**good, "properties": {"objectType": "tile", "measurements": {"a": float("nan")}}},
    ]
    for feature in bad:
        assert qupath_rule_violations({"type": "FeatureCollection", "features": [feature]}, 10, 10), feature


@pytest.fixture(scope="module")
def he_bundle(tmp_path_factory):
    from msrl_model.encoders import build_encoder

    enc = build_encoder("builtin-he")
    return make_random_bundle(tmp_path_factory.mktemp("b") / "he", patch_dim=enc.dim, n_cases=40, seed=3,
                              encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})


def test_regions_choose_the_analysed_patches_of_the_cmu_slide(cmu_slide, he_bundle, tmp_path):
    """Predictor.predict_slide with regions: the cached full-slide features are filtered (no second
    extraction), the result's coords are exactly the selected ones, and the export passes QuPath's rules."""
    from msrl_model.features.h5io import read_features
    from msrl_model.infer.predictor import Predictor
    from msrl_model.progress import exhaust

    predictor = Predictor.from_bundle(he_bundle, device="cpu")
    cache = tmp_path / "cache"
    whole = exhaust(predictor.predict_slide(cmu_slide, cache, batch_size=16))
    (h5,) = cache.glob("*.h5")
    full = read_features(h5)
    regions = read_regions_from(qupath_annotations(2220, 2967), tmp_path)
    mtime = h5.stat().st_mtime_ns
    part = exhaust(predictor.predict_slide(cmu_slide, cache, batch_size=16, regions=regions))
    assert h5.stat().st_mtime_ns == mtime  # the cache was read, not rewritten
    expected = full.coords[regions.select(full.coords, part.patch_size_level0)]
    assert part.coords == expected.tolist() and 0 < len(part.coords) < len(whole.coords) == len(full.coords)
    centres = np.asarray(part.coords) + part.patch_size_level0 / 2
    tumour, fold = regions.regions[0].geometry, regions.regions[1].geometry
    assert all(not fold.intersects(Point(c)) for c in centres)
    assert all(tumour.intersects(Point(c)) or regions.regions[2].geometry.intersects(Point(c)) for c in centres)
    assert part.regions["patches_selected"] == len(part.coords) and part.regions["patches_on_tissue"] == len(whole.coords)
    assert all(len(t.attention) == len(part.coords) for t in part.tasks.values())
    doc = qupath_geojson(part, tissue=tissue_outline(cmu_slide), regions=regions)
    assert qupath_rule_violations(json.loads(json.dumps(doc)), 2220, 2967) == []
    tiles = [f for f in doc["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == len(part.coords)
    assert set(tiles[0]["properties"]["measurements"]) == {"survival: attention", "survival: attention percentile",
                                                           "EGFR_mut: attention", "EGFR_mut: attention percentile"}
    annotations = [f["properties"]["classification"]["name"] for f in doc["features"]
                   if f["properties"]["objectType"] == "annotation"]
    assert annotations == ["Tissue", "Tumor", "Ignore*", "Region*"]


def read_regions_from(doc: dict, folder) -> RegionSet:
    path = folder / "annotations.geojson"
    path.write_text(json.dumps(doc))
    return read_regions(path)


def test_msrl_analyze_with_regions_and_geojson(cmu_slide, he_bundle, tmp_path, capsys):
    """``msrl analyze --regions FILE --region-class CLASS=MODE --geojson`` on the CMU slide: the regions
    choose the patches, are saved beside the result, a change of regions re-analyses, and the QuPath
    file passes QuPath's rules."""
    import argparse

    from msrl_model.infer.cli import register
    from msrl_model.infer.results import PredictionResult

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser(prog="msrl")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["analyze", str(cmu_slide), "--bundle", str(he_bundle), "--out", str(out),
                                  "--device", "cpu", "--workers", "1", "--quiet", *argv])
        return args.func(args)

    out = tmp_path / "out"
    annotations = tmp_path / "annotations.geojson"
    annotations.write_text(json.dumps(qupath_annotations(2220, 2967)))
    assert run("--regions", str(annotations), "--region-class", "=skip", "--geojson") == 0
    result = PredictionResult.from_json((out / "cmu_small_region.json").read_text())
    regions = read_regions(out / "cmu_small_region.regions.geojson")
    assert [r.classification for r in regions.regions] == ["Tumor", "Ignore*"]  # the unclassified one skipped
    assert result.regions["sha256"] == regions.fingerprint() and result.regions["include"] == 1
    (h5,) = (out / "features").glob("*.h5")
    from msrl_model.features.h5io import read_features

    full = read_features(h5).coords
    assert result.coords == full[regions.select(full, result.patch_size_level0)].tolist()
    keys = (out / "cmu_small_region.csv").read_text()
    assert f"slide,regions_patches_selected,{len(result.coords)}" in keys and "slide,regions_include,1" in keys
    doc = json.loads((out / "cmu_small_region.geojson").read_text())
    assert qupath_rule_violations(doc, 2220, 2967) == []
    assert sum(f["properties"]["objectType"] == "tile" for f in doc["features"]) == len(result.coords)
    capsys.readouterr()
    assert run("--regions", str(annotations), "--region-class", "=skip") == 0  # same regions: up to date
    assert "skipped:" in capsys.readouterr().out
    assert run("--regions", str(annotations), "--region-class", "Tumor=exclude", "--region-class", "=skip") == 0
    assert "ok:" in capsys.readouterr().out  # other regions: analysed again
    again = PredictionResult.from_json((out / "cmu_small_region.json").read_text())
    assert again.regions["include"] == 0 and again.regions["exclude"] == 2
    assert run("--region-class", "Tumor=maybe") == 2
    assert "CLASS=include" in capsys.readouterr().err
