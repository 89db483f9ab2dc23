"""Streaming sliding-window inference against mmseg's slide_inference."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from torch import nn

from uniseg.inference import ArraySource, SlidingWindowInferencer
from uniseg.inference.tiling import TileGrid, axis_starts, blend_window


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 235, np.uint8)
    for _ in range(max(3, h * w // 4000)):
        y, x = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(4, 14)
        yy, xx = np.ogrid[:h, :w]
        img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(40, 200, 3)
    return img


def _mmseg_slide_labels(model, img, tile, stride):
    """mmseg's own slide_inference on the whole image as one tensor (normalised like the data preprocessor)."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    x = (x - model.data_preprocessor.mean.view(1, 3, 1, 1)) / model.data_preprocessor.std.view(1, 3, 1, 1)
    from mmengine.config import ConfigDict

    model.test_cfg = ConfigDict(mode="slide", crop_size=tile, stride=stride)
    meta = dict(img_shape=img.shape[:2], ori_shape=img.shape[:2], pad_shape=img.shape[:2])
    with torch.no_grad():
        logits = EncoderDecoder.slide_inference(model, x, [meta])
    return logits[0].argmax(0).numpy().astype(np.uint8)


def _stream(inferencer, img):
    rows = {}
    inferencer.run(ArraySource(img), progress=False, on_band=lambda y0, labels: rows.__setitem__(y0, labels))
    return np.concatenate([rows[k] for k in sorted(rows)])


@pytest.fixture
def tiny_model(tiny_model_cfg):
    cfg = tiny_model_cfg
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


def test_axis_starts_follow_mmseg():
    assert axis_starts(256, 128, 96) == [0, 96, 128]
    assert axis_starts(100, 128, 96) == [0]  # smaller than one tile: one window of the image size
    assert axis_starts(384, 128, 128) == [0, 128, 256]
    with pytest.raises(ValueError, match="gaps"):
        axis_starts(100, 32, 40)


def test_blend_windows_are_positive_and_tapered():
    for kind in ("uniform", "cosine", "gaussian"):
        w = blend_window(kind, 16, 20)
        assert w.shape == (16, 20) and (w > 0).all()
    cos = blend_window("cosine", 16, 16)
    assert cos[8, 8] > 10 * cos[0, 0]
    with pytest.raises(ValueError, match="unknown blending window 'box'"):
        blend_window("box", 4, 4)


def test_uniform_stream_equals_mmseg_slide_inference(tiny_model):
    img = _image(300, 260)
    tile, stride = (128, 128), (96, 96)
    expected = _mmseg_slide_labels(tiny_model, img, tile, stride)
    got = _stream(SlidingWindowInferencer(tiny_model, 3, tile=tile, stride=stride, batch_size=3, window="uniform"),
                  img)
    assert got.shape == expected.shape == (300, 260)
    agreement = (got == expected).mean()
    print(f"pixel agreement with mmseg slide_inference: {agreement:.6f}")
    assert agreement >= 0.999


class _PixelwiseSegmentor(nn.Module):
    """A model whose output at a pixel depends only on that pixel: tiling cannot change it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.data_preprocessor = nn.Module()
        self.data_preprocessor.register_buffer("mean", torch.tensor([120.0, 110.0, 100.0]).view(3, 1, 1))
        self.data_preprocessor.register_buffer("std", torch.tensor([60.0, 55.0, 50.0]).view(3, 1, 1))
        self.out_channels = 4

    def encode_decode(self, x, metas):
        return self.conv(x).softmax(1)


def test_position_independent_model_gives_exactly_mmseg():
    torch.manual_seed(1)
    model = _PixelwiseSegmentor().eval()
    img = _image(517, 389, seed=3)
    expected = _mmseg_slide_labels(model, img, (64, 64), (40, 40))
    for window in ("uniform", "cosine", "gaussian"):
        got = _stream(SlidingWindowInferencer(model, 4, tile=(64, 64), stride=(40, 40), batch_size=5,
                                              window=window), img)
        assert np.array_equal(got, expected), window


def _torch_peak_bytes(fn) -> int:
    """Peak of the bytes torch's CPU allocator holds while ``fn`` runs, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        held += event.self_cpu_memory_usage  # allocations > 0, frees < 0
        peak = max(peak, held)
    return peak


