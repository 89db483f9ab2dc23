"""GeoJsonSink: exact polygons (holes, band-crossing regions) in slide space, QuPath structure."""
import json

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from uniseg.export.base import BandOrderError, ExportContext
from uniseg.export.geojson import GeoJsonSink, mask_to_polygons

CLASSES = ("background", "tumor", "stroma", "necrosis")
PALETTE = ((0, 0, 0), (200, 30, 40), (20, 160, 90), (250, 220, 10))
ORIGIN, SCALE = (1000.5, 2000.25), 2.0
H, W = 130, 150


def _scene() -> np.ndarray:
    """A tumor ring (with a hole holding a stroma island) crossing many 16-row bands, etc."""
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (75, 50), 40, 1, thickness=-1)   # tumor disc, rows 10..90
    cv2.circle(mask, (75, 50), 15, 0, thickness=-1)   # ... with a background hole
    cv2.circle(mask, (75, 50), 6, 2, thickness=-1)    # stroma island inside the hole
    mask[100:115, 10:30] = 1                          # second tumor region, crosses row 112
    mask[5:7, 5:7] = 3                                # 4 px necrosis speck
    mask[120:123, 140:143] = 3                        # 9 px necrosis speck
    mask[60:70, 120:140] = 3                          # 200 px necrosis block, crosses row 64
    mask[0:5, 100:150] = 255                          # ignore
    mask[95, 60] = mask[96, 61] = 2                   # two stroma pixels touching at a corner
    return mask


def _ctx(mask, origin=ORIGIN, scale=SCALE) -> ExportContext:
    return ExportContext(mask.shape[1], mask.shape[0], CLASSES, PALETTE, origin=origin, scale=scale)


def _export(path, mask, band=16, ctx=None, **kwargs) -> dict:
    sink = GeoJsonSink(path, **kwargs)
    sink.open(ctx or _ctx(mask))
    for y in range(0, mask.shape[0], band):
        sink.write_band(y, mask[y:y + band])
    assert sink.close() == [path]
    with open(path, encoding="utf-8") as fh:
        collection = json.load(fh)
    assert len(collection["features"]) == sink.num_features
    return collection


def _features(collection, name):
    return [f for f in collection["features"] if f["properties"]["classification"]["name"] == name]


def _rasterise(features, shape_hw, origin=ORIGIN, scale=SCALE) -> np.ndarray:
    """Pixel (x, y) is inside when its centre, mapped to slide space, lies in a polygon."""
    h, w = shape_hw
    if not features:
        return np.zeros(shape_hw, bool)
    union = shapely.union_all([shape(f["geometry"]) for f in features])
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return shapely.contains_xy(union, origin[0] + scale * xs, origin[1] + scale * ys)


def _iou(a, b) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


def test_polygons_reproduce_every_class_exactly(tmp_path):
    mask = _scene()
    collection = _export(tmp_path / "m.geojson", mask)
    for index in (1, 2, 3):
        raster = _rasterise(_features(collection, CLASSES[index]), mask.shape)
        assert _iou(raster, mask == index) >= 0.99
        np.testing.assert_array_equal(raster, mask == index)  # pixel-edge exact, in fact
    assert not _features(collection, "background")


def test_regions_holes_and_band_merging(tmp_path):
    mask = _scene()
    collection = _export(tmp_path / "m.geojson", mask, band=16)
    tumor = _features(collection, "tumor")
    # the ring crosses 5 band boundaries and the block one: still exactly one Feature per region
    assert len(tumor) == 2
    ring = max(tumor, key=lambda f: shape(f["geometry"]).area)
    assert len(ring["geometry"]["coordinates"]) == 2  # exterior + one hole
    hole = shapely.Polygon(ring["geometry"]["coordinates"][1])
    island = shape(_features(collection, "stroma")[0]["geometry"])
    assert hole.contains(island) or hole.covers(island)
    assert len(_features(collection, "stroma")) == 3  # island + two corner-touching pixels
    assert len(_features(collection, "necrosis")) == 3


