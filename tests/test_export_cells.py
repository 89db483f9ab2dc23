"""Cell sinks: GeoJSON detections, per-cell table and uint32 label TIFF agree with each other and with
a reference computed from the image directly, in slide coordinates (origin != 0, scale 2)."""
import csv
import json
import uuid

import cv2
import numpy as np
import pytest
import shapely
import tifffile
from shapely.geometry import shape

from uniseg.export.base import BandOrderError, ExportContext
from uniseg.export.cells import (CellBatch, CellGeoJsonSink, CellLabelTiffSink, CellSink, CellTableSink,
                                 build_cell_sinks)
from uniseg.export.cells.geojson import cell_outlines
from uniseg.export.ome import read_uniseg_metadata
from uniseg.export.pyramid import reduce_labels_2x
from uniseg.inference.cell_stitching import CellStitcher
from uniseg.inference.inferencer import ArraySource
from uniseg.structures.instances import InstanceMap

CLASSES = ("lymphocyte", "tumor")
PALETTE = ((30, 90, 200), (200, 40, 40))
ORIGIN, SCALE, MPP = (1000.0, 500.0), 2.0, 0.5   # mpp of an output pixel: level 0 is 0.25 um/px
H, W = 210, 260


def _image():
    """Blue and red discs (some with holes, some cut by the ROI border) on white."""
    rgb = np.full((H, W, 3), 245, np.uint8)
    rng = np.random.default_rng(0)
    taken = np.zeros((H + 40, W + 40), bool)
    count = 0
    for _ in range(400):
        cy, cx, r = int(rng.integers(-3, H + 3)), int(rng.integers(-3, W + 3)), int(rng.integers(3, 11))
        if taken[cy + 20 - r - 3:cy + 20 + r + 4, cx + 20 - r - 3:cx + 20 + r + 4].any():
            continue
        taken[cy + 20 - r:cy + 20 + r + 1, cx + 20 - r:cx + 20 + r + 1] = True
        count += 1
        cv2.circle(rgb, (cx, cy), r, (40, 60, 150) if count % 2 else (150, 40, 50), thickness=-1)
        if r >= 8 and count % 3 == 0:
            cv2.circle(rgb, (cx, cy), 2, (245, 245, 245), thickness=-1)  # a hole
    return rgb


def _reference(rgb):
    """Connected components of the whole image: areas, centroids, boxes and classes, computed at once."""
    dark = (rgb.max(axis=2) < 170).astype(np.uint8)
    count, ids, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=8)
    red = np.bincount(ids.ravel(), weights=(rgb[..., 0] > rgb[..., 2]).ravel(), minlength=count)
    labels = (red[1:] > stats[1:, cv2.CC_STAT_AREA] / 2).astype(int)
    return ids, labels, stats[1:], centroids[1:]


class Blobs:
    def predict(self, tiles):
        out = []
        for tile in tiles:
            ids, labels, stats, _ = _reference(tile)
            out.append(InstanceMap(ids, labels, 0.5 + (stats[:, cv2.CC_STAT_AREA] % 10) / 25))
        return out


