"""ProbabilityMapSink: one pyramidal grey TIFF per class, exact level 0, mean-reduced levels."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile

from uniseg.export.base import ExportContext
from uniseg.export.ome import ome_color, read_uniseg_metadata
from uniseg.export.probs import ProbabilityMapSink
from uniseg.export.pyramid import reduce_mean_2x

CLASSES = ("background", "tumor", "stroma, loose")


def _probs(height=150, width=90, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(CLASSES), height, width))
    p = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    return np.rint(p * 255).astype(np.uint8)


def _write(target, probs, band=40, ctx_kwargs=None, **kwargs):
    c, h, w = probs.shape
    labels = probs.argmax(0).astype(np.uint8)
    sink = ProbabilityMapSink(target, **kwargs)
    sink.open(ExportContext(w, h, CLASSES, **(ctx_kwargs or {})))
    for y in range(0, h, band):
        sink.write_band(y, labels[y:y + band], probs=probs[:, y:y + band])
    return sink.close()


def test_directory_round_trip(tmp_path):
    probs = _probs()
    sink_palette = ExportContext(1, 1, CLASSES).palette  # the default palette the sink gets
    paths = _write(tmp_path / "probs", probs, tile=48, ctx_kwargs=dict(mpp=0.25))
    assert [p.name for p in paths] == ["background.tif", "tumor.tif", "stroma_loose.tif"]
    for index, path in enumerate(paths):
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            assert [lvl.shape for lvl in levels] == [(150, 90), (75, 45), (38, 23)]
            np.testing.assert_array_equal(levels[0].asarray(), probs[index])
            np.testing.assert_array_equal(levels[1].asarray(), reduce_mean_2x(probs[index]))
            level1 = levels[1].asarray()
            np.testing.assert_array_equal(levels[2].asarray(),
                                          reduce_mean_2x(np.concatenate([level1, level1[-1:]])))
            page = tif.pages[0]
            assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and page.is_tiled
            meta = read_uniseg_metadata(tif)
            assert meta["class"] == CLASSES[index] and meta["class_index"] == index
            assert meta["value_range"] == [0, 255] and meta["mpp"] == 0.25
            # OME-TIFF: calibrated, the channel named after the class in its palette colour
            assert tif.is_ome and len(tif.pages) == 1 and len(page.subifds) == 2
            elements = {el.tag.rsplit("}", 1)[-1]: el.attrib for el in ET.fromstring(tif.ome_metadata).iter()}
            assert float(elements["Pixels"]["PhysicalSizeX"]) == 0.25
            assert elements["Pixels"]["PhysicalSizeYUnit"] == "µm"
            assert elements["Channel"]["Name"] == CLASSES[index]
            assert int(elements["Channel"]["Color"]) == ome_color(sink_palette[index])
    assert sorted(p.name for p in (tmp_path / "probs").iterdir()) == sorted(p.name for p in paths)


def test_template_path_and_class_subset(tmp_path):
    probs = _probs(40, 40)
    paths = _write(tmp_path / "slide.probs.tif", probs, classes=["tumor", 2], tile=16)
    assert [p.name for p in paths] == ["slide.probs_tumor.tif", "slide.probs_stroma_loose.tif"]
    np.testing.assert_array_equal(tifffile.imread(paths[0]), probs[1])
    np.testing.assert_array_equal(tifffile.imread(paths[1]), probs[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_ome_template_keeps_the_double_suffix(tmp_path):
    paths = _write(tmp_path / "slide.OME.tiff", _probs(20, 20), classes=[1], tile=16)
    assert [p.name for p in paths] == ["slide_tumor.OME.tiff"]


def test_missing_probabilities_raise_and_abort_removes_created_dir(tmp_path):
    sink = ProbabilityMapSink(tmp_path / "probs", tile=16)
    sink.open(ExportContext(20, 20, CLASSES))
    with pytest.raises(ValueError, match="probabilities"):
        sink.write_band(0, np.zeros((5, 20), np.uint8))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_files_appear_only_together_at_close(tmp_path):
    probs = _probs(32, 32)
    sink = ProbabilityMapSink(tmp_path / "probs", tile=16)
    sink.open(ExportContext(32, 32, CLASSES))
    sink.write_band(0, probs.argmax(0).astype(np.uint8), probs=probs)
    assert not any(p.suffix == ".tif" and not p.name.startswith(".") for p in (tmp_path / "probs").iterdir())
    sink.close()
    assert sorted(p.name for p in (tmp_path / "probs").iterdir()) == [
        "background.tif", "stroma_loose.tif", "tumor.tif"]


def test_rejects_clashing_names_and_unknown_classes(tmp_path):
    with pytest.raises(ValueError, match="clashing"):
        ProbabilityMapSink(tmp_path / "p").open(ExportContext(4, 4, ["a b", "a_b"]))
    with pytest.raises(ValueError, match="unknown class"):
        ProbabilityMapSink(tmp_path / "p", classes=["lymph"]).open(ExportContext(4, 4, CLASSES))
    assert list(tmp_path.iterdir()) == []
