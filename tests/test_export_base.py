"""ExportContext validation, the band-stream checks shared by all sinks, and PendingFile."""
from pathlib import Path
from typing import List

import numpy as np
import pytest

from uniseg.export.base import (BandOrderError, ExportContext, MaskSink, PendingFile, labels_present,
                               resolve_class_indices)
from uniseg.utils.atomic import OutputWriteError
from uniseg.utils.palette import default_palette


class RecordingSink(MaskSink):
    """Minimal sink that records what the template passes through (into ``folder/recorded.txt`` if given)."""

    def __init__(self, fail_on_close: bool = False, folder: Path = None):
        super().__init__()
        self.bands: List[tuple] = []
        self.aborted = 0
        self.fail_on_close = fail_on_close
        self.folder = folder

    def _open(self, ctx):
        self.opened_with = ctx

    def _write_band(self, y0, labels, probs, image):
        self.bands.append((y0, labels.shape[0], probs is not None, image is not None))

    def _finish(self):
        if self.fail_on_close:
            raise OSError("disk full")
        if self.folder is None:
            return []
        pending = PendingFile(self.folder / "recorded.txt")
        pending.tmp.write_text(repr(self.bands))
        return [pending]

    def _abort(self):
        self.aborted += 1


def _ctx(width=8, height=10, classes=("bg", "a", "b")) -> ExportContext:
    return ExportContext(width=width, height=height, classes=classes)


