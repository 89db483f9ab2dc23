"""IndexedPngSink: streaming palette PNG that Pillow reads back exactly."""
import json

import numpy as np
import pytest
from PIL import Image

from uniseg.export.base import BandOrderError, ExportContext
from uniseg.export.png import IndexedPngSink

CLASSES = ("background", "tumor", "stroma", "necrosis")
PALETTE = ((0, 0, 0), (200, 30, 40), (20, 160, 90), (250, 220, 10))


def _mask(h=37, w=53, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, len(CLASSES), (h, w)).astype(np.uint8)
    mask[5:9, 10:20] = 255  # ignore
    return mask


def _write(path, mask, band=8, **kwargs):
    sink = IndexedPngSink(path, **kwargs)
    sink.open(ExportContext(mask.shape[1], mask.shape[0], CLASSES, PALETTE))
    for y in range(0, mask.shape[0], band):
        sink.write_band(y, mask[y:y + band])
    return sink.close()


def test_round_trip_values_palette_and_metadata(tmp_path):
    mask = _mask()
    paths = _write(tmp_path / "m.png", mask)
    assert paths == [tmp_path / "m.png"]
    with Image.open(paths[0]) as im:
        im.load()
        assert im.mode == "P" and im.size == (53, 37)
        np.testing.assert_array_equal(np.asarray(im), mask)
        palette = np.asarray(im.getpalette()[: 3 * len(PALETTE)]).reshape(-1, 3)
        np.testing.assert_array_equal(palette, np.asarray(PALETTE))
        meta = json.loads(im.info["uniseg"])
    assert meta["classes"] == list(CLASSES) and meta["ignore_index"] == 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temporaries left


def test_single_band_and_single_row_bands(tmp_path):
    mask = _mask(h=5, w=3, seed=1)
    for band in (1, 5):
        path = _write(tmp_path / f"b{band}.png", mask, band=band)[0]
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im), mask)


def test_refuses_large_roi_at_open_and_points_to_tiff(tmp_path):
    sink = IndexedPngSink(tmp_path / "big.png", max_pixels=100)
    with pytest.raises(ValueError, match="(?s)exceeds the PNG limit.*TIFF"):
        sink.open(ExportContext(20, 10, CLASSES, PALETTE))
    assert list(tmp_path.iterdir()) == []


def test_abort_leaves_nothing(tmp_path):
    mask = _mask()
    sink = IndexedPngSink(tmp_path / "m.png")
    sink.open(ExportContext(mask.shape[1], mask.shape[0], CLASSES, PALETTE))
    sink.write_band(0, mask[:8])
    assert len(list(tmp_path.iterdir())) == 1  # the temporary, under a hidden name
    assert not (tmp_path / "m.png").exists()
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_out_of_order_band_raises_and_abort_cleans(tmp_path):
    mask = _mask()
    sink = IndexedPngSink(tmp_path / "m.png")
    sink.open(ExportContext(mask.shape[1], mask.shape[0], CLASSES, PALETTE))
    sink.write_band(0, mask[:8])
    with pytest.raises(BandOrderError, match="m.png"):
        sink.write_band(16, mask[16:24])
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_until_close(tmp_path):
    target = tmp_path / "m.png"
    target.write_bytes(b"old")
    mask = _mask(h=4, w=4)
    sink = IndexedPngSink(target)
    sink.open(ExportContext(4, 4, CLASSES, PALETTE))
    sink.write_band(0, mask)
    assert target.read_bytes() == b"old"
    sink.abort()
    assert target.read_bytes() == b"old"


def test_rejects_wrong_suffix(tmp_path):
    with pytest.raises(ValueError, match="png"):
        IndexedPngSink(tmp_path / "m.tif")
