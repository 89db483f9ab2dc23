"""Tests for uniseg.datasets.transforms.albu (the ``Albumentations`` mmseg transform)."""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.dataset.utils import worker_init_fn
from mmseg.registry import TRANSFORMS
from PIL import Image

import uniseg.datasets.transforms  # noqa: F401  (registers the transforms)
from uniseg.datasets.transforms.albu import Albumentations, build_albu_transform
from uniseg.datasets.transforms.stain import HEDJitter

SIZE = 256
CROP = 192
BRIGHT_THRESHOLD = 128

# The assignment's reference pipeline, at a smaller crop size to keep the tests fast.
FULL_PIPELINE: List[Dict[str, Any]] = [
    dict(type="HorizontalFlip", p=0.5),
    dict(type="VerticalFlip", p=0.5),
    dict(type="RandomRotate90", p=0.5),
    dict(type="Affine", rotate=(-15, 15), scale=(0.9, 1.1), p=0.3),
    dict(type="ElasticTransform", p=0.1),
    dict(type="RandomBrightnessContrast", p=0.3),
    dict(type="HueSaturationValue", hue_shift_limit=8, p=0.3),
    dict(type="HEDJitter", sigma=0.05, bias=0.05, p=0.5),
    dict(type="GaussianBlur", p=0.1),
    dict(type="RandomResizedCrop", size=(CROP, CROP), scale=(0.5, 1.0), p=1.0),
]

# Its geometric part, with the warps made frequent and strong so that alignment is really tested.
GEOMETRIC_PIPELINE: List[Dict[str, Any]] = [
    dict(type="HorizontalFlip", p=0.5),
    dict(type="VerticalFlip", p=0.5),
    dict(type="RandomRotate90", p=0.5),
    dict(type="Affine", rotate=(-30, 30), scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), p=0.8),
    dict(type="ElasticTransform", alpha=20, sigma=8, p=0.5),
    dict(type="RandomResizedCrop", size=(CROP, CROP), scale=(0.5, 1.0), p=1.0),
]


