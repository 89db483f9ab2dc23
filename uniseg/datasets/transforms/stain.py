"""HED stain augmentation by colour deconvolution.

H&E slides from different labs, scanners and staining batches differ mostly in *how much* of
each dye ended up on the glass and in the scanner's colour response. Jittering RGB (hue,
brightness) mixes the two dyes; jittering each dye's concentration separately produces
colour variation that looks like real slides (Tellez et al., "Whole-slide mitosis detection in
H&E breast histology using PHH3 as a reference to train distilled stain-invariant convolutional
networks", IEEE TMI 2018; Tellez et al., "Quantifying the effects of data augmentation and stain
color normalization in convolutional neural networks for computational pathology", MedIA 2019).

The dye concentrations come from Ruifrok & Johnston's colour deconvolution (Beer-Lambert law):
optical density ``OD = -ln(I / I0)`` is linear in the dye amounts, ``OD = C @ M`` with one unit
stain vector per row of ``M``. ``C = OD @ inv(M)`` recovers the amounts; after perturbing them
``C' = alpha * C + beta`` the image is recomposed with ``I = I0 * exp(-C' @ M)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema, ImageOnlyTransform
from pydantic import Field

__all__ = ["HED_STAIN_VECTORS", "HEDJitter", "hed_to_rgb", "jitter_hed", "rgb_to_hed"]

# Optical-density (R, G, B) stain vectors for haematoxylin, eosin and DAB as published in
# A. C. Ruifrok and D. A. Johnston, "Quantification of histochemical staining by color
# deconvolution", Analytical and Quantitative Cytology and Histology 23(4):291-299, 2001.
# Rows are normalised to unit length, as the method requires.
_RAW_STAIN_VECTORS = np.array(
    [
        [0.650, 0.704, 0.286],  # haematoxylin
        [0.072, 0.990, 0.105],  # eosin
        [0.268, 0.570, 0.776],  # DAB
    ],
    dtype=np.float64,
)
HED_STAIN_VECTORS: np.ndarray = _RAW_STAIN_VECTORS / np.linalg.norm(_RAW_STAIN_VECTORS, axis=1, keepdims=True)
HED_STAIN_VECTORS.setflags(write=False)
_RGB_FROM_HED = HED_STAIN_VECTORS.astype(np.float32)
_HED_FROM_RGB = np.linalg.inv(HED_STAIN_VECTORS).astype(np.float32)

# Intensity model: I0 = 256 and transmitted light I + 1, i.e. OD = -ln((I + 1) / 256).
# The +1 keeps the log finite for black pixels, and it puts pure white (255) at exactly OD 0,
# so multiplicative jitter never tints the background. Looking the 256 values up beats calling
# log on every pixel.
_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def _check_rgb_uint8(img: np.ndarray, who: str) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{who}: expected a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise TypeError(f"{who}: expected a uint8 RGB image, got dtype {img.dtype}")
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{who}: expected an RGB image of shape (H, W, 3), got shape {img.shape}")


def rgb_to_hed(img: np.ndarray) -> np.ndarray:
    """Deconvolve a ``uint8`` RGB image (H, W, 3) into H, E, DAB amounts (float32, H x W x 3).

    Amounts are in natural-log optical-density units per unit stain vector. They are not clipped:
    pixels that are not an exact mix of the three dyes give small negative amounts, and keeping
    them makes :func:`hed_to_rgb` an exact inverse.
    """
    _check_rgb_uint8(img, "rgb_to_hed")
    return _OD_LUT[img] @ _HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Recompose H, E, DAB amounts (..., 3) into a ``uint8`` RGB image (inverse of rgb_to_hed)."""
    hed = np.asarray(hed, dtype=np.float32)
    if hed.shape[-1] != 3:
        raise ValueError(f"hed_to_rgb: expected a last axis of 3 stain amounts, got shape {hed.shape}")
    od = hed @ _RGB_FROM_HED
    rgb = 256.0 * np.exp(-od) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def jitter_hed(img: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift each stain amount of a ``uint8`` RGB image: ``C' = alpha * C + beta``.

    ``alpha`` and ``beta`` hold one value per stain (H, E, DAB). ``alpha = 1, beta = 0`` returns
    the input unchanged.
    """
    _check_rgb_uint8(img, "HEDJitter")
    alpha = np.asarray(alpha, dtype=np.float32).reshape(3)
    beta = np.asarray(beta, dtype=np.float32).reshape(3)
    return hed_to_rgb(rgb_to_hed(img) * alpha + beta)


class HEDJitter(ImageOnlyTransform):
    """Albumentations transform: random per-stain scale and shift in HED space (Tellez et al.).

    For each call, one ``alpha ~ U(1 - sigma, 1 + sigma)`` and one ``beta ~ U(-bias, bias)`` are
    drawn per stain and applied to every pixel. ``beta`` is in optical-density units: it adds or
    removes dye everywhere, background included, so pure white shifts by at most
    ``255 * (1 - exp(-bias * 2.26))`` grey levels (about 27 for ``bias=0.05``, in the green channel,
    whose column of stain vectors sums to 2.26); ``sigma`` alone leaves white exactly white.

    Randomness comes from ``self.random_generator``, which ``albumentations.Compose`` seeds, so
    a seeded pipeline repeats exactly.

    Args:
        sigma: Half-width of the multiplicative jitter, in [0, 1). Tellez et al. use 0.05 for
            "light" and about 0.2 for "strong" HED augmentation.
        bias: Half-width of the additive jitter (>= 0).
        p: Probability of applying the transform.

    Targets:
        image (``uint8`` RGB). Masks are untouched.
    """

    class InitSchema(BaseTransformInitSchema):
        sigma: float = Field(ge=0, lt=1)
        bias: float = Field(ge=0)

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.sigma = sigma
        self.bias = bias

    def get_params(self) -> dict[str, Any]:
        alpha = self.random_generator.uniform(1.0 - self.sigma, 1.0 + self.sigma, size=3)
        beta = self.random_generator.uniform(-self.bias, self.bias, size=3)
        return {"alpha": alpha, "beta": beta}

    def apply(self, img: np.ndarray, alpha: np.ndarray, beta: np.ndarray, **params: Any) -> np.ndarray:
        return jitter_hed(img, alpha, beta)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("sigma", "bias")
