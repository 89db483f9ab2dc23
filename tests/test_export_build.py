"""build_sinks: names -> sinks, output naming, option routing, errors; all sinks end to end."""
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from uniseg.export import (ExportContext, GeoJsonSink, IndexedPngSink, OverlayPreviewSink, ProbabilityMapSink,
                           PyramidTiffMaskSink, build_sinks)

CLASSES = ("background", "tumor", "stroma")


def test_every_format_and_output_names(tmp_path):
    sinks = build_sinks(["png", "tiff", "geojson", "overlay", "probs"], tmp_path, "case1")
    assert [type(s) for s in sinks] == [IndexedPngSink, PyramidTiffMaskSink, GeoJsonSink,
                                        OverlayPreviewSink, ProbabilityMapSink]
    assert sinks[0].path == tmp_path / "case1_mask.png"
    assert sinks[1].path == tmp_path / "case1_mask.tif"  # never the slide's own name
    assert sinks[2].path == tmp_path / "case1.geojson"
    assert sinks[3].path == tmp_path / "case1_overlay.jpg"
    assert sinks[4].target == tmp_path / "case1_probs"
    assert list(tmp_path.iterdir()) == []  # constructing creates nothing


def test_options_are_routed_per_format(tmp_path):
    tiff, geojson = build_sinks(["TIFF", "geojson"], tmp_path, "s", tiff={"tile": 256},
                                geojson={"simplify_tolerance": 1.5})
    assert tiff.tile == 256 and geojson.simplify_tolerance == 1.5


@pytest.mark.parametrize("formats, options, message", [
    (["tiff", "shapefile"], {}, r"unknown output format\(s\) \['shapefile'\] in --formats \(formats\); choose from"),
    ([], {}, "no output formats"),
    (["png", "png"], {}, "more than once"),
    (["png"], {"tiff": {"tile": 256}}, "not requested"),
    (["tiff"], {"tiff": {"tile_size": 256}}, "invalid options for output format 'tiff'"),
])
def test_errors(tmp_path, formats, options, message):
    with pytest.raises(ValueError, match=message):
        build_sinks(formats, tmp_path, "s", **options)


def test_bad_stem(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        build_sinks(["png"], tmp_path, "../escape")


def test_all_sinks_from_one_stream(tmp_path):
    height, width = 96, 80
    labels = np.zeros((height, width), np.uint8)
    labels[10:70, 5:40] = 1
    labels[30:50, 15:25] = 2
    probs = np.stack([(labels == c).astype(np.uint8) * 255 for c in range(3)])
    image = np.full((height, width, 3), 128, np.uint8)
    sinks = build_sinks(["png", "tiff", "geojson", "overlay", "probs"], tmp_path, "roi",
                        tiff={"tile": 16}, probs={"tile": 16}, overlay={"max_size": 64})
    ctx = ExportContext(width, height, CLASSES, origin=(100.0, 200.0), scale=4.0)
    for sink in sinks:
        sink.open(ctx)
    for y in range(0, height, 32):
        for sink in sinks:
            sink.write_band(y, labels[y:y + 32], probs=probs[:, y:y + 32], image=image[y:y + 32])
    written = [path for sink in sinks for path in sink.close()]
    assert all(path.is_file() for path in written) and len(written) == 7
    with Image.open(tmp_path / "roi_mask.png") as im:
        np.testing.assert_array_equal(np.asarray(im), labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "roi_mask.tif"), labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "roi_probs" / "tumor.tif"), probs[1])
    features = json.loads((tmp_path / "roi.geojson").read_text())["features"]
    assert sorted(f["properties"]["classification"]["name"] for f in features) == ["stroma", "tumor"]
    with Image.open(tmp_path / "roi_overlay.jpg") as im:
        assert max(im.size) <= 64