def _synthetic_sample(seed: int = 0) -> Dict[str, Any]:
    """Dark textured background with a bright disc (label 1) and a bright bar (label 2).

    The label map is exactly "where the image is bright", so after any correct augmentation the
    bright pixels and the labelled pixels must coincide. Image is BGR, as mmseg loads it.
    """
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 30, size=(SIZE, SIZE, 3), dtype=np.uint8)
    seg = np.zeros((SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    seg[(yy - 85) ** 2 + (xx - 100) ** 2 < 50**2] = 1
    seg[160:220, 30:200] = 2
    img[seg > 0] = (225, 200, 245)  # BGR pinkish white
    return dict(
        img=img,
        gt_seg_map=seg,
        seg_fields=["gt_seg_map"],
        img_shape=img.shape[:2],
        ori_shape=img.shape[:2],
        img_path="synthetic.png",
    )


def _bright(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32).mean(-1) > BRIGHT_THRESHOLD


def _iou_on_valid(img: np.ndarray, seg: np.ndarray) -> float:
    """IoU of labelled foreground and bright image pixels, ignoring padded (255) label pixels."""
    valid = seg != 255
    fg_seg = (seg > 0) & valid
    fg_img = _bright(img) & valid
    union = (fg_seg | fg_img).sum()
    return float((fg_seg & fg_img).sum() / union) if union else 1.0


def _far_mismatches(img: np.ndarray, seg: np.ndarray, band: float = 2.0, frame: int = 6) -> int:
    """Pixels where label and image disagree more than ``band`` px away from any label edge.

    Interpolating the image blurs edges over about a pixel, so thin disagreement along edges is
    expected; anywhere else it means the mask moved off the image. A ``frame`` along the crop's
    border is skipped: there, image blur can come from a label edge just outside the crop.
    """
    valid = seg != 255
    fg_seg = ((seg > 0) & valid).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(fg_seg, kernel) != cv2.erode(fg_seg, kernel)
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    mismatch = (fg_seg.astype(bool) ^ _bright(img)) & valid
    inner = mismatch[frame:-frame, frame:-frame] & (dist[frame:-frame, frame:-frame] > band)
    return int(inner.sum())


def _run(transform: Albumentations, seed: int, sample_seed: int = 0) -> Dict[str, Any]:
    np.random.seed(seed)
    return transform(_synthetic_sample(sample_seed))


def test_alignment_checks_catch_a_shifted_mask() -> None:
    # Guard for the alignment tests below: a mask off by a few pixels must fail both checks.
    sample = _synthetic_sample()
    img, seg = sample["img"], sample["gt_seg_map"]
    assert _iou_on_valid(img, seg) == 1.0 and _far_mismatches(img, seg) == 0
    shifted = np.roll(seg, 6, axis=1)
    assert _iou_on_valid(img, shifted) < 0.95 and _far_mismatches(img, shifted) > 0


@pytest.mark.parametrize("pipeline, min_iou", [(GEOMETRIC_PIPELINE, 0.95), (FULL_PIPELINE, 0.93)])
def test_labels_stay_on_the_image(pipeline: List[Dict[str, Any]], min_iou: float) -> None:
    transform = Albumentations(transforms=pipeline)
    ious, padded_dark, padded_total = [], 0, 0
    for seed in range(40):
        out = _run(transform, seed)
        img, seg = out["img"], out["gt_seg_map"]
        assert img.shape == (CROP, CROP, 3) and img.dtype == np.uint8
        assert seg.shape == (CROP, CROP) and seg.dtype == np.uint8
        assert out["img_shape"] == (CROP, CROP)
        assert set(np.unique(seg)) <= {0, 1, 2, 255}
        ious.append(_iou_on_valid(img, seg))
        assert _far_mismatches(img, seg) == 0, seed
        padded = seg == 255
        padded_total += int(padded.sum())
        padded_dark += int((~_bright(img) & padded).sum())
    assert min(ious) > min_iou, ious
    if pipeline is GEOMETRIC_PIPELINE:
        # Rotations and shrinking pad the border: labels get the ignore index, the image black.
        assert padded_total > 0
        assert padded_dark / padded_total > 0.95


def test_nested_compositions_build_and_keep_alignment() -> None:
    pipeline = [
        dict(type="OneOf", transforms=[dict(type="HorizontalFlip", p=1), dict(type="Transpose", p=1)], p=1.0),
        dict(
            type="SomeOf",
            n=2,
            transforms=[
                dict(type="Affine", rotate=(-20, 20), p=1),
                dict(type="RandomRotate90", p=1),
                dict(type="Sequential", transforms=[dict(type="VerticalFlip", p=1), dict(type="HEDJitter", p=1)]),
            ],
            p=1.0,
        ),
        dict(type="CenterCrop", height=CROP, width=CROP, p=1.0),
    ]
    transform = Albumentations(transforms=pipeline)
    for seed in range(10):
        out = _run(transform, seed)
        assert out["img"].shape == (CROP, CROP, 3)
        assert _iou_on_valid(out["img"], out["gt_seg_map"]) > 0.95


def test_mask_padding_is_ignore_index_unless_configured() -> None:
    rotate = dict(type="Affine", rotate=(45, 45), p=1.0)
    out = _run(Albumentations(transforms=[rotate]), 0)
    assert out["gt_seg_map"][0, 0] == 255 and out["gt_seg_map"][-1, -1] == 255
    assert (out["img"][0, 0] == 0).all()

    out = _run(Albumentations(transforms=[dict(rotate, fill_mask=7, fill=100)]), 0)
    assert out["gt_seg_map"][0, 0] == 7 and (out["img"][0, 0] == 100).all()

    out = _run(Albumentations(transforms=[rotate], seg_pad_val=0), 0)
    assert out["gt_seg_map"][0, 0] == 0

    # Padding transforms get the ignore index; dropout fills keep albumentations' own meaning.
    assert build_albu_transform(dict(type="PadIfNeeded", min_height=8, min_width=8)).fill_mask == 255
    assert build_albu_transform(dict(type="MaskDropout")).fill_mask == 0
    assert build_albu_transform(dict(type="CoarseDropout")).fill_mask is None


def test_all_seg_fields_follow_and_keep_their_dtype() -> None:
    transform = Albumentations(transforms=GEOMETRIC_PIPELINE)
    sample = _synthetic_sample()
    sample["gt_instances_map"] = (sample["gt_seg_map"].astype(np.int32) * 1000)
    sample["seg_fields"].append("gt_instances_map")
    sample["pad_shape"] = sample["img_shape"]
    np.random.seed(3)
    out = transform(sample)
    assert out["gt_instances_map"].dtype == np.int32 and out["gt_seg_map"].dtype == np.uint8
    assert out["pad_shape"] == (CROP, CROP)
    inst, seg = out["gt_instances_map"], out["gt_seg_map"]
    labelled = seg != 255
    assert np.array_equal(inst[labelled], seg[labelled].astype(np.int32) * 1000)


@pytest.mark.parametrize("channel_order, red_axis", [("bgr", 2), ("rgb", 0)])
def test_colour_transforms_see_rgb(channel_order: str, red_axis: int) -> None:
    # RGBShift adds to the *red* channel only; it must land on the red channel of the stored order.
    shift = dict(type="RGBShift", r_shift_limit=(40, 40), g_shift_limit=(0, 0), b_shift_limit=(0, 0), p=1.0)
    transform = Albumentations(transforms=[shift], channel_order=channel_order)
    sample = _synthetic_sample()
    before = sample["img"].astype(int).copy()
    after = transform(sample)["img"].astype(int)
    dark = before.max(-1) < 30
    other = [a for a in range(3) if a != red_axis]
    assert np.all(after[dark][:, red_axis] == before[dark][:, red_axis] + 40)
    assert np.array_equal(after[..., other], before[..., other])
    assert after.flags.c_contiguous


def test_same_seed_repeats_and_different_seeds_differ() -> None:
    a = Albumentations(transforms=FULL_PIPELINE)
    b = Albumentations(transforms=copy.deepcopy(FULL_PIPELINE))  # separate instance, same config
    out_a, out_b = _run(a, 11), _run(b, 11)
    assert np.array_equal(out_a["img"], out_b["img"])
    assert np.array_equal(out_a["gt_seg_map"], out_b["gt_seg_map"])
    assert np.array_equal(_run(a, 11)["img"], out_a["img"])
    different = sum(not np.array_equal(_run(a, s)["img"], out_a["img"]) for s in range(12, 20))
    assert different == 8


def test_flips_are_not_correlated() -> None:
    # albumentations' own Compose(seed=...) seeds every child identically, making HorizontalFlip
    # and VerticalFlip fire together; the shared generator must not.
    transform = Albumentations(transforms=[dict(type="HorizontalFlip", p=0.5), dict(type="VerticalFlip", p=0.5)])
    base = _synthetic_sample()["img"]
    outcomes = set()
    for seed in range(40):
        img = _run(transform, seed)["img"]
        outcomes.add((np.array_equal(img, base[:, ::-1]), np.array_equal(img, base[::-1]), np.array_equal(img, base)))
    assert {(True, False, False), (False, True, False), (False, False, True)} <= outcomes


class _AugmentedDataset(torch.utils.data.Dataset):
    def __init__(self, transform: Albumentations) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> np.ndarray:
        return self.transform(_synthetic_sample())["img"]


def _load_through_workers(seed: int) -> List[np.ndarray]:
    transform = Albumentations(transforms=FULL_PIPELINE)
    loader = torch.utils.data.DataLoader(
        _AugmentedDataset(transform),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
        worker_init_fn=partial(worker_init_fn, num_workers=2, rank=0, seed=seed),
    )
    return [item.numpy() for item in loader]


def test_seeded_dataloader_workers_repeat_exactly() -> None:
    first, second = _load_through_workers(5), _load_through_workers(5)
    assert all(np.array_equal(x, y) for x, y in zip(first, second))
    # Items 0 and 1 come from different workers with the same input: they must not repeat each other.
    assert not np.array_equal(first[0], first[1])
    other = _load_through_workers(6)
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))