def test_coordinates_are_slide_space_pixel_edges(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[4:9, 10:13] = 2  # pixels x 10..12, y 4..8 -> edges x 10..13, y 4..9
    collection = _export(tmp_path / "m.geojson", mask, band=3, ctx=_ctx(mask))
    (feature,) = collection["features"]
    minx, miny, maxx, maxy = shape(feature["geometry"]).bounds
    assert (minx, miny) == (ORIGIN[0] + SCALE * 10, ORIGIN[1] + SCALE * 4)
    assert (maxx, maxy) == (ORIGIN[0] + SCALE * 13, ORIGIN[1] + SCALE * 9)
    # identity mapping: vertices are the pixel corners themselves
    plain = _export(tmp_path / "p.geojson", mask, ctx=_ctx(mask, origin=(0, 0), scale=1.0))
    coords = plain["features"][0]["geometry"]["coordinates"][0]
    assert sorted(set(map(tuple, coords))) == [(10, 4), (10, 9), (13, 4), (13, 9)]


def test_qupath_structure(tmp_path):
    collection = _export(tmp_path / "m.geojson", _scene())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] == "Polygon"
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        name = props["classification"]["name"]
        assert props["classification"]["color"] == list(PALETTE[CLASSES.index(name)])
        rings = feature["geometry"]["coordinates"]
        for k, ring in enumerate(rings):
            assert ring[0] == ring[-1] and len(ring) >= 4  # closed rings
            assert shapely.is_ccw(shapely.LinearRing(ring)) == (k == 0)  # RFC 7946 winding
        assert shape(feature["geometry"]).is_valid


def test_class_selection_min_area_and_empty_output(tmp_path):
    mask = _scene()
    only = _export(tmp_path / "a.geojson", mask, classes_to_export=["tumor"])
    assert {f["properties"]["classification"]["name"] for f in only["features"]} == {"tumor"}
    with_bg = _export(tmp_path / "b.geojson", mask, background_index=None)
    assert _features(with_bg, "background")
    large = _export(tmp_path / "c.geojson", mask, min_area=10)
    assert len(_features(large, "necrosis")) == 1  # the 4 px and 9 px specks are dropped
    assert len(_features(large, "stroma")) == 1     # so are the two single pixels
    empty = _export(tmp_path / "d.geojson", np.zeros((10, 10), np.uint8))
    assert empty == {"type": "FeatureCollection", "features": []}
    with pytest.raises(ValueError, match="unknown class 'lymph'"):
        GeoJsonSink(tmp_path / "e.geojson", classes_to_export=["lymph"]).open(_ctx(mask))


def test_simplification_keeps_shape(tmp_path):
    mask = np.zeros((200, 200), np.uint8)
    cv2.circle(mask, (100, 100), 80, 1, thickness=-1)
    cv2.circle(mask, (100, 100), 30, 0, thickness=-1)
    exact = _export(tmp_path / "a.geojson", mask, band=32)
    simple = _export(tmp_path / "b.geojson", mask, band=32, simplify_tolerance=1.0)
    n_exact = sum(len(r) for r in exact["features"][0]["geometry"]["coordinates"])
    n_simple = sum(len(r) for r in simple["features"][0]["geometry"]["coordinates"])
    assert n_simple < n_exact / 2
    assert len(simple["features"][0]["geometry"]["coordinates"]) == 2  # hole survives
    assert _iou(_rasterise(simple["features"], mask.shape), mask == 1) >= 0.99


def test_chunked_vectorisation_is_still_exact(tmp_path):
    mask = _scene()
    collection = _export(tmp_path / "m.geojson", mask, band=40, chunk_pixels=3 * W)  # 3-row chunks
    for index in (1, 2, 3):
        np.testing.assert_array_equal(_rasterise(_features(collection, CLASSES[index]), mask.shape), mask == index)
    assert len(_features(collection, "tumor")) == 2


def test_mask_to_polygons_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        polygons = mask_to_polygons(mask, y_offset=7)
        assert all(p.is_valid for p in polygons)
        union = shapely.union_all(polygons) if polygons else shapely.Polygon()
        xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 7.5)
        np.testing.assert_array_equal(shapely.contains_xy(union, xs, ys), mask)
        assert sum(p.area for p in polygons) == mask.sum()  # pieces do not overlap


def test_abort_and_order_errors_leave_nothing(tmp_path):
    mask = _scene()
    sink = GeoJsonSink(tmp_path / "m.geojson")
    sink.open(_ctx(mask))
    sink.write_band(0, mask[:16])
    with pytest.raises(BandOrderError, match="m.geojson"):
        sink.write_band(32, mask[32:48])
    sink.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="geojson"):
        GeoJsonSink(tmp_path / "m.txt")