def _ctx(**kwargs):
    return ExportContext(W, H, CLASSES, PALETTE, **{"origin": ORIGIN, "scale": SCALE, "mpp": MPP, **kwargs})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cells")
    rgb = _image()
    sinks = build_cell_sinks(["geojson", "csv", "tiff"], out, "slide", tiff={"tile": 64})
    for sink in sinks:
        sink.open(_ctx())
    stats = CellStitcher(Blobs(), tile=(96, 96), stride=(72, 72)).run(ArraySource(rgb), sinks)
    paths = [p for sink in sinks for p in sink.close()]
    assert [p.name for p in paths] == ["slide_cells.geojson", "slide_cells.csv", "slide_cells.tif"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temporaries left
    with open(out / "slide_cells.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    collection = json.loads((out / "slide_cells.geojson").read_text(encoding="utf-8"))
    with tifffile.TiffFile(out / "slide_cells.tif") as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        assert tif.is_ome and len(tif.pages) == 1
        description = read_uniseg_metadata(tif)
        description["ome"] = tif.ome_metadata
    return dict(rgb=rgb, stats=stats, table=table, geojson=collection, levels=levels, description=description)


def _pairs(reference_ids, ids):
    """stitched id -> reference component (one to one, checked)."""
    both = ids > 0
    pairs = np.unique(np.stack([ids[both], reference_ids[both]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    return dict(zip(pairs[0].tolist(), pairs[1].tolist()))


def test_tiff_holds_the_ids_of_the_table_with_a_pyramid(exported):
    levels, table = exported["levels"], exported["table"]
    ids = levels[0]
    assert ids.dtype == np.uint32 and ids.shape == (H, W)
    reference_ids, _, ref_stats, _ = _reference(exported["rgb"])
    assert ((ids > 0) == (reference_ids > 0)).all()
    _pairs(reference_ids, ids)
    rows = {int(r["id"]): r for r in table}
    assert len(rows) > 60 and exported["stats"].cells == len(rows)
    assert sorted(rows) == np.unique(ids[ids > 0]).tolist() == list(range(1, len(rows) + 1))
    areas = np.bincount(ids.ravel(), minlength=len(rows) + 1)
    for k, row in rows.items():
        assert int(row["area_pixels"]) == areas[k]
    # 210 x 260 -> 105 x 130 -> 53 x 65 (fits a 64 tile? no: 65) -> 27 x 33
    assert [lvl.shape for lvl in levels] == [(210, 260), (105, 130), (53, 65), (27, 33)]
    previous = ids
    for level in levels[1:]:
        if previous.shape[0] % 2:
            previous = np.concatenate([previous, previous[-1:]])
        np.testing.assert_array_equal(level, reduce_labels_2x(previous))
        assert set(np.unique(level)) <= set(np.unique(ids))  # ids are never invented
        previous = level
    meta = exported["description"]
    assert meta["uniseg"] == "cell_ids" and meta["classes"] == list(CLASSES)
    assert meta["origin"] == list(ORIGIN) and meta["scale"] == SCALE and "ignore_index" not in meta
    assert 'Type="uint32"' in meta["ome"] and f'PhysicalSizeX="{MPP}"' in meta["ome"]
    assert 'Name="cell id"' in meta["ome"]


def test_table_uses_slide_coordinates(exported):
    """Centroids, boxes, areas and classes against connected components of the whole image."""
    ids, table = exported["levels"][0], exported["table"]
    reference_ids, labels, ref_stats, ref_centroids = _reference(exported["rgb"])
    match = _pairs(reference_ids, ids)
    ox, oy = ORIGIN
    assert len(table) == len(ref_stats) > 60
    at_border = (ref_stats[:, 0] == 0) | (ref_stats[:, 1] == 0) | (ref_stats[:, 0] + ref_stats[:, 2] == W)
    assert at_border.sum() >= 3  # cells cut by the ROI border are in the table too
    for row in table:
        ref = match[int(row["id"])] - 1
        cx, cy = ref_centroids[ref]  # OpenCV: mean pixel index
        assert float(row["centroid_x"]) == pytest.approx(ox + SCALE * (cx + 0.5), abs=1e-3)
        assert float(row["centroid_y"]) == pytest.approx(oy + SCALE * (cy + 0.5), abs=1e-3)
        left, top, width, height, area = ref_stats[ref]
        assert (float(row["bbox_x0"]), float(row["bbox_y0"])) == (ox + SCALE * left, oy + SCALE * top)
        assert (float(row["bbox_x1"]), float(row["bbox_y1"])) == (ox + SCALE * (left + width), oy + SCALE * (top + height))
        assert int(row["area_pixels"]) == area
        assert float(row["area_um2"]) == pytest.approx(area * MPP ** 2, abs=1e-4)
        assert row["class"] == CLASSES[labels[ref]] and int(row["class_index"]) == labels[ref]
        assert 0.5 <= float(row["score"]) <= 0.9 and row["touches_border"] == "0"


def test_geojson_detections_match_the_table_and_the_tiff(exported):
    ids, table, collection = exported["levels"][0], exported["table"], exported["geojson"]
    rows = {int(r["id"]): r for r in table}
    features = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == len(rows) > 60
    holes = sum(len(shape(f["geometry"]).interiors) for f in features if f["geometry"]["type"] == "Polygon")
    assert holes >= 3  # cells with holes keep them
    ox, oy = ORIGIN
    for feature in features:
        props = feature["properties"]
        m = props["measurements"]
        k = int(m["Cell ID"])
        row = rows[k]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": row["class"], "color": list(PALETTE[int(row["class_index"])])}
        assert uuid.UUID(feature["id"]).int & 0xFFFFFFFF == k and uuid.UUID(feature["id"]).version == 5
        geometry = shape(feature["geometry"])
        assert geometry.is_valid
        assert geometry.area == pytest.approx(int(row["area_pixels"]) * SCALE ** 2)  # pixel-exact outline
        assert geometry.centroid.x == pytest.approx(float(row["centroid_x"]), abs=1e-3)
        assert geometry.centroid.y == pytest.approx(float(row["centroid_y"]), abs=1e-3)
        # QuPath measurement units: level-0 pixels are MPP / SCALE um wide
        assert m["Area µm^2"] == pytest.approx(float(row["area_um2"]), abs=1e-4)
        assert m["Centroid X µm"] == pytest.approx(float(row["centroid_x"]) * MPP / SCALE, abs=1e-3)
        assert m["Centroid Y µm"] == pytest.approx(float(row["centroid_y"]) * MPP / SCALE, abs=1e-3)
        # rasterised back at output-pixel centres, the polygon is exactly the cell in the TIFF
        x0, y0 = int((float(row["bbox_x0"]) - ox) / SCALE), int((float(row["bbox_y0"]) - oy) / SCALE)
        x1, y1 = int((float(row["bbox_x1"]) - ox) / SCALE), int((float(row["bbox_y1"]) - oy) / SCALE)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = shapely.contains_xy(geometry, ox + SCALE * (xx + 0.5), oy + SCALE * (yy + 0.5))
        np.testing.assert_array_equal(inside, ids[y0:y1, x0:x1] == k)
        ring = np.asarray(geometry.exterior.coords if geometry.geom_type == "Polygon"
                          else geometry.geoms[0].exterior.coords)
        assert shapely.LinearRing(ring).is_ccw  # RFC 7946 exterior orientation


def test_cell_outlines_one_shape_per_mask():
    """Traced together on shared canvases, each mask still gets exactly its own pixels back."""
    rng = np.random.default_rng(1)
    masks = [rng.random((int(rng.integers(1, 9)), int(rng.integers(1, 9)))) < 0.6 for _ in range(300)]
    masks.append(np.zeros((3, 4), bool))
    outlines = cell_outlines(masks, canvas_pixels=200)  # many canvases
    for mask, outline in zip(masks, outlines):
        assert outline.area == mask.sum()
        if mask.any():
            yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
            np.testing.assert_array_equal(shapely.contains_xy(outline, xx + 0.5, yy + 0.5), mask)


def test_units_without_a_pixel_size(tmp_path):
    """No mpp: QuPath's pixel names, level-0 pixel values, and an empty area_um2."""
    mask = np.ones((2, 3), bool)
    batch = CellBatch([1], [1], [0.8], [(4, 5, 6, 8)], [mask], [6], [(4.5, 6.0)], [False])
    ctx = _ctx(mpp=None)
    geo, tab = CellGeoJsonSink(tmp_path / "c.geojson"), CellTableSink(tmp_path / "c.csv")
    for sink in (geo, tab):
        sink.open(ctx)
        sink.write_cells(batch)
        sink.write_band(0, np.zeros((H, W), np.uint32))
        sink.close()
    m = json.loads((tmp_path / "c.geojson").read_text(encoding="utf-8"))["features"][0]["properties"]["measurements"]
    assert m == {"Cell ID": 1, "Score": 0.8, "Area px^2": 6 * SCALE ** 2,
                 "Centroid X px": ORIGIN[0] + SCALE * 6.5, "Centroid Y px": ORIGIN[1] + SCALE * 5.0}
    row = next(csv.DictReader(open(tmp_path / "c.csv", newline="")))
    assert row["area_um2"] == "" and row["class"] == "tumor" and float(row["bbox_x1"]) == ORIGIN[0] + SCALE * 8


def test_large_ids_survive_the_tiff(tmp_path):
    ids = np.zeros((40, 50), np.uint32)
    ids[5:20, 5:30] = 70_000
    ids[25:35, 10:45] = 2**32 - 1
    sink = CellLabelTiffSink(tmp_path / "c.tif", tile=16)
    sink.open(ExportContext(50, 40, CLASSES))
    sink.write_band(0, ids[:13])
    sink.write_band(13, ids[13:])
    sink.close()
    levels = tifffile.TiffFile(tmp_path / "c.tif").series[0].levels
    np.testing.assert_array_equal(levels[0].asarray(), ids)
    assert set(np.unique(levels[1].asarray())) == {0, 70_000, 2**32 - 1}


class _Nothing(CellSink):
    def _open(self, ctx):
        pass

    def _finish(self):
        return []

    def _abort(self):
        pass


def test_contract_errors_name_the_problem(tmp_path):
    mask = np.ones((2, 2), bool)

    def batch(ids, label=0, box=(0, 0, 2, 2)):
        return CellBatch(ids, [label] * len(ids), [0.9] * len(ids), [box] * len(ids), [mask] * len(ids),
                         [4] * len(ids), [(0.5, 0.5)] * len(ids), [False] * len(ids))

    sink = _Nothing()
    sink.open(_ctx())
    with pytest.raises(ValueError, match="outside the 2 classes"):
        sink.write_cells(batch([1], label=2))
    sink.write_cells(batch([1, 2]))
    with pytest.raises(ValueError, match="ids must increase"):
        sink.write_cells(batch([2]))
    with pytest.raises(ValueError, match="outside the 260 x 210 ROI"):
        sink.write_cells(batch([3], box=(209, 0, 211, 2)))
    with pytest.raises(ValueError, match="uint32"):
        sink.write_band(0, np.zeros((10, W), np.int32))
    sink.write_band(0, np.zeros((10, W), np.uint32))
    with pytest.raises(BandOrderError, match="expected a band starting at row 10"):
        sink.write_band(20, np.zeros((10, W), np.uint32))
    with pytest.raises(BandOrderError, match="10 of 210 rows"):
        sink.close()
    with pytest.raises(ValueError, match="does not fill its box"):
        CellBatch([1], [0], [0.9], [(0, 0, 3, 3)], [mask], [4], [(0.5, 0.5)], [False])


def test_abort_leaves_nothing_and_bad_options_are_refused(tmp_path):
    sinks = build_cell_sinks(["geojson", "csv", "tiff"], tmp_path, "s")
    for sink in sinks:
        sink.open(_ctx())
        sink.write_band(0, np.zeros((50, W), np.uint32))
    sinks[0].write_cells(CellBatch([1], [0], [0.9], [(0, 0, 1, 1)], [np.ones((1, 1), bool)], [1], [(0.0, 0.0)],
                                   [False]))
    for sink in sinks:
        sink.abort()
    assert list(tmp_path.iterdir()) == []
    # finished but not committed: still nothing under the final names, and abort removes the temporaries
    sinks = build_cell_sinks(["csv", "tiff"], tmp_path, "s", tiff={"tile": 32})
    for sink in sinks:
        sink.open(_ctx())
        sink.write_band(0, np.zeros((H, W), np.uint32))
        sink.finish()
    assert not (tmp_path / "s_cells.csv").exists() and not (tmp_path / "s_cells.tif").exists()
    for sink in sinks:
        sink.abort()
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(ValueError, match="unknown cell output format"):
        build_cell_sinks(["png"], tmp_path, "s")
    with pytest.raises(ValueError, match="not requested"):
        build_cell_sinks(["csv"], tmp_path, "s", tiff={"tile": 32})
    with pytest.raises(ValueError, match="invalid options for cell output format 'tiff'"):
        build_cell_sinks(["tiff"], tmp_path, "s", tiff={"tiles": 32})
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        CellTableSink(tmp_path / "c.txt")
    with pytest.raises(ValueError, match="lossless"):
        CellLabelTiffSink(tmp_path / "c.tif", compression="jpeg")


def test_finish_writes_everything_and_commit_only_renames(tmp_path):
    """The mask sinks' two phases: segment_file publishes what finish() returns together with the summary."""
    sinks = build_cell_sinks(["geojson", "csv", "tiff"], tmp_path, "s", tiff={"tile": 32})
    staged = []
    for sink in sinks:
        sink.open(_ctx())
        sink.write_band(0, np.zeros((H, W), np.uint32))
        staged += sink.finish()
    assert [p.path.name for p in staged] == ["s_cells.geojson", "s_cells.csv", "s_cells.tif"]
    assert all(p.tmp.is_file() and not p.path.exists() for p in staged)
    sizes = [p.tmp.stat().st_size for p in staged]
    assert [sink.commit() for sink in sinks] == [[p.path] for p in staged]
    assert [p.path.stat().st_size for p in staged] == sizes  # nothing written after finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_cells.csv", "s_cells.geojson", "s_cells.tif"]


def test_operating_system_errors_name_the_output(tmp_path):
    from uniseg.utils.atomic import OutputWriteError

    class DiskFull(_Nothing):
        def describe(self):
            return str(tmp_path / "s_cells.csv")

        def _write_band(self, y0, ids):
            raise OSError(28, "No space left on device")

    sink = DiskFull()
    sink.open(_ctx())
    with pytest.raises(OutputWriteError, match=r"s_cells.csv: cannot write this output \(No space left on device\)"):
        sink.write_band(0, np.zeros((H, W), np.uint32))


def test_parquet_needs_pyarrow(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="c.parquet: writing Parquet needs pyarrow"):
            CellTableSink(tmp_path / "c.parquet")
        return
    import pyarrow.parquet as pq

    sink = CellTableSink(tmp_path / "c.parquet")
    sink.open(_ctx())
    sink.write_cells(CellBatch([1, 2], [0, 1], [0.9, 0.7], [(0, 0, 2, 2), (3, 3, 5, 6)],
                               [np.ones((2, 2), bool), np.ones((2, 3), bool)], [4, 6], [(0.5, 0.5), (3.5, 4.0)],
                               [False, True]))
    sink.write_band(0, np.zeros((H, W), np.uint32))
    sink.close()
    table = pq.read_table(tmp_path / "c.parquet").to_pydict()
    assert table["id"] == [1, 2] and table["class"] == ["lymphocyte", "tumor"] and table["touches_border"] == [0, 1]
    assert table["centroid_x"] == [ORIGIN[0] + SCALE * 1.0, ORIGIN[0] + SCALE * 4.5]