def test_works_inside_an_mmseg_pipeline_from_config(tmp_path: Path) -> None:
    sample = _synthetic_sample()
    img_path, seg_path = tmp_path / "tile.png", tmp_path / "tile_label.png"
    Image.fromarray(sample["img"][..., ::-1].copy()).save(img_path)  # stored as RGB on disk
    Image.fromarray(sample["gt_seg_map"]).save(seg_path)
    pipeline_cfg = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="Albumentations", transforms=FULL_PIPELINE),
        dict(type="PackSegInputs"),
    ]
    # Through mmengine's Config, as a training config would deliver it (ConfigDicts, not dicts).
    pipeline = Compose([TRANSFORMS.build(cfg) for cfg in Config(dict(pipeline=pipeline_cfg)).pipeline])
    for seed in range(3):
        np.random.seed(seed)
        packed = pipeline(
            dict(img_path=str(img_path), seg_map_path=str(seg_path), reduce_zero_label=False, seg_fields=[])
        )
        inputs = packed["inputs"]
        seg = packed["data_samples"].gt_sem_seg.data
        assert tuple(inputs.shape) == (3, CROP, CROP) and inputs.dtype == torch.uint8
        assert tuple(seg.shape) == (1, CROP, CROP)
        assert packed["data_samples"].metainfo["img_shape"] == (CROP, CROP)
        assert _iou_on_valid(inputs.permute(1, 2, 0).numpy(), seg[0].numpy().astype(np.uint8)) > 0.93


