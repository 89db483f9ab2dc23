"""OverlayPreviewSink: size limit, box-filtered image, tinted classes, legend with present classes."""
import cv2
import numpy as np
import pytest

from uniseg.export.base import ExportContext
from uniseg.export.overlay import OverlayPreviewSink

CLASSES = ("background", "tumor", "stroma", "necrosis")
PALETTE = ((0, 0, 0), (255, 0, 0), (0, 0, 255), (0, 200, 0))
GREY = (120, 120, 120)


def _scene(height=1500, width=3000):
    """Grey image; left half tumor, a stroma block; necrosis absent."""
    labels = np.zeros((height, width), np.uint8)
    labels[:, : width // 2] = 1
    labels[height // 2:, width * 3 // 4:] = 2
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GREY
    return labels, image


def _write(path, labels, image=None, band=100, **kwargs):
    sink = OverlayPreviewSink(path, **kwargs)
    sink.open(ExportContext(labels.shape[1], labels.shape[0], CLASSES, PALETTE))
    for y in range(0, labels.shape[0], band):
        sink.write_band(y, labels[y:y + band], image=None if image is None else image[y:y + band])
    paths = sink.close()
    rgb = cv2.cvtColor(cv2.imread(str(paths[0]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return sink, rgb


def test_size_blend_and_legend(tmp_path):
    labels, image = _scene()
    sink, rgb = _write(tmp_path / "o.png", labels, image, band=97, max_size=400, alpha=0.5)
    assert max(rgb.shape[:2]) <= 400
    preview_w = rgb.shape[1] - sink._legend_width
    assert preview_w > 200  # the preview uses the room the legend leaves
    # untinted background keeps the image; tumor = 50/50 blend with red
    assert tuple(rgb[5, preview_w - 5]) == GREY
    assert tuple(rgb[5, 5]) == (188, 60, 60)  # rint(0.5 * 120 + 0.5 * 255), rint(0.5 * 120)
    # legend: tumor and stroma (present) with their colours, not background or absent necrosis
    assert [name for name, _ in sink.legend_entries()] == ["tumor", "stroma"]
    legend = rgb[:, preview_w:]
    for line, colour in enumerate([PALETTE[1], PALETTE[2]]):
        centre = (8 + line * 20 + 7, 8 + 7)  # pad + line * line height + half swatch
        assert tuple(legend[centre]) == colour
    assert (legend.min(axis=2) < 100).sum() > 50  # dark text pixels were drawn
    assert not np.any(np.all(legend == PALETTE[3], axis=2))  # necrosis colour nowhere


def test_image_is_box_filtered_across_bands(tmp_path):
    height, width = 300, 200
    labels = np.zeros((height, width), np.uint8)
    image = np.zeros((height, width, 3), np.uint8)
    image[1::2] = 200  # alternating rows: a box filter gives 100, row sampling 0 or 200
    sink, rgb = _write(tmp_path / "o.png", labels, image, band=7, max_size=128, legend=False)
    assert rgb.shape[:2] == (128, round(width * 128 / height))
    inner = rgb[1:-1, 1:-1].astype(int)  # preview rows average 2 or 3 source rows
    assert np.all(np.abs(inner - 100) <= 34)
    assert abs(inner.mean() - 100) < 3


def test_mask_only_preview_and_small_roi_not_enlarged(tmp_path):
    labels = np.zeros((40, 50), np.uint8)
    labels[10:20, 10:20] = 3
    sink, rgb = _write(tmp_path / "o.jpg", labels, band=16, max_size=512)
    assert rgb.shape[0] >= 40 and rgb.shape[1] == 50 + sink._legend_width  # scale 1
    assert np.abs(rgb[15, 15].astype(int) - PALETTE[3]).max() < 40  # JPEG: approximately
    assert [name for name, _ in sink.legend_entries()] == ["background", "necrosis"]


def test_mixed_image_presence_is_an_error_and_abort_leaves_nothing(tmp_path):
    labels, image = _scene(200, 100)
    sink = OverlayPreviewSink(tmp_path / "o.jpg")
    sink.open(ExportContext(100, 200, CLASSES, PALETTE))
    sink.write_band(0, labels[:50], image=image[:50])
    with pytest.raises(ValueError, match="all carry the RGB image or none"):
        sink.write_band(50, labels[50:100])
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        OverlayPreviewSink(tmp_path / "o.jpg", alpha=1.5)
    with pytest.raises(ValueError, match="max_size"):
        OverlayPreviewSink(tmp_path / "o.jpg", max_size=10)
    with pytest.raises(ValueError, match=r"\.jpg"):
        OverlayPreviewSink(tmp_path / "o.tif")
