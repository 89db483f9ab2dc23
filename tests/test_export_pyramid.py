"""Streaming pyramidal TIFF machinery: 2x reductions, level shapes, writer thread, clean-up."""
from collections import Counter

import numpy as np
import pytest
import tifffile

from uniseg.export.pyramid import (StreamingPyramidTiff, normalize_compression, pyramid_shapes,
                                   reduce_labels_2x, reduce_mean_2x)
from uniseg.utils.atomic import OutputWriteError


def _reference_mode(rows: np.ndarray) -> np.ndarray:
    """Slow, obviously-correct 2x2 mode: most frequent, ties -> first in TL, TR, BL, BR order."""
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)
    out = np.empty((rows.shape[0] // 2, rows.shape[1] // 2), rows.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = [rows[2 * i, 2 * j], rows[2 * i, 2 * j + 1], rows[2 * i + 1, 2 * j], rows[2 * i + 1, 2 * j + 1]]
            counts = Counter(block)
            best = max(counts.values())
            out[i, j] = next(v for v in block if counts[v] == best)
    return out


def _reference_pyramid(image: np.ndarray, levels: int, reduce) -> list:
    out = [image]
    for _ in range(levels - 1):
        prev = out[-1]
        if prev.shape[0] % 2:
            prev = np.concatenate([prev, prev[-1:]], axis=0)
        out.append(reduce(prev))
    return out


def test_mode_reduction_matches_reference():
    rng = np.random.default_rng(0)
    for shape in [(2, 2), (4, 7), (10, 9), (6, 1)]:
        rows = rng.integers(0, 4, shape).astype(np.uint8)
        np.testing.assert_array_equal(reduce_labels_2x(rows), _reference_mode(rows))


def test_mode_reduction_examples():
    rows = np.array([[1, 2, 5, 5, 7],
                     [2, 2, 3, 4, 8]], np.uint8)
    # 2 is the majority; 5 wins 2:1:1; the odd last column pairs with itself -> tie 7/8 -> 7 (top)
    np.testing.assert_array_equal(reduce_labels_2x(rows), [[2, 5, 7]])
    tie = np.array([[3, 9], [9, 3]], np.uint8)
    assert reduce_labels_2x(tie)[0, 0] == 3  # 2:2 tie goes to the top-left value
    with pytest.raises(ValueError, match="even"):
        reduce_labels_2x(np.zeros((3, 4), np.uint8))


def test_mean_reduction_rounds():
    rows = np.array([[0, 1, 255, 255], [1, 1, 255, 254]], np.uint8)
    np.testing.assert_array_equal(reduce_mean_2x(rows), [[1, 255]])  # 0.75 -> 1, 254.75 -> 255


def test_pyramid_shapes():
    assert pyramid_shapes(1000, 700, 256) == [(1000, 700), (500, 350), (250, 175)]
    assert pyramid_shapes(100, 100, 256) == [(100, 100)]
    assert pyramid_shapes(5, 3, 16, levels=3) == [(5, 3), (3, 2), (2, 1)]
    with pytest.raises(ValueError, match="too many"):
        pyramid_shapes(2, 2, 16, levels=4)
    with pytest.raises(ValueError, match=">= 1"):
        pyramid_shapes(2, 2, 16, levels=0)


def test_compression_names():
    assert normalize_compression("ZLIB", "x") == "zlib"
    assert normalize_compression(None, "x") is None and normalize_compression("none", "x") is None
    with pytest.raises(ValueError, match="lossless"):
        normalize_compression("jpeg", "out.tif")


@pytest.mark.parametrize("bands", [[1, 7, 300, 13], [321]])
def test_odd_sizes_and_irregular_bands(tmp_path, bands):
    rng = np.random.default_rng(1)
    height, width = sum(bands), 83
    image = rng.integers(0, 256, (height, width)).astype(np.uint8)
    writer = StreamingPyramidTiff(tmp_path / "p.tif", height, width, reduce=reduce_mean_2x, tile=32)
    writer.start()
    y = 0
    for h in bands:
        writer.write_rows(image[y:y + h])
        y += h
    writer.finish()
    assert writer.commit() == tmp_path / "p.tif"
    expected = _reference_pyramid(image, writer.num_levels, reduce_mean_2x)
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        levels = tif.series[0].levels
        assert len(levels) == writer.num_levels == 5  # 321 -> 161 -> 81 -> 41 -> 21 (<= 32)
        for level, ref in zip(levels, expected):
            np.testing.assert_array_equal(level.asarray(), ref)
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]  # spools and temporaries are gone


def test_writes_an_ome_tiff_pyramid_with_its_pixel_size(tmp_path):
    """Level 0 carries OME-XML with the physical size from ``mpp``; the reduced levels are its SubIFDs,
    each with resolution tags for its own pixel size (for readers that ignore OME-XML)."""
    image = np.random.default_rng(4).integers(0, 256, (100, 70)).astype(np.uint8)
    writer = StreamingPyramidTiff(tmp_path / "p.tif", 100, 70, reduce=reduce_mean_2x, tile=16, levels=3, mpp=0.3)
    writer.start()
    writer.write_rows(image)
    writer.finish()
    writer.commit()
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert tif.is_ome and len(tif.pages) == 1 and len(tif.pages[0].subifds) == 2
        assert [lvl.shape for lvl in tif.series[0].levels] == [(100, 70), (50, 35), (25, 18)]
        assert 'PhysicalSizeX="0.3" PhysicalSizeXUnit="µm" PhysicalSizeY="0.3"' in tif.ome_metadata
        for level in tif.series[0].levels:
            page = level.pages[0]  # x: 0.3 um * 70 / width (70, 35, 18 pixels wide)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            assert 1e4 / page.resolution[0] == pytest.approx(0.3 * 70 / level.shape[1])
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), image)


