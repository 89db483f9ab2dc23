"""Streaming sliding-window inference against mmseg's slide_inference."""
from __future__ import annotations

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
    got = _stream(SlidingWindowInferencer(tiny_model, 3, tile=tile, stride=stride, batch_size=3), img)
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


def test_bands_arrive_in_order_and_memory_follows_width_not_height():
    model = _PixelwiseSegmentor().eval()
    seen = []
    inferencer = SlidingWindowInferencer(model, 4, tile=(64, 64), stride=(48, 48), batch_size=4)
    tall = inferencer.run(ArraySource(_image(1200, 200)), progress=False,
                          on_band=lambda y0, labels: seen.append((y0, labels.shape)))
    short = inferencer.run(ArraySource(_image(100, 200)), progress=False)
    assert tall.band_bytes == short.band_bytes == 5 * 64 * 200 * 4
    assert [y for y, _ in seen] == sorted(y for y, _ in seen)
    assert sum(shape[0] for _, shape in seen) == 1200
    assert all(shape[1] == 200 for _, shape in seen)
    grid = TileGrid(200, 1200, (64, 64), (48, 48))
    assert tall.tiles == len(grid)


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