def _labels(h, w=8, value=1) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def test_context_defaults_and_normalisation():
    ctx = ExportContext(width=np.int64(5), height=3, classes=["bg", "tumor"], origin=(1, 2), scale=2)
    assert ctx.palette == tuple(default_palette(2))
    assert isinstance(ctx.width, int) and ctx.classes == ("bg", "tumor")
    assert ctx.origin == (1.0, 2.0) and ctx.scale == 2.0
    assert ctx.metadata()["classes"] == ["bg", "tumor"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=0), "width"),
    (dict(classes=[]), "empty"),
    (dict(classes=["a", "a"]), "duplicate"),
    (dict(palette=[(0, 0, 0)]), "palette"),
    (dict(ignore_index=1), "ignore_index"),
    (dict(scale=0), "scale"),
    (dict(mpp=-1.0), "mpp"),
])
def test_context_rejects_bad_values(kwargs, message):
    args = dict(width=4, height=4, classes=["bg", "a"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ExportContext(**args)


def test_bands_must_be_contiguous_and_in_order(tmp_path):
    sink = RecordingSink(folder=tmp_path)
    sink.open(_ctx())
    sink.write_band(0, _labels(4))
    with pytest.raises(BandOrderError, match="expected a band starting at row 4"):
        sink.write_band(5, _labels(2))  # gap
    with pytest.raises(BandOrderError, match="expected a band starting at row 4"):
        sink.write_band(2, _labels(2))  # overlap
    with pytest.raises(BandOrderError, match="do not fit"):
        sink.write_band(4, _labels(7))  # runs past the ROI
    sink.write_band(4, _labels(6))
    assert sink.close() == [tmp_path / "recorded.txt"]
    assert sink.bands == [(0, 4, False, False), (4, 6, False, False)]
    assert [p.name for p in tmp_path.iterdir()] == ["recorded.txt"]


def test_finish_writes_everything_and_commit_only_renames(tmp_path):
    sink = RecordingSink(folder=tmp_path)
    sink.open(_ctx(height=2))
    sink.write_band(0, _labels(2))
    pending = sink.finish()
    assert [p.path for p in pending] == [tmp_path / "recorded.txt"]
    assert pending[0].tmp.read_text() == "[(0, 2, False, False)]"  # complete, under its temporary name
    assert not (tmp_path / "recorded.txt").exists()
    with pytest.raises(RuntimeError, match="finished"):
        sink.write_band(2, _labels(1))
    assert sink.commit() == [tmp_path / "recorded.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["recorded.txt"]
    sink.abort()  # after the commit: nothing to undo
    assert (tmp_path / "recorded.txt").exists()


def test_abort_after_finish_removes_the_finished_temporaries(tmp_path):
    sink = RecordingSink(folder=tmp_path)
    sink.open(_ctx(height=2))
    sink.write_band(0, _labels(2))
    sink.finish()
    sink.abort()
    assert list(tmp_path.iterdir()) == [] and sink.aborted == 1


def test_os_errors_while_writing_name_the_output():
    sink = RecordingSink(fail_on_close=True)
    sink.open(_ctx(height=1))
    sink.write_band(0, _labels(1))
    with pytest.raises(OutputWriteError, match=r"RecordingSink: cannot write this output \(disk full\)"):
        sink.close()


@pytest.mark.parametrize("labels, probs, image, message", [
    (np.ones((2, 7), np.uint8), None, None, "full width"),
    (np.ones((2, 8), np.int64), None, None, "uint8"),
    (np.full((2, 8), 3, np.uint8), None, None, r"label values \[3\]"),
    (np.ones((2, 8), np.uint8), np.zeros((2, 2, 8), np.uint8), None, "probs must have shape"),
    (np.ones((2, 8), np.uint8), np.zeros((3, 2, 8), np.float32), None, "probs must be uint8"),
    (np.ones((2, 8), np.uint8), None, np.zeros((2, 8), np.uint8), "image must be uint8"),
])
def test_band_content_is_validated(labels, probs, image, message):
    sink = RecordingSink()
    sink.open(_ctx())
    with pytest.raises(ValueError, match=message):
        sink.write_band(0, labels, probs, image)
    assert sink.bands == []


def test_ignore_index_is_a_valid_label(tmp_path):
    sink = RecordingSink(folder=tmp_path)
    sink.open(_ctx(height=2))
    sink.write_band(0, np.full((2, 8), 255, np.uint8))
    assert sink.close() == [tmp_path / "recorded.txt"]


def test_close_before_last_row_fails_and_aborts():
    sink = RecordingSink()
    sink.open(_ctx())
    sink.write_band(0, _labels(4))
    with pytest.raises(BandOrderError, match="4 of 10 rows"):
        sink.close()
    assert sink.aborted == 1
    sink.abort()  # idempotent
    assert sink.aborted == 1
    with pytest.raises(RuntimeError, match="aborted"):
        sink.write_band(4, _labels(6))


def test_failing_close_aborts():
    sink = RecordingSink(fail_on_close=True)
    sink.open(_ctx(height=1))
    sink.write_band(0, _labels(1))
    with pytest.raises(OSError, match="disk full"):
        sink.close()
    assert sink.aborted == 1


def test_life_cycle_misuse():
    sink = RecordingSink()
    with pytest.raises(RuntimeError, match="new"):
        sink.write_band(0, _labels(1))
    with pytest.raises(TypeError, match="ExportContext"):
        sink.open({"width": 8})
    sink = RecordingSink()
    sink.open(_ctx())
    with pytest.raises(RuntimeError, match="open"):
        sink.open(_ctx())
    sink.abort()  # never-written sinks abort cleanly
    assert sink.aborted == 1


def test_requires_probs():
    class NeedsProbs(RecordingSink):
        requires_probs = True

    sink = NeedsProbs()
    sink.open(_ctx())
    with pytest.raises(ValueError, match="probabilities"):
        sink.write_band(0, _labels(2))


def test_pending_file_commit_and_discard(tmp_path):
    target = tmp_path / "out.bin"
    pending = PendingFile(target)
    pending.tmp.write_bytes(b"abc")
    assert not target.exists()
    assert pending.commit() == target and target.read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    other = PendingFile(tmp_path / "other.bin")
    other.tmp.write_bytes(b"partial")
    other.discard()
    other.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(RuntimeError):
        other.commit()


def test_open_failure_aborts():
    class BadOpen(RecordingSink):
        def _open(self, ctx):
            raise ValueError("nope")

    sink = BadOpen()
    with pytest.raises(ValueError, match="nope"):
        sink.open(_ctx())
    assert sink.aborted == 1


def test_resolve_class_indices():
    ctx = _ctx()
    assert resolve_class_indices(None, ctx, [0], "x") == [1, 2]
    assert resolve_class_indices(["b", 1, "b"], ctx, [0], "x") == [1, 2]
    assert resolve_class_indices("a", ctx, [], "x") == [1]
    with pytest.raises(ValueError, match="unknown class 'c'"):
        resolve_class_indices(["c"], ctx, [], "out.geojson")
    with pytest.raises(ValueError, match="not a class name or an index"):
        resolve_class_indices([3], ctx, [], "x")
    with pytest.raises(ValueError, match="empty"):
        resolve_class_indices([], ctx, [], "x")


def test_labels_present_matches_bincount():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 200, (30, 41)).astype(np.uint8)[:, 5:33]  # a strided view
    expected = np.bincount(labels.ravel(), minlength=256) > 0
    np.testing.assert_array_equal(labels_present(labels), expected)
