"""CellStitcher: every cell exactly once across window seams, bounded memory, and the Mask2Former adapter.

The stitching logic is checked with a deterministic predictor (dark connected components of the
window, class by colour) on generated discs; the reference is the connected components of the
whole image computed at once.
"""
import math
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from uniseg.export.base import ExportContext
from uniseg.export.cells import CellSink
from uniseg.inference.cell_stitching import CellStitcher, axis_cores, cell_summary
from uniseg.inference.inferencer import ArraySource
from uniseg.inference.tiling import TileGrid
from uniseg.inference.tissue import tissue_fraction
from uniseg.structures.instances import InstanceMap, paint_instances

BLUE, RED = (60, 40, 150), (150, 30, 40)    # class 0, class 1
PINK, GLASS = (225, 170, 200), (245, 245, 245)
R_MAX = 12                                  # largest disc: diameter 25 px


# ---------------------------------------------------------------------------- scene and predictors
def _scene(height, width, seed=0, tile=None, stride=None, r_max=R_MAX):
    """Discs of random radius (3..r_max) 3+ px apart, on glass with a pink tissue region; also discs
    centred on every core boundary of (tile, stride) and discs cut by the ROI border."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = GLASS
    rgb[: height // 2, : width // 2] = PINK  # tissue that is not a cell
    taken = np.zeros((height + 2 * r_max + 8, width + 2 * r_max + 8), bool)  # disc squares, padded
    count = [0]

    def place(cy, cx, r):
        pad = r_max + 4
        if taken[cy + pad - r - 3:cy + pad + r + 4, cx + pad - r - 3:cx + pad + r + 4].any():
            return  # keep the squares around discs 3 px apart, so discs never touch
        taken[cy + pad - r:cy + pad + r + 1, cx + pad - r:cx + pad + r + 1] = True
        count[0] += 1
        cv2.circle(rgb, (int(cx), int(cy)), int(r), BLUE if count[0] % 3 else RED, thickness=-1)

    if tile is not None:
        for _, boundary in axis_cores(width, tile[1], stride[1])[:-1]:
            place(int(rng.integers(r_max, height - r_max)), int(boundary), int(rng.integers(r_max - 2, r_max + 1)))
        for _, boundary in axis_cores(height, tile[0], stride[0])[:-1]:
            place(int(boundary), int(rng.integers(r_max, width - r_max)), int(rng.integers(r_max - 2, r_max + 1)))
    for cy, cx in ((0, width // 3), (height - 1, width // 2), (height // 3, 0), (height // 2, width - 2)):
        place(cy, cx, r_max)  # cut by the ROI border
    for _ in range(height * width // 120):
        place(int(rng.integers(-4, height + 4)), int(rng.integers(-4, width + 4)), int(rng.integers(3, r_max + 1)))
    return rgb


def _dark(rgb):
    return (rgb.max(axis=2) < 170).astype(np.uint8)


def _components(rgb):
    """Connected dark components with a class each (majority colour): the whole-image reference."""
    count, ids = cv2.connectedComponents(_dark(rgb), connectivity=8)
    blue = (rgb[..., 2] > rgb[..., 0]).ravel()
    counts = np.bincount(ids.ravel(), minlength=count)
    blue_fraction = np.bincount(ids.ravel(), weights=blue, minlength=count) / np.maximum(counts, 1)
    labels = (blue_fraction[1:] < 0.5).astype(np.int64)  # blue -> 0, red -> 1
    return ids, labels, counts[1:]


class BlobPredictor:
    """Dark components of each window; the score depends on the component's own pixels only."""

    def __init__(self):
        self.windows = 0

    def predict(self, tiles):
        out = []
        for tile in tiles:
            ids, labels, areas = _components(tile)
            out.append(InstanceMap(ids, labels, 0.5 + 0.4 * (areas % 7) / 7))
            self.windows += 1
        return out


