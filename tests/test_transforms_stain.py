"""Tests for uniseg.datasets.transforms.stain (HED colour deconvolution and HEDJitter)."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from uniseg.datasets.transforms.stain import HED_STAIN_VECTORS, HEDJitter, hed_to_rgb, jitter_hed, rgb_to_hed


def _he_like_image(seed: int = 0, size: int = 64) -> np.ndarray:
    """Synthetic H&E-like tile: white background, pink stroma, purple nuclei, from known stains."""
    rng = np.random.default_rng(seed)
    hed = np.zeros((size, size, 3), np.float32)
    stroma_rows = size * 2 // 3  # the bottom third stays empty glass (white)
    hed[:stroma_rows, :, 1] = 0.6 + 0.1 * rng.random((stroma_rows, size))
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in rng.integers(8, size - 8, size=(6, 2)):
        nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        hed[nucleus, 0] = 1.2
    return hed_to_rgb(hed)


def test_zero_jitter_is_identity() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    out = HEDJitter(sigma=0.0, bias=0.0, p=1.0)(image=img)["image"]
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1
    assert np.abs(jitter_hed(_he_like_image(), np.ones(3), np.zeros(3)).astype(int) - _he_like_image()).max() <= 1


def test_stain_vectors_are_unit_rows_and_have_the_expected_colours() -> None:
    assert np.allclose(np.linalg.norm(HED_STAIN_VECTORS, axis=1), 1.0)
    haematoxylin, eosin, dab = hed_to_rgb(np.eye(3, dtype=np.float32) * 0.8)
    # Haematoxylin absorbs red/green -> blue-purple; eosin absorbs green -> pink; DAB -> brown.
    assert haematoxylin[2] > haematoxylin[0] > 0 and haematoxylin[2] > haematoxylin[1]
    assert eosin[1] < eosin[0] and eosin[1] < eosin[2]
    assert dab[0] > dab[1] > dab[2]


def test_known_stain_amounts_round_trip() -> None:
    amounts = np.array([[0.9, 0.3, 0.0], [0.2, 0.7, 0.0], [0.0, 0.0, 0.5], [0.4, 0.4, 0.1]], np.float32)
    rgb = hed_to_rgb(amounts[None])  # (1, 4, 3) uint8
    recovered = rgb_to_hed(rgb)[0]
    # Only uint8 quantisation separates the two: half a grey level at these intensities is < 0.02 OD.
    np.testing.assert_allclose(recovered, amounts, atol=0.03)
    assert rgb_to_hed(np.full((2, 2, 3), 255, np.uint8)) == pytest.approx(0.0, abs=1e-6)


def test_jitter_changes_colour_statistics() -> None:
    img = _he_like_image()
    changed = 0
    for seed in range(10):
        out = A.Compose([HEDJitter(sigma=0.2, bias=0.05, p=1.0)], seed=seed)(image=img)["image"]
        diff = np.abs(out.astype(float).mean((0, 1)) - img.astype(float).mean((0, 1)))
        changed += diff.max() > 1.0
    assert changed >= 9


def test_scaling_each_stain_moves_the_right_stain() -> None:
    img = _he_like_image()
    more_h = jitter_hed(img, np.array([1.3, 1.0, 1.0]), np.zeros(3))
    delta = rgb_to_hed(more_h).mean((0, 1)) - rgb_to_hed(img).mean((0, 1))
    assert delta[0] > 0.02 and abs(delta[1]) < 0.3 * delta[0] and abs(delta[2]) < 0.3 * delta[0]


def test_white_background_stays_near_white() -> None:
    white = np.full((16, 16, 3), 255, np.uint8)
    # Multiplicative jitter alone keeps pure white exactly white (OD 0).
    out = A.Compose([HEDJitter(sigma=0.2, bias=0.0, p=1.0)], seed=0)(image=white)["image"]
    assert (out == 255).all()
    worst = 255
    for seed in range(50):
        out = A.Compose([HEDJitter(sigma=0.05, bias=0.05, p=1.0)], seed=seed)(image=white)["image"]
        worst = min(worst, int(out.min()))
    assert worst >= 227  # documented bound: 255 * (1 - exp(-0.05 * 2.27)) ~ 27 grey levels


def test_seeded_compose_is_deterministic() -> None:
    img = _he_like_image()

    def run(seed: int) -> np.ndarray:
        return A.Compose([HEDJitter(sigma=0.1, bias=0.05, p=1.0)], seed=seed)(image=img)["image"]

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_probability_zero_never_applies() -> None:
    img = _he_like_image()
    out = A.Compose([HEDJitter(sigma=0.5, bias=0.2, p=0.0)], seed=0)(image=img)["image"]
    assert np.array_equal(out, img)


def test_bad_arguments_and_inputs_raise() -> None:
    with pytest.raises(ValueError, match="sigma"):
        HEDJitter(sigma=-0.1)
    with pytest.raises(ValueError, match="bias"):
        HEDJitter(bias=-1.0)
    t = HEDJitter(p=1.0)
    with pytest.raises(ValueError, match="RGB"):
        t(image=np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        t(image=np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="3 stain"):
        hed_to_rgb(np.zeros((4, 2)))