def test_hedjitter_is_resolved_by_name() -> None:
    built = build_albu_transform(dict(type="HEDJitter", sigma=0.1, bias=0.02, p=0.5))
    assert isinstance(built, HEDJitter) and built.sigma == 0.1 and built.bias == 0.02 and built.p == 0.5


@pytest.mark.parametrize(
    "cfg, pattern",
    [
        (dict(type="HorizontalFlipp", p=0.5), r"(?s)transforms\[1\].*'HorizontalFlipp'.*Did you mean 'HorizontalFlip'"),
        (dict(type="HorizontalFlip", prob=0.5), r"(?s)transforms\[1\] \(HorizontalFlip\).*prob"),
        (dict(type="Affine", rotate="wild"), r"(?s)transforms\[1\] \(Affine\).*rotate"),
        (dict(type="RandomResizedCrop"), r"(?s)transforms\[1\] \(RandomResizedCrop\).*size"),
        (dict(type="HEDJitter", sigma=2.0), r"(?s)transforms\[1\] \(HEDJitter\).*sigma"),
        (dict(type="OneOf", transforms=[dict(type="Blur"), dict(type="NoSuchBlur")]),
         r"(?s)transforms\[1\]\.transforms\[1\].*'NoSuchBlur'"),
        (dict(type="OneOf"), r"(?s)transforms\[1\] \(OneOf\).*'transforms'"),
        (dict(p=0.5), r"(?s)transforms\[1\].*missing 'type'"),
    ],
)
def test_bad_configs_name_the_transform(cfg: Dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Albumentations(transforms=[dict(type="VerticalFlip"), cfg])
    with pytest.raises(ValueError, match=pattern.split(".*")[-1]):
        TRANSFORMS.build(dict(type="Albumentations", transforms=[dict(type="VerticalFlip"), cfg]))


def test_misaligned_seg_map_is_an_error() -> None:
    sample = _synthetic_sample()
    sample["gt_seg_map"] = sample["gt_seg_map"][:-1]
    with pytest.raises(ValueError, match="synthetic.png.*gt_seg_map"):
        Albumentations(transforms=[dict(type="HorizontalFlip")])(sample)
