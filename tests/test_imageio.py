"""uniseg.utils.imageio: what becomes 8-bit RGB exactly, what is refused naming the file, labels as stored."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from uniseg.utils.imageio import ImageReadError, read_label, read_rgb

RNG = np.random.default_rng(0)
RAMP16 = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195


def _white_composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Reference: Pillow's own alpha compositing over a white canvas (independent of uniseg's formula)."""
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))


# ------------------------------------------------------------------ read_rgb: refused, naming the file
def _grey16_png(path: Path) -> None:
    Image.fromarray(RAMP16).save(path)  # Pillow mode I;16 -> a 16-bit greyscale PNG


def _rgb16_png(path: Path) -> None:
    cv2.imwrite(str(path), np.dstack([RAMP16, RAMP16 // 2, RAMP16 // 3]))


def _rgba16_png(path: Path) -> None:
    cv2.imwrite(str(path), np.dstack([RAMP16, RAMP16 // 2, RAMP16 // 3, np.full_like(RAMP16, 65535)]))


def _rgb16_tiff(path: Path) -> None:
    tifffile.imwrite(path, np.dstack([RAMP16, RAMP16, RAMP16]))


def _float32_tiff(path: Path) -> None:
    tifffile.imwrite(path, RAMP16.astype(np.float32) / 65535)


def _int32_tiff(path: Path) -> None:
    tifffile.imwrite(path, RAMP16.astype(np.int32))


def _cmyk_jpeg(path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, (24, 32, 4), dtype=np.uint8), "CMYK").save(path)


REFUSED = {
    "grey16.png": (_grey16_png, "16-bit samples"),
    "rgb16.png": (_rgb16_png, "16-bit samples"),
    "rgba16.png": (_rgba16_png, "16-bit samples"),
    "rgb16.tif": (_rgb16_tiff, "16-bit samples"),
    "float32.tif": (_float32_tiff, "32-bit samples"),
    "int32.tif": (_int32_tiff, "32-bit samples"),
    "cmyk.jpg": (_cmyk_jpeg, "CMYK images are not supported"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_read_rgb_refuses_what_it_cannot_convert_exactly(tmp_path: Path, name: str) -> None:
    write, problem = REFUSED[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(ImageReadError, match=rf"{name}: .*{problem}"):
        read_rgb(path)


def test_16bit_grey_png_was_the_all_white_case(tmp_path: Path) -> None:
    """What Pillow's plain convert('RGB') makes of it (the old behaviour): 255 almost everywhere."""
    path = tmp_path / "grey16.png"
    _grey16_png(path)
    with Image.open(path) as im:
        assert (np.asarray(im.convert("RGB")) == 255).mean() > 0.99
    with pytest.raises(ImageReadError, match="grey16.png: 16-bit samples"):
        read_rgb(path)


# ------------------------------------------------------------------ read_rgb: converted exactly
def test_rgb_and_grey_and_bilevel(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.png"), rgb)
    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))
    bits = grey > 127
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "bits.png"), np.repeat(bits[..., None] * 255, 3, 2))


def test_palette_image_becomes_its_colours(tmp_path: Path) -> None:
    index = RNG.integers(0, 4, (24, 32), dtype=np.uint8)
    colours = np.array([[255, 255, 255], [70, 40, 140], [230, 120, 170], [10, 200, 30]], np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(colours.ravel().tolist())
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), colours[index])


def test_palette_with_transparent_colour_is_composited_on_white(tmp_path: Path) -> None:
    index = RNG.integers(0, 3, (24, 32), dtype=np.uint8)
    colours = np.array([[0, 0, 0], [70, 40, 140], [230, 120, 170]], np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(colours.ravel().tolist())
    im.save(tmp_path / "pt.png", transparency=0)  # index 0 is fully transparent
    expected = np.where(index[..., None] == 0, 255, colours[index]).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb(tmp_path / "pt.png"), expected)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    alpha[0, :] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    out = read_rgb(tmp_path / "rgba.png")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    assert (out[0] == 255).all()  # transparent = glass = white, not the colour stored under it
    assert np.abs(out.astype(int) - _white_composite(rgb, alpha)).max() <= 1  # rounding only


def test_opaque_rgba_keeps_its_colours(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((24, 32), 255, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgb)


def test_grey_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    expected = _white_composite(np.repeat(grey[..., None], 3, axis=2), alpha)
    assert np.abs(read_rgb(tmp_path / "la.png").astype(int) - expected).max() <= 1


# ------------------------------------------------------------------ read_label
def test_16bit_label_png_keeps_its_values(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 255, 256], [300, 4095, 40000, 65535]], np.uint16)
    Image.fromarray(ids).save(tmp_path / "instances.png")
    with Image.open(tmp_path / "instances.png") as im:
        assert im.mode == "I;16"  # stored as 16 bits, not a wider or narrower type
    out = read_label(tmp_path / "instances.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, ids)


def test_16bit_label_png_written_by_opencv_and_big_endian_tiff(tmp_path: Path) -> None:
    ids = RNG.integers(0, 65536, (24, 32), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "cv.png"), ids)
    tifffile.imwrite(tmp_path / "be.tif", ids, byteorder=">")
    for name in ("cv.png", "be.tif"):
        out = read_label(tmp_path / name)
        assert out.dtype == np.uint16 and out.dtype.isnative, name
        np.testing.assert_array_equal(out, ids)


def test_32bit_integer_label_keeps_its_values(tmp_path: Path) -> None:
    ids = np.array([[0, 70000], [-3, 2 ** 31 - 1]], np.int32)
    tifffile.imwrite(tmp_path / "i32.tif", ids)
    out = read_label(tmp_path / "i32.tif")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ids)


def test_palette_label_gives_indices_not_colours(tmp_path: Path) -> None:
    index = RNG.integers(0, 3, (24, 32), dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10])
    im.save(tmp_path / "p.png")
    out = read_label(tmp_path / "p.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, index)


def test_bilevel_label_gives_zero_and_one(tmp_path: Path) -> None:
    bits = RNG.integers(0, 2, (24, 32)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    out = read_label(tmp_path / "b.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, bits.astype(np.uint8))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_colour_or_alpha_label_is_refused(tmp_path: Path, mode: str) -> None:
    Image.new(mode, (8, 6)).save(tmp_path / "m.png")
    with pytest.raises(ImageReadError, match=f"m.png: label mask must be a single-channel index image.*{mode}"):
        read_label(tmp_path / "m.png")


def test_float_label_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(ImageReadError, match="f.tif: label mask has floating-point samples"):
        read_label(tmp_path / "f.tif")


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="gone.png: no such file"):
        read_rgb(tmp_path / "gone.png")
    rgb = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for reader in (read_rgb, read_label):
        with pytest.raises(ImageReadError, match="cut.png: cannot be read"):
            reader(tmp_path / "cut.png")