def test_abort_midway_removes_everything(tmp_path):
    writer = StreamingPyramidTiff(tmp_path / "p.tif", 200, 64, reduce=reduce_labels_2x, tile=16)
    writer.start()
    writer.write_rows(np.zeros((70, 64), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    assert writer._thread is not None and not writer._thread.is_alive()


@pytest.mark.parametrize("error, reported", [
    (OSError(27, "File too large"), OutputWriteError),  # the disk: an output error naming the file
    (ValueError("simulated write failure"), RuntimeError),  # anything else: a failure of the writer
])
def test_writer_thread_error_reaches_the_producer(tmp_path, monkeypatch, error, reported):
    def broken_write(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(tifffile.TiffWriter, "write", broken_write)
    writer = StreamingPyramidTiff(tmp_path / "p.tif", 64, 32, reduce=reduce_labels_2x, tile=16)
    writer.start()
    with pytest.raises(reported, match=rf"p\.tif.*{error.args[-1]}"):
        for _ in range(4):  # the failure surfaces at the latest when a strip is handed over
            writer.write_rows(np.zeros((16, 32), np.uint8))
        writer.finish()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        StreamingPyramidTiff(tmp_path / "p.tif", 10, 10, reduce=reduce_labels_2x, tile=100)
    with pytest.raises(ValueError, match="colormap"):
        StreamingPyramidTiff(tmp_path / "p.tif", 10, 10, reduce=reduce_labels_2x, photometric="palette")
    writer = StreamingPyramidTiff(tmp_path / "p.tif", 10, 10, reduce=reduce_labels_2x, tile=16)
    writer.start()
    with pytest.raises(ValueError, match="more than 10 rows"):
        writer.write_rows(np.zeros((11, 10), np.uint8))
    with pytest.raises(ValueError, match="width 10"):
        writer.write_rows(np.zeros((1, 9), np.uint8))
    writer.write_rows(np.zeros((4, 10), np.uint8))
    with pytest.raises(ValueError, match="only 4 of 10 rows"):
        writer.finish()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