def _numpy_peak_bytes(fn) -> int:
    """Peak of the bytes numpy (and Python) allocate while ``fn`` runs (numpy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bands_arrive_in_order_and_memory_follows_width_not_height():
    model = _PixelwiseSegmentor().eval()
    seen = []
    inferencer = SlidingWindowInferencer(model, 4, tile=(64, 64), stride=(48, 48), batch_size=4)
    images = {size: _image(*size) for size in [(1200, 200), (100, 200), (1200, 800)]}  # allocated before measuring
    tall = inferencer.run(ArraySource(images[1200, 200]), progress=False,
                          on_band=lambda y0, labels: seen.append((y0, labels.shape)))
    assert [y for y, _ in seen] == sorted(y for y, _ in seen)
    assert sum(shape[0] for _, shape in seen) == 1200
    assert all(shape[1] == 200 for _, shape in seen)
    assert tall.tiles == len(TileGrid(200, 1200, (64, 64), (48, 48)))

    def run(size):
        return lambda: inferencer.run(ArraySource(images[size]), progress=False)

    torch_peak = {size: _torch_peak_bytes(run(size)) for size in images}
    numpy_peak = {size: _numpy_peak_bytes(run(size)) for size in images}
    print("torch peak", torch_peak, "numpy peak", numpy_peak)
    # 12 times the height, same width: the same memory (the band is one tile high)
    assert torch_peak[1200, 200] <= 1.05 * torch_peak[100, 200]
    assert numpy_peak[1200, 200] <= 1.1 * numpy_peak[100, 200] + 16384
    # 4 times the width: more, by at least one float32 per pixel of a tile-high band of the added columns
    assert torch_peak[1200, 800] - torch_peak[1200, 200] >= 64 * 600 * 4


def test_tissue_detection_skips_blank_windows_as_background():
    model = _PixelwiseSegmentor().eval()
    img = np.full((128, 256, 3), 245, np.uint8)
    img[:, 160:] = (150, 60, 120)  # tissue only on the right
    inferencer = SlidingWindowInferencer(model, 4, tile=(64, 64), stride=(64, 64), tissue_threshold=0.05,
                                         background_index=0)
    rows = {}
    stats = inferencer.run(ArraySource(img), progress=False, on_band=lambda y, l: rows.__setitem__(y, l))
    labels = np.concatenate([rows[k] for k in sorted(rows)])
    assert stats.tiles == 8 and stats.tiles_skipped == 4
    assert (labels[:, :128] == 0).all()


class _TwoLayerPixelwise(_PixelwiseSegmentor):
    """Pixel-wise, non-linear, with several classes competing: bf16 rounding can flip near-ties only."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Conv2d(3, 16, 1)
        self.conv = nn.Conv2d(16, 4, 1)
        self.seen_dtypes = []

    def encode_decode(self, x, metas):
        hidden = self.hidden(x)
        self.seen_dtypes.append(hidden.dtype)  # bfloat16 only if autocast is really on
        return self.conv(torch.relu(hidden)).float().softmax(1)


def test_amp_runs_under_bf16_autocast_and_agrees_with_fp32():
    torch.manual_seed(2)
    model = _TwoLayerPixelwise().eval()
    img = _image(200, 240, seed=5)
    fp32 = _stream(SlidingWindowInferencer(model, 4, tile=(64, 64), stride=(48, 48)), img)
    assert set(model.seen_dtypes) == {torch.float32}
    model.seen_dtypes.clear()
    bf16 = _stream(SlidingWindowInferencer(model, 4, tile=(64, 64), stride=(48, 48), amp=True), img)
    assert set(model.seen_dtypes) == {torch.bfloat16}
    assert len(np.unique(fp32)) >= 3  # a mask with several classes, not a constant
    agreement = (fp32 == bf16).mean()
    print(f"bf16 / fp32 label agreement: {agreement:.5f}")
    assert agreement >= 0.99


def test_amp_on_the_tiny_mask2former_is_close_to_fp32(tiny_model):
    """The real model's path (adapter, deformable attention, Mask2Former head) under CPU bf16 autocast."""
    tiles = _image(128, 256)[None, :, :128].repeat(2, 0)
    tiles[1] = _image(128, 128, seed=7)
    fp32 = SlidingWindowInferencer(tiny_model, 3, tile=(128, 128)).predict_tiles(tiles)
    bf16 = SlidingWindowInferencer(tiny_model, 3, tile=(128, 128), amp=True).predict_tiles(tiles)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    scale = fp32.abs().max()
    difference = (bf16 - fp32).abs().max() / scale
    print(f"tiny Mask2Former bf16 vs fp32: max difference {difference:.4f} of the largest score")
    assert 0 < difference < 0.05  # really computed in bf16 (not identical), and close


def test_probabilities_are_the_models_normalised_scores_and_agree_with_the_labels():
    """A pixel-wise model gives every window the same scores at a pixel, so the blended
    probabilities must equal the model's own scores normalised over classes (computed here on the
    whole image at once), for any window."""
    torch.manual_seed(3)
    model = _TwoLayerPixelwise().eval()
    img = _image(150, 170, seed=9)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    x = (x - model.data_preprocessor.mean) / model.data_preprocessor.std
    with torch.no_grad():
        scores = model.encode_decode(x, None)[0]
    expected = (scores / scores.sum(0, keepdim=True) * 255).round().numpy().astype(np.uint8)
    for window in ("cosine", "uniform"):
        sink = _BandRecorder()
        SlidingWindowInferencer(model, 4, tile=(64, 64), stride=(40, 40), window=window, with_probs=True).run(
            ArraySource(img), [sink], progress=False)
        label_map = np.concatenate([sink.labels[k] for k in sorted(sink.labels)])
        prob_map = np.concatenate([sink.probs[k] for k in sorted(sink.probs)], axis=1)
        assert prob_map.shape == (4, 150, 170) and prob_map.dtype == np.uint8
        assert np.abs(prob_map.astype(int) - expected).max() <= 1, window  # float rounding of the blend
        total = prob_map.astype(int).sum(0)
        assert np.abs(total - 255).max() <= 2  # four values each rounded by at most 1/2
        # the label is the most probable class: the argmax, or one of the classes tied after rounding to uint8
        top = prob_map.max(0)
        label_prob = np.take_along_axis(prob_map, label_map[None].astype(np.int64), 0)[0]
        np.testing.assert_array_equal(label_prob, top)
        unique_top = (prob_map == top).sum(0) == 1
        assert unique_top.mean() > 0.95
        np.testing.assert_array_equal(prob_map.argmax(0)[unique_top], label_map[unique_top])


class _BandRecorder:
    """A sink that keeps what it is given."""

    def __init__(self):
        self.labels, self.probs = {}, {}

    def write_band(self, y0, labels, probs=None, image=None):
        self.labels[y0], self.probs[y0] = labels, probs
