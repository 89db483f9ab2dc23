"""The window pipeline (reader threads, ordered writer thread, ``select``) changes nothing in the results.

The semantic reference is today's synchronous loop (one strip per tile row, windows sliced from it,
blended into a band), kept here only as the baseline. Cells are compared across worker counts and
against references computed another way (tissue pixels over the whole image at once).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from mmseg.registry import MODELS

from uniseg.inference import SlidingWindowInferencer
from uniseg.inference.cell_stitching import CellStitcher
from uniseg.inference.options import check_num_workers
from uniseg.inference.tiling import TileGrid, blend_window
from uniseg.inference.tissue import tissue_fraction
from uniseg.inference.window_reader import WindowReader
from uniseg.io import RegionSource, open_slide
from uniseg.structures.instances import InstanceMap
from uniseg.utils.imageio import ImageReadError

SLIDE = Path(__file__).resolve().parents[1] / "data/wsi/CMU-1-Small-Region.svs"
WORKERS = (0, 1, 2)


@pytest.fixture(scope="module")
def tiny_model(_tiny_model_cfg):
    import copy

    cfg = copy.deepcopy(_tiny_model_cfg.model)
    cfg.decode_head.num_classes = 3
    cfg.decode_head.loss_cls.class_weight = [1.0] * 3 + [0.1]
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


@pytest.fixture(scope="module")
def he_pixels():
    """Real H&E: the CMU region at 2 um/px (resampled by RegionSource), about 555 x 742 px."""
    with open_slide(SLIDE) as reader:
        return RegionSource.open(reader, target_mpp=2.0).read_all()


def _pyramid(path: Path, image: np.ndarray) -> Path:
    """Two-level tiled TIFF (zlib), the reduced level as a SubIFD."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), subifds=1, photometric="rgb", compression="zlib",
                  resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        tif.write(image[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb", compression="zlib",
                  resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    return path


class CountingSource:
    """An ImageSource wrapper that records every read rectangle."""

    def __init__(self, source):
        self.source, self.reads = source, []
        self._lock = threading.Lock()

    width = property(lambda self: self.source.width)
    height = property(lambda self: self.source.height)

    def read(self, x, y, w, h):
        with self._lock:
            self.reads.append((x, y, w, h))
        return self.source.read(x, y, w, h)

    def read_mask(self):
        mask = np.zeros((self.height, self.width), bool)
        for x, y, w, h in self.reads:
            mask[y:y + h, x:x + w] = True
        return mask


class BandCollector:
    """A mask sink that keeps what it is handed (and which thread handed it)."""

    requires_probs = True

    def __init__(self):
        self.labels, self.probs, self.images, self.threads = {}, {}, {}, set()

    def write_band(self, y0, labels, probs=None, image=None):
        self.threads.add(threading.current_thread().name)
        self.labels[y0], self.probs[y0], self.images[y0] = labels.copy(), probs.copy(), image.copy()

    def result(self):
        keys = sorted(self.labels)
        return (np.concatenate([self.labels[k] for k in keys]), np.concatenate([self.probs[k] for k in keys], axis=1),
                np.concatenate([self.images[k] for k in keys]))


def _reference_semantic(inf: SlidingWindowInferencer, image: np.ndarray, select=None):
    """Today's synchronous loop: one strip per tile row, windows sliced from it, in batches of the row."""
    height, width = image.shape[:2]
    grid = TileGrid(width, height, inf.tile, inf.stride)
    th, tw = grid.tile_height, grid.tile_width
    weights = torch.from_numpy(blend_window(inf.window_kind, th, tw))
    scores = torch.zeros(inf.num_classes, height, width)
    weight = torch.zeros(height, width)
    cols = grid.col_starts
    for r, y0 in enumerate(grid.row_starts):
        strip = image[y0:y0 + th]
        for i in range(0, len(cols), inf.batch_size):
            xs = cols[i:i + inf.batch_size]
            tiles = np.stack([strip[:, x:x + tw] for x in xs])
            keep = np.ones(len(xs), bool) if select is None else select[r, i:i + len(xs)].copy()
            if inf.tissue_threshold is not None:
                keep &= np.array([tissue_fraction(t) >= inf.tissue_threshold for t in tiles])
            s = torch.zeros(len(xs), inf.num_classes, th, tw)
            s[~torch.from_numpy(keep), inf.background_index] = 1.0
            if keep.any():
                s[torch.from_numpy(keep)] = inf.predict_tiles(tiles[keep])
            for x, one in zip(xs, s):
                scores[:, y0:y0 + th, x:x + tw] += one * weights
                weight[y0:y0 + th, x:x + tw] += weights
    mean = scores / weight.clamp_min(1e-12)
    norm = mean / mean.sum(0, keepdim=True).clamp_min(1e-12)
    return mean.argmax(0).to(torch.uint8).numpy(), (norm * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def _inferencer(model, workers, **kw):
    kw = dict(dict(tile=(128, 128), stride=(96, 96), batch_size=3), **kw)
    return SlidingWindowInferencer(model, 3, with_probs=True, num_workers=workers, **kw)


def _reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith(("uniseg-read", "uniseg-writer"))]


# ---------------------------------------------------------------------------------------------- semantic
@pytest.mark.parametrize("tissue_threshold", [None, 0.3])
def test_pipelined_semantic_equals_todays_loop_on_the_real_slide(tiny_model, he_pixels, tissue_threshold):
    with open_slide(SLIDE) as reader:
        source = RegionSource.open(reader, target_mpp=2.0)
        ref_labels, ref_probs = _reference_semantic(_inferencer(tiny_model, 0, tissue_threshold=tissue_threshold),
                                                    he_pixels)
        assert len(np.unique(ref_labels)) >= 2  # not a constant mask
        for workers in WORKERS:
            sink = BandCollector()
            stats = _inferencer(tiny_model, workers, tissue_threshold=tissue_threshold).run(
                source, [sink], progress=False)
            labels, probs, image = sink.result()
            np.testing.assert_array_equal(labels, ref_labels, err_msg=f"num_workers={workers}")
            np.testing.assert_array_equal(probs, ref_probs, err_msg=f"num_workers={workers}")
            np.testing.assert_array_equal(image, he_pixels)
            assert sink.threads == ({"MainThread"} if workers == 0 else {"uniseg-writer"})
            if tissue_threshold is not None:
                assert 0 < stats.tiles_skipped < stats.tiles
    assert not _reader_threads()


def test_pipelined_semantic_equals_todays_loop_on_a_pyramid_level(tiny_model, he_pixels, tmp_path):
    path = _pyramid(tmp_path / "pyr.tif", he_pixels[:512, :480])
    with open_slide(path) as reader:
        source = RegionSource.open(reader, level=1)  # the 240 x 256 SubIFD level
        image = source.read_all()
        assert image.shape == (256, 240, 3)
        ref = _reference_semantic(_inferencer(tiny_model, 0, tile=(64, 64), stride=(48, 48)), image)
        for workers in WORKERS:
            sink = BandCollector()
            _inferencer(tiny_model, workers, tile=(64, 64), stride=(48, 48)).run(source, [sink], progress=False)
            labels, probs, _ = sink.result()
            np.testing.assert_array_equal(labels, ref[0])
            np.testing.assert_array_equal(probs, ref[1])


def _select(grid, seed=3):
    rng = np.random.default_rng(seed)
    select = rng.random((len(grid.row_starts), len(grid.col_starts))) < 0.5
    select[0, 0], select[0, 1], select[-1, -1] = True, False, False
    return select


def _window_mask(grid, select, value=True):
    th, tw = grid.tile_height, grid.tile_width
    mask = np.zeros((grid.height, grid.width), bool)
    for r, y in enumerate(grid.row_starts):
        for c, x in enumerate(grid.col_starts):
            if select[r, c] == value:
                mask[y:y + th, x:x + tw] = True
    return mask


@pytest.mark.parametrize("workers", [0, 2])
def test_unselected_windows_are_never_read_and_are_background(tiny_model, he_pixels, workers):
    inf = _inferencer(tiny_model, workers, batch_size=1)  # batches as the reference's
    grid = TileGrid(he_pixels.shape[1], he_pixels.shape[0], inf.tile, inf.stride)
    select = _select(grid)
    from uniseg.inference import ArraySource

    source = CountingSource(ArraySource(he_pixels))
    sink = BandCollector()
    stats = inf.run(source, [sink], progress=False, select=select)
    labels, probs, image = sink.result()
    read = source.read_mask()
    selected = _window_mask(grid, select)
    np.testing.assert_array_equal(read, selected)  # exactly the selected windows' pixels, nothing else
    assert stats.tiles == select.size and stats.tiles_skipped == int((~select).sum())
    ref_labels, ref_probs = _reference_semantic(inf, he_pixels, select)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(probs, ref_probs)
    only_unselected = ~selected
    assert only_unselected.any() and (labels[only_unselected] == 0).all()
    assert (image[~read] == 255).all() and np.array_equal(image[read], he_pixels[read])  # the overlay's image
    # nothing selected: nothing read at all, everything background
    none = CountingSource(ArraySource(he_pixels))
    sink = BandCollector()
    inf.run(none, [sink], progress=False, select=np.zeros_like(select))
    assert none.reads == [] and (sink.result()[0] == 0).all()


def test_select_must_match_the_window_grid(tiny_model, he_pixels):
    from uniseg.inference import ArraySource

    with pytest.raises(ValueError, match=r"select must be a bool array of shape \(8, 6\)"):
        _inferencer(tiny_model, 0).run(ArraySource(he_pixels), progress=False, select=np.ones((5, 7), bool))


# ---------------------------------------------------------------------------------------------- cells
class DarkBlobs:
    """Dark connected components of each window, a deterministic stand-in for an instance model."""

    def predict(self, tiles):
        import cv2

        out = []
        for tile in tiles:
            n, ids = cv2.connectedComponents((tile.max(axis=2) < 140).astype(np.uint8), connectivity=8)
            labels = np.zeros(n - 1, np.int64)
            out.append(InstanceMap(ids.astype(np.int32), labels, np.linspace(0.5, 0.9, n - 1)))
        return out


class CellCollector:
    def __init__(self):
        self.cells, self.bands = [], {}

    def write_cells(self, batch):
        self.cells.append(batch)

    def write_band(self, y0, ids):
        self.bands[y0] = ids.copy()

    def result(self):
        ids = np.concatenate([self.bands[k] for k in sorted(self.bands)])
        boxes = np.concatenate([b.boxes for b in self.cells]) if self.cells else np.zeros((0, 4))
        return ids, boxes


def test_pipelined_cells_are_identical_and_tissue_is_counted_once(he_pixels):
    results = []
    with open_slide(SLIDE) as reader:
        source = RegionSource.open(reader, target_mpp=2.0)
        for workers in WORKERS:
            sink = CellCollector()
            stats = CellStitcher(DarkBlobs(), tile=(128, 128), stride=(96, 96), batch_size=3,
                                 num_workers=workers).run(source, [sink])
            results.append((sink.result(), stats))
    (ids0, boxes0), stats0 = results[0]
    assert stats0.cells > 20 and ids0.shape == he_pixels.shape[:2]
    for (ids, boxes), stats in results[1:]:
        np.testing.assert_array_equal(ids, ids0)
        np.testing.assert_array_equal(boxes, boxes0)
        assert (stats.cells, stats.duplicates, stats.fragments, stats.tissue_pixels) == \
            (stats0.cells, stats0.duplicates, stats0.fragments, stats0.tissue_pixels)
    # every pixel once: the whole image's tissue fraction, computed in one go
    h, w = he_pixels.shape[:2]
    assert stats0.tissue_pixels == round(tissue_fraction(he_pixels) * h * w)


@pytest.mark.parametrize("workers", [0, 2])
def test_cells_of_unselected_windows_are_never_read_and_hold_no_cells(he_pixels, workers):
    from uniseg.inference import ArraySource

    tile, stride = (128, 128), (96, 96)
    grid = TileGrid(he_pixels.shape[1], he_pixels.shape[0], tile, stride)
    select = _select(grid, seed=5)
    source = CountingSource(ArraySource(he_pixels))
    sink = CellCollector()
    stats = CellStitcher(DarkBlobs(), tile=tile, stride=stride, batch_size=3, num_workers=workers).run(
        source, [sink], select=select)
    selected = _window_mask(grid, select)
    np.testing.assert_array_equal(source.read_mask(), selected)
    ids, _ = sink.result()
    assert stats.cells > 0 and not ids[~selected].any()  # no cell where no selected window looked
    assert stats.windows == select.size and stats.windows_skipped == int((~select).sum())
    # tissue: every pixel read, once; unread pixels are no tissue
    read = source.read_mask()
    assert stats.tissue_pixels == round(tissue_fraction(he_pixels[read][None]) * read.sum())
    assert 0 < stats.tissue_pixels < round(tissue_fraction(he_pixels) * read.size)


# ---------------------------------------------------------------------------------------------- failures
def test_a_read_error_in_a_reader_thread_names_the_file_and_stops_cleanly(tiny_model, he_pixels, tmp_path):
    path = tmp_path / "broken.tif"
    tifffile.imwrite(path, he_pixels[:384, :384], tile=(64, 64), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with open(path, "r+b") as fh:  # the last tile (bottom right) is garbage
        fh.seek(offset)
        fh.write(b"\x17" * count)
    for run in (lambda src: _inferencer(tiny_model, 2, tile=(64, 64), stride=(64, 64)).run(src, progress=False),
                lambda src: CellStitcher(DarkBlobs(), tile=(64, 64), stride=(64, 64), num_workers=2).run(src)):
        with open_slide(path) as reader:
            with pytest.raises(ImageReadError, match="broken.tif"):
                run(RegionSource.open(reader))
        assert not _reader_threads()


class FailingSink(BandCollector):
    def __init__(self, after):
        super().__init__()
        self.after = after

    def write_band(self, y0, labels, probs=None, image=None):
        if len(self.labels) == self.after:
            raise OSError("disk full (test)")
        super().write_band(y0, labels, probs, image)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_failing_sink_aborts_the_run_without_hanging(tiny_model, he_pixels, workers):
    from uniseg.inference import ArraySource

    start = time.perf_counter()
    sink = FailingSink(after=1)
    with pytest.raises(OSError, match="disk full"):
        _inferencer(tiny_model, workers).run(ArraySource(he_pixels), [sink], progress=False)
    assert len(sink.labels) == 1  # nothing written after the failure
    assert not _reader_threads() and time.perf_counter() - start < 60


def test_an_error_in_the_model_stops_readers_and_writer():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.data_preprocessor = type("P", (), dict(mean=torch.zeros(3), std=torch.ones(3)))()
            self.calls = 0

        def encode_decode(self, x, metas):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("model failed (test)")
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    from uniseg.inference import ArraySource

    img = np.full((400, 300, 3), 128, np.uint8)
    with pytest.raises(RuntimeError, match="model failed"):
        SlidingWindowInferencer(Broken(), 2, tile=(64, 64), num_workers=2).run(ArraySource(img), progress=False)
    assert not _reader_threads()


def test_reader_keeps_row_major_order_and_bounded_prefetch(he_pixels):
    from uniseg.inference import ArraySource

    grid = TileGrid(he_pixels.shape[1], he_pixels.shape[0], (128, 128), (96, 96))
    reader = WindowReader(ArraySource(he_pixels), grid, batch_size=2, num_workers=2, prefetch=3)
    seen = []
    for row in reader.rows():
        seen.extend((row.y0, x) for b in row.batches for x in b.xs)
        assert all(len(b.tiles) <= 2 for b in row.batches)
    assert seen == [(y, x) for y in grid.row_starts for x in grid.col_starts]


def test_num_workers_is_checked_with_flag_and_argument():
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"--workers \(num_workers\) must be an integer >= 0"):
            check_num_workers(bad)
    check_num_workers(0)