class ShiftingPredictor(BlobPredictor):
    """Masks moved by 1 px, in opposite directions in neighbouring windows (window order is row-major,
    ``columns`` windows per row): a cell centred on a core boundary is then seen in *both* cores at
    some seams and in *neither* at others. ``fill='edge'`` repeats the window's edge pixels into the
    vacated row/column (a cut cell still touches the edge); ``'zero'`` leaves them empty (a cut
    cell stops a pixel short of the edge, as models sometimes do)."""

    def __init__(self, columns, fill="edge"):
        super().__init__()
        self.columns, self.fill = columns, fill

    def predict(self, tiles):
        out = []
        for tile in tiles:
            row, col = divmod(self.windows, self.columns)
            inst = super().predict(tile[None])[0]
            dy, dx = (1 if row % 2 == 0 else -1), (1 if col % 2 == 0 else -1)
            ids = np.zeros_like(inst.ids)
            h, w = ids.shape
            ids[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                inst.ids[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            if self.fill == "edge":
                ids[0 if dy > 0 else -1] = ids[1 if dy > 0 else -2]
                ids[:, 0 if dx > 0 else -1] = ids[:, 1 if dx > 0 else -2]
            present = np.zeros(inst.num_instances + 1, bool)
            present[np.unique(ids)] = True
            old = np.flatnonzero(present[1:]) + 1  # components shifted entirely out of the window are gone
            lookup = np.zeros(inst.num_instances + 1, np.int32)
            lookup[old] = np.arange(1, len(old) + 1)
            out.append(InstanceMap(lookup[ids], inst.labels[old - 1], inst.scores[old - 1]))
        return out


class Collect(CellSink):
    """Keeps everything in memory (tests only): the id image and the cell batches."""

    def _open(self, ctx):
        self.rows, self.batches = [], []

    def _write_cells(self, cells):
        self.batches.append(cells)

    def _write_band(self, y0, ids):
        self.rows.append(ids.copy())

    def _finish(self):
        self.ids = np.concatenate(self.rows)
        return []

    def _abort(self):
        pass


def _stitch(rgb, predictor, tile, stride, **kwargs):
    sink = Collect()
    sink.open(ExportContext(rgb.shape[1], rgb.shape[0], ("blue", "red"), mpp=0.5))
    stats = CellStitcher(predictor, tile=tile, stride=stride, batch_size=3, **kwargs).run(ArraySource(rgb), [sink])
    sink.close()
    return sink, stats


def _match(reference, stitched):
    """Pairs (reference id, stitched id) sharing pixels, with counts."""
    both = (reference > 0) & (stitched > 0)
    pairs, counts = np.unique(reference[both].astype(np.int64) * 2**32 + stitched[both], return_counts=True)
    return pairs >> 32, pairs & 0xFFFFFFFF, counts


# ---------------------------------------------------------------------------- exactness
CASES = [
    # (height, width, tile, stride): overlap 26 px just wider than the largest disc (25 px) ...
    (300, 410, (96, 96), (70, 70)),     # ... with mmseg's last window pushed back (last overlap 62 px)
    (257, 333, (64, 80), (38, 54)),     # non-square tile and stride, odd sizes
    (90, 400, (128, 128), (100, 100)),  # one window row (tile taller than the ROI)
    (120, 130, (128, 128), (96, 96)),   # one window: the ROI itself
]


@pytest.mark.parametrize("height,width,tile,stride", CASES)
def test_every_cell_exactly_once(height, width, tile, stride):
    rgb = _scene(height, width, seed=height, tile=tile, stride=stride)
    reference, ref_labels, ref_areas = _components(rgb)
    sink, stats = _stitch(rgb, BlobPredictor(), tile, stride)
    ids = sink.ids
    # the same pixels are cells, and cells correspond one to one with identical pixels
    np.testing.assert_array_equal(ids > 0, reference > 0)
    ref_ids, got_ids, shared = _match(reference, ids)
    assert len(ref_ids) == len(np.unique(ref_ids)) == len(ref_areas), "a reference cell is split or missing"
    assert len(got_ids) == len(np.unique(got_ids)) == stats.cells, "a stitched cell covers two discs"
    np.testing.assert_array_equal(shared, ref_areas[ref_ids - 1])
    # the batches describe the id image: ids 1..n, classes, areas
    batch_ids = np.concatenate([b.ids for b in sink.batches])
    np.testing.assert_array_equal(batch_ids, np.arange(1, stats.cells + 1))
    labels = np.concatenate([b.labels for b in sink.batches])
    areas = np.concatenate([b.areas for b in sink.batches])
    order = np.argsort(got_ids)
    np.testing.assert_array_equal(labels[got_ids[order] - 1], ref_labels[ref_ids[order] - 1])
    np.testing.assert_array_equal(areas, np.bincount(ids.ravel(), minlength=stats.cells + 1)[1:])
    assert stats.touching_border == 0 and stats.contested_pixels == 0
    assert stats.cells + stats.duplicates + stats.fragments == stats.candidates
    assert stats.fragments > 0 or len(TileGrid(width, height, tile, stride)) == 1  # seams cut some discs
    assert stats.class_counts == {c: int(n) for c, n in enumerate(np.bincount(ref_labels)) if n}


@pytest.mark.parametrize("height,width,tile,stride", CASES[:2])
def test_kept_cell_comes_from_the_core_holding_its_centroid(height, width, tile, stride):
    """When windows agree, the choice is the core rule (cores computed independently by axis_cores)."""
    rgb = _scene(height, width, seed=1, tile=tile, stride=stride)
    grid = TileGrid(width, height, tile, stride)
    columns = len(grid.col_starts)

    class WindowScored(BlobPredictor):
        """Scores name the window (decreasing, so exact depth ties go to the earlier window as in axis_cores)."""

        def predict(self, tiles):
            first = self.windows
            out = super().predict(tiles)
            for k, inst in enumerate(out):
                inst.scores[:] = 0.9 - 0.001 * (first + k)
            return out

    sink, stats = _stitch(rgb, WindowScored(), tile, stride)
    row_cores, col_cores = axis_cores(height, tile[0], stride[0]), axis_cores(width, tile[1], stride[1])
    owners = set()
    for batch in sink.batches:
        for (cy, cx), score in zip(batch.centroids, batch.scores):
            window = int(round((0.9 - score) / 0.001))
            r, c = divmod(window, columns)
            assert row_cores[r][0] < cy + 0.5 <= row_cores[r][1] and col_cores[c][0] < cx + 0.5 <= col_cores[c][1], \
                f"cell at ({cy:.1f}, {cx:.1f}) kept by window {(r, c)} whose core does not hold it"
            owners.add(window)
    assert stats.touching_border == 0  # overlap wider than any cell: no kept cell is cut
    assert len(owners) == len(grid)    # every window kept some cells


def test_axis_cores_tile_the_axis_and_meet_mid_overlap():
    starts = [0, 70, 140, 210, 280, 314]          # mmseg positions for 410 px, tile 96, stride 70
    cores = axis_cores(410, 96, 70)
    assert [hi for _, hi in cores[:-1]] == [(s + 96 + t) / 2 for s, t in zip(starts[:-1], starts[1:])]
    assert cores[0][0] == -math.inf and cores[-1][1] == math.inf
    assert all(a[1] == b[0] for a, b in zip(cores[:-1], cores[1:]))
    assert cores[-2][1] - cores[-2][0] < 70     # the last overlap is larger: the core before it shrinks
    assert axis_cores(50, 96, 70) == [(-math.inf, math.inf)]


@pytest.mark.parametrize("fill,edge_width", [("edge", 1), ("zero", 2)])
def test_disagreeing_windows_still_give_each_cell_once(fill, edge_width):
    """Overlap 30 px: the largest disc (25 px) plus the disagreement between windows (2 x 1 px) and the
    edge width fit in it."""
    height, width, tile, stride = 300, 410, (96, 96), (66, 66)
    rgb = _scene(height, width, seed=7, tile=tile, stride=stride)
    reference, _, ref_areas = _components(rgb)
    columns = len(TileGrid(width, height, tile, stride).col_starts)
    sink, stats = _stitch(rgb, ShiftingPredictor(columns, fill), tile, stride, edge_width=edge_width)
    ref_ids, got_ids, shared = _match(reference, sink.ids)
    # one cell per disc: every disc overlaps exactly one cell, every cell exactly one disc, and the
    # cell is the disc moved by at most a pixel per axis (it keeps most of the disc's pixels)
    assert len(np.unique(ref_ids)) == len(ref_ids) == len(ref_areas), "a disc is lost or split into two cells"
    assert len(np.unique(got_ids)) == len(got_ids) == stats.cells, "a cell spans two discs"
    # moving a disc by one pixel along each axis loses at most one row and one column of it
    extent = np.array([[s.stop - s.start for s in box] for box in ndimage.find_objects(reference)])
    assert (shared >= ref_areas[ref_ids - 1] - extent[ref_ids - 1].sum(axis=1)).all()
    assert stats.fragments > 0 and stats.duplicates > 0
    if fill == "zero":  # masks that stop short of the window edge pass for whole cells without edge_width
        _, loose = _stitch(rgb, ShiftingPredictor(columns, fill), tile, stride, edge_width=1)
        assert loose.cells > len(ref_areas)

    # The naive rule (each window keeps the cells whose centroid lies in its own core) fails on the
    # same predictions: it loses some cells and duplicates others. This proves the scene tests it.
    grid = TileGrid(width, height, tile, stride)
    naive = ShiftingPredictor(columns, fill)
    row_cores, col_cores = axis_cores(height, tile[0], stride[0]), axis_cores(width, tile[1], stride[1])
    kept = []
    for r, y in enumerate(grid.row_starts):
        for c, x in enumerate(grid.col_starts):
            inst = naive.predict(rgb[None, y:y + grid.tile_height, x:x + grid.tile_width])[0]
            for k in range(1, inst.num_instances + 1):
                ys, xs = np.nonzero(inst.ids == k)
                cy, cx = y + ys.mean() + 0.5, x + xs.mean() + 0.5
                if row_cores[r][0] < cy <= row_cores[r][1] and col_cores[c][0] < cx <= col_cores[c][1]:
                    kept.append(int(np.bincount(reference[y + ys, x + xs]).argmax()))
    counts = np.bincount(kept, minlength=len(ref_areas) + 1)[1:]
    assert (counts == 0).any() and (counts > 1).any()


def test_cells_larger_than_the_overlap_are_reported():
    """A disc wider than the overlap is cut in both windows: kept once (truncated) and counted, or dropped."""
    height, width, tile, stride = 96, 166, (96, 96), (70, 70)
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = GLASS
    boundary = int(axis_cores(width, 96, 70)[0][1])  # 83
    cv2.circle(rgb, (boundary, 48), 20, BLUE, thickness=-1)   # diameter 41 > overlap 26
    cv2.circle(rgb, (20, 20), 6, RED, thickness=-1)           # an ordinary cell
    sink, stats = _stitch(rgb, BlobPredictor(), tile, stride)
    assert stats.cells == 2 and stats.touching_border == 1 and stats.duplicates == 1 and stats.fragments == 0
    touching = np.concatenate([b.touches_border for b in sink.batches])
    assert touching.sum() == 1
    _, stats = _stitch(rgb, BlobPredictor(), tile, stride, border_cells="drop")
    assert stats.cells == 1 and stats.border_dropped == 2 and stats.touching_border == 0


def test_a_cell_cut_in_every_window_is_kept_once():
    """With edge_width 2 and an overlap only 1 px wider than the discs, a disc centred on a core boundary
    comes within 2 px of an inner border in both windows: both views are cut and each lies inside the
    other window. Neither may drop the other as a fragment; one is kept and reported."""
    height, width, tile, stride = 300, 410, (96, 96), (70, 70)
    rgb = _scene(height, width, seed=height, tile=tile, stride=stride)
    reference, _, ref_areas = _components(rgb)
    sink, stats = _stitch(rgb, BlobPredictor(), tile, stride, edge_width=2)
    np.testing.assert_array_equal(sink.ids > 0, reference > 0)
    ref_ids, got_ids, shared = _match(reference, sink.ids)
    assert len(np.unique(ref_ids)) == len(ref_ids) == len(ref_areas) == stats.cells
    np.testing.assert_array_equal(shared, ref_areas[ref_ids - 1])
    assert stats.touching_border > 0  # the boundary discs, kept from a window they come within 2 px of


def test_tissue_threshold_skips_windows_and_summary_counts_tissue_once():
    height, width, tile, stride = 300, 410, (96, 96), (70, 70)
    rgb = _scene(height, width, seed=3, tile=tile, stride=stride)
    sink, stats = _stitch(rgb, BlobPredictor(), tile, stride)
    expected_tissue = round(tissue_fraction(rgb) * height * width)  # one test over the whole image
    assert stats.tissue_pixels == expected_tissue and stats.roi_pixels == height * width
    summary = cell_summary(stats, ("blue", "red"), mpp=0.5)
    tissue_mm2 = expected_tissue * (0.5 / 1000) ** 2
    assert summary["tissue_area_mm2"] == pytest.approx(tissue_mm2, abs=1e-6)
    assert summary["cells"] == stats.cells
    assert summary["cells_per_mm2_tissue"] == pytest.approx(stats.cells / tissue_mm2, rel=1e-4)
    assert sum(c["cells"] for c in summary["classes"].values()) == stats.cells
    assert summary["duplicates_dropped"] == stats.duplicates and summary["windows"] == stats.windows
    assert cell_summary(stats, ("blue", "red"), mpp=None)["cells_per_mm2_tissue"] is None

    blank = rgb.copy()
    blank[:, 150:] = GLASS  # no tissue on the right: those windows are not run
    _, skipped = _stitch(blank, BlobPredictor(), tile, stride, tissue_threshold=0.01)
    assert 0 < skipped.windows_skipped < skipped.windows


def test_bad_predictor_output_is_refused():
    class Wrong:
        def predict(self, tiles):
            return [InstanceMap.empty(10, 10) for _ in tiles]

    with pytest.raises(ValueError, match="one InstanceMap of the window size"):
        _stitch(_scene(100, 100), Wrong(), (64, 64), (48, 48))
    with pytest.raises(ValueError, match="border_cells"):
        CellStitcher(BlobPredictor(), border_cells="maybe")
    with pytest.raises(ValueError, match="leaves gaps"):
        CellStitcher(BlobPredictor(), tile=(64, 64), stride=(80, 64))


# ---------------------------------------------------------------------------- memory
def _peak_bytes(rgb, tmp_path, tile, stride):
    from uniseg.export.cells import CellGeoJsonSink, CellLabelTiffSink, CellTableSink

    ctx = ExportContext(rgb.shape[1], rgb.shape[0], ("blue", "red"), mpp=0.5)
    sinks = [CellLabelTiffSink(tmp_path / "c.tif", tile=128), CellTableSink(tmp_path / "c.csv"),
             CellGeoJsonSink(tmp_path / "c.geojson")]
    stitcher = CellStitcher(BlobPredictor(), tile=tile, stride=stride, batch_size=4)
    tracemalloc.start()
    try:
        for sink in sinks:
            sink.open(ctx)
        stats = stitcher.run(ArraySource(rgb), sinks)
        for sink in sinks:
            sink.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, stats


def test_memory_follows_the_width_not_the_height(tmp_path):
    width, tile, stride = 640, (128, 128), (96, 96)
    short = _scene(300, width, seed=5)
    tall = _scene(3000, width, seed=5)  # allocated before tracing: only the stitcher and sinks count
    (tmp_path / "s").mkdir()
    (tmp_path / "t").mkdir()
    peak_short, stats_short = _peak_bytes(short, tmp_path / "s", tile, stride)
    peak_tall, stats_tall = _peak_bytes(tall, tmp_path / "t", tile, stride)
    print(f"peak {peak_short / 1e6:.2f} MB for {short.shape[0]} rows ({stats_short.cells} cells), "
          f"{peak_tall / 1e6:.2f} MB for {tall.shape[0]} rows ({stats_tall.cells} cells); "
          f"the tall id image alone is {tall.shape[0] * width * 4 / 1e6:.1f} MB")
    assert stats_tall.cells > 8 * stats_short.cells
    assert peak_tall < 1.5 * peak_short
    # growth with the height is a small fraction of what the extra rows of the id image alone would take
    assert peak_tall - peak_short < 0.05 * (tall.shape[0] - short.shape[0]) * width * 4


# ---------------------------------------------------------------------------- the Mask2Former adapter
def _tiny_mask2former(num_classes=2, max_per_image=12):
    """mmdet 3.3.0's COCO instance Mask2Former with uniseg's tiny ViT-Adapter, shrunk to CPU size."""
    from mmdet.registry import MODELS
    from mmengine.hub import get_config
    from mmengine.registry import DefaultScope

    cfg = get_config("mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py")
    model = cfg.model
    feat = 32
    model.data_preprocessor.batch_augments = None
    model.backbone = dict(type="mmseg.ViTAdapter", encoder="uni-tiny", encoder_weights=None, conv_inplane=16,
                          deform_num_heads=4, interaction_indexes=None, norm_cfg=dict(type="BN", requires_grad=True))
    head = model.panoptic_head
    head.update(in_channels=[64] * 4, feat_channels=feat, out_channels=feat, num_queries=20,
                num_things_classes=num_classes, num_stuff_classes=0)
    head.loss_cls.class_weight = [1.0] * num_classes + [0.1]
    encoder = head.pixel_decoder.encoder
    encoder.num_layers = 1
    encoder.layer_cfg.self_attn_cfg.update(embed_dims=feat, num_heads=4)
    encoder.layer_cfg.ffn_cfg.update(embed_dims=feat, feedforward_channels=2 * feat)
    head.pixel_decoder.positional_encoding.num_feats = feat // 2
    head.positional_encoding.num_feats = feat // 2
    decoder = head.transformer_decoder
    decoder.num_layers = 2
    for name in ("self_attn_cfg", "cross_attn_cfg"):
        decoder.layer_cfg[name].update(embed_dims=feat, num_heads=4)
    decoder.layer_cfg.ffn_cfg.update(embed_dims=feat, feedforward_channels=2 * feat)
    model.panoptic_fusion_head.update(num_things_classes=num_classes, num_stuff_classes=0)
    model.test_cfg.max_per_image = max_per_image
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmdet"):  # the tests' default scope is mmseg
        return MODELS.build(model).eval()


@pytest.fixture(scope="module")
def tiny_mask2former():
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return _tiny_mask2former()


def test_mask2former_adapter_matches_mmdets_own_pipeline(tiny_mask2former):
    """Same cells as mmdet's DetDataPreprocessor (BGR input, normalise, pad to 32) + predict + painting."""
    from mmdet.structures import DetDataSample

    from uniseg.inference.cell_predictor import Mask2FormerCellPredictor

    model = tiny_mask2former
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (2, 72, 88, 3), dtype=np.uint8)  # not a multiple of the size divisor
    pre = model.data_preprocessor
    # bgr_to_rgb=True (the model sees RGB) and False (trained on OpenCV's BGR): files are read as BGR
    for conversion in (True, False):
        pre._channel_conversion = conversion
        try:
            cells = Mask2FormerCellPredictor(model, score_thr=0.0, min_visible=0.5).predict(tiles)
            samples = [DetDataSample(metainfo=dict(img_shape=(72, 88), ori_shape=(72, 88), scale_factor=(1.0, 1.0)))
                       for _ in tiles]
            bgr = [torch.from_numpy(t[..., ::-1].copy()).permute(2, 0, 1) for t in tiles]
            batch = pre(dict(inputs=bgr, data_samples=samples), training=False)
            with torch.no_grad():
                results = model.predict(batch["inputs"], batch["data_samples"], rescale=False)
        finally:
            pre._channel_conversion = True
        assert tuple(batch["inputs"].shape[-2:]) == (96, 96)
        assert len(cells) == 2
        for inst, result in zip(cells, results):
            pred = result.pred_instances
            expected = paint_instances(pred.masks.numpy(), pred.scores.numpy(), pred.labels.numpy(), score_thr=0.0)
            assert inst.ids.shape == (72, 88)
            assert inst.num_instances > 0  # random weights still produce scored masks
            np.testing.assert_array_equal(inst.ids, expected.ids)
            np.testing.assert_array_equal(inst.labels, expected.labels)
            np.testing.assert_allclose(inst.scores, expected.scores, rtol=1e-5)
            assert set(inst.labels.tolist()) <= {0, 1} and ((inst.scores >= 0) & (inst.scores <= 1)).all()
            assert inst.num_instances <= 12
    # thresholds and the cap apply
    strict = Mask2FormerCellPredictor(model, score_thr=float(np.median(cells[0].scores)), max_per_image=3)
    for inst in strict.predict(tiles):
        assert inst.num_instances <= 3 and (inst.scores >= strict.score_thr).all()


def test_mask2former_adapter_drives_the_stitcher(tiny_mask2former):
    from uniseg.inference.cell_predictor import Mask2FormerCellPredictor

    rgb = _scene(150, 170, seed=2)
    predictor = Mask2FormerCellPredictor(tiny_mask2former, score_thr=0.0, amp=True)  # bf16 autocast on CPU
    sink, stats = _stitch(rgb, predictor, (96, 96), (64, 64))
    assert stats.windows == len(TileGrid(170, 150, (96, 96), (64, 64))) == 6
    assert stats.candidates > 0 and stats.cells > 0
    assert stats.cells + stats.duplicates + stats.fragments + stats.border_dropped == stats.candidates
    ids = np.concatenate([b.ids for b in sink.batches])
    np.testing.assert_array_equal(np.unique(sink.ids[sink.ids > 0]), ids)  # every kept cell has pixels


def test_mask2former_adapter_refuses_a_model_without_instance_output(tiny_mask2former):
    from uniseg.inference.cell_predictor import Mask2FormerCellPredictor

    model = tiny_mask2former
    saved = model.test_cfg
    model.test_cfg = dict(saved, instance_on=False)
    try:
        with pytest.raises(ValueError, match="instance_on=True"):
            Mask2FormerCellPredictor(model)
    finally:
        model.test_cfg = saved
