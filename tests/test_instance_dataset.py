"""Cells as objects, data side: the instance layout's checks, HistologyInstanceDataset, the instance
transforms (alignment after augmentation, mmdet ground truth, batching), and the shipped data/nuclei."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from PIL import Image

import uniseg.datasets  # noqa: F401  (registers the dataset and transforms)
from mmdet.registry import DATASETS as DET_DATASETS
from mmdet.registry import MODELS as DET_MODELS
from mmdet.registry import TRANSFORMS as DET_TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.structures.mask import BitmapMasks
from mmseg.registry import DATASETS as SEG_DATASETS
from uniseg.datasets.instances import (InstanceAnnotationError, parse_instance_annotation, read_instance_annotation,
                                       thing_label_lookup)
from uniseg.datasets.transforms.instances import InstanceMapToTargets, LoadInstanceAnnotations, instance_boxes
from uniseg.datasets.transforms.resample import resize_nearest

REPO = Path(__file__).resolve().parents[1]
NUCLEI = REPO / "data" / "nuclei"
QUADRANTS = {"nuclei_tl": (0, 0), "nuclei_tr": (0, 256), "nuclei_bl": (256, 0), "nuclei_br": (256, 256)}
CLASSES = ("background", "tumour", "lymphocyte", "stroma")  # stroma: a non-thing class
META = {"classes": list(CLASSES), "thing_classes": ["tumour", "lymphocyte"], "mpp": 0.25,
        "palette": [[0, 0, 0], [10, 20, 30], [40, 50, 60], [70, 80, 90]]}
LOOKUP = thing_label_lookup(CLASSES, META["thing_classes"])  # [-1, 0, 1, -1]


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def det_scope():
    return DefaultScope.overwrite_default_scope("mmdet")


def synthetic_annotation(height: int = 96, width: int = 112, seed: int = 0):
    """Class mask + instance map with 16-bit ids (incl. 255, the pad id), an ignored object, stroma."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((height, width), np.uint16)
    semantic = np.zeros((height, width), np.uint8)
    semantic[:, width - 12:] = 3  # stroma band, no objects
    next_ids = iter([7, 255, 300, 40000, 65535, 12, 256, 2, 999, 5000, 31, 77])
    for top in range(2, height - 14, 18):
        for left in range(2, width - 30, 20):
            h, w = rng.integers(6, 14, 2)
            k = next(next_ids, None)
            if k is None:
                break
            ids[top:top + h, left:left + w] = k
            semantic[top:top + h, left:left + w] = 1 + (k % 2)
    # an object entirely under the ignore index, and some ignored background
    ids[height - 10:height - 4, 4:12] = 1234
    semantic[height - 10:height - 4, 4:12] = 255
    semantic[0, :5] = 255
    return ids, semantic


def write_layout(root: Path, stems: Dict[str, Sequence[str]], meta: Optional[dict] = META, seed: int = 0) -> Path:
    for folder in ("images", "masks", "instances", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, names in stems.items():
        for i, stem in enumerate(names):
            ids, semantic = synthetic_annotation(seed=seed + i)
            image = rng.integers(0, 256, ids.shape + (3,), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / f"{stem}.png")
            Image.fromarray(semantic).save(root / "masks" / f"{stem}.png")
            Image.fromarray(ids).save(root / "instances" / f"{stem}.png")
        (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_layout(tmp_path / "ds", {"train": ["a", "b"], "val": ["c"]})


def build(root: Path, **kwargs):
    cfg = dict(type="HistologyInstanceDataset", data_root=str(root), pipeline=[])
    cfg.update(kwargs)
    with det_scope():  # as in an mmdet-scoped config: plain names are mmdet's, 'mmseg.X' are mmseg's
        return DET_DATASETS.build(cfg)


# ------------------------------------------------------------------------------- annotation checks

def test_parse_gives_objects_labels_and_ignored() -> None:
    ids, semantic = synthetic_annotation()
    ann = parse_instance_annotation(ids, semantic, LOOKUP, class_names=CLASSES)
    source = np.unique(ids)[1:]
    assert list(ann.source_ids) == list(source)
    for k, sid in enumerate(ann.source_ids, start=1):
        assert np.array_equal(ann.instances.ids == k, ids == sid)
        cls = semantic[ids == sid][0]
        if sid == 1234:
            assert ann.ignored[k - 1] and ann.instances.labels[k - 1] == -1
        else:
            assert not ann.ignored[k - 1] and ann.instances.labels[k - 1] == LOOKUP[cls]


@pytest.mark.parametrize("defect, message", [
    ("impure", r"object id 300 spans several classes in the class mask: 'tumour' \(\d+ px\), 'lymphocyte'"),
    ("off_thing", r"object id 300 lies on class 'stroma', which is not a thing class"),
    ("uncovered", r"1 pixel\(s\) of thing classes belong to no object .*row 90, column 50, class 'lymphocyte'"),
    ("size", r"instance map is 112x95 px but its class mask is 112x96 px"),
    ("value", r"class mask holds values \[9\]"),
    ("float", r"instance ids must be integers"),
])
def test_parse_refuses_inconsistent_maps(defect: str, message: str) -> None:
    ids, semantic = synthetic_annotation()
    ys, xs = np.nonzero(ids == 300)
    if defect == "impure":
        semantic[ys[0], xs[0]] = 1 if semantic[ys[0], xs[0]] == 2 else 2
    elif defect == "off_thing":
        semantic[ids == 300] = 3
    elif defect == "uncovered":
        semantic[90, 50] = 2
    elif defect == "size":
        ids = ids[:-1]
    elif defect == "value":
        semantic[50, 50] = 9
    elif defect == "float":
        ids = ids.astype(np.float32)
    with pytest.raises(InstanceAnnotationError, match=message) as info:
        parse_instance_annotation(ids, semantic, LOOKUP, class_names=CLASSES, where="some/file.png")
    assert "some/file.png" in str(info.value)


# ------------------------------------------------------------------------------------------ dataset

def test_dataset_metainfo_and_samples(layout: Path) -> None:
    ds = build(layout)
    assert ds.metainfo["classes"] == ("tumour", "lymphocyte")
    assert ds.metainfo["semantic_classes"] == CLASSES
    assert ds.metainfo["palette"] == [(10, 20, 30), (40, 50, 60)]
    assert ds.metainfo["mpp"] == 0.25
    info = ds.get_data_info(1)
    assert info["stem"] == "b" and info["mpp"] == 0.25 and (info["height"], info["width"]) == (96, 112)
    assert info["thing_labels"] == [-1, 0, 1, -1]
    ids = read(layout / "instances" / "b.png")
    assert info["num_instances"] == len(np.unique(ids)) - 2  # minus 0 and the ignored object
    assert ds.get_cat_ids(1) == [0, 1]
    assert len(build(layout, ann_file="splits/val.txt")) == 1


def test_dataset_thing_classes_from_config_and_defaults(layout: Path, tmp_path: Path) -> None:
    ds = build(layout, metainfo=dict(classes=("lymphocyte", "tumour")))
    assert ds.metainfo["classes"] == ("lymphocyte", "tumour")
    assert ds.get_data_info(0)["thing_labels"] == [-1, 1, 0, -1]
    with pytest.raises(ValueError, match=r"thing classes \['macrophage'\] are not among"):
        build(layout, metainfo=dict(classes=("macrophage",)))
    meta = {k: v for k, v in META.items() if k != "thing_classes"}
    (layout / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InstanceAnnotationError, match=r"pixel\(s\) of thing classes belong to no object .*'stroma'"):
        build(layout)  # without thing_classes every class but the first is one, and stroma has no objects
    no_meta = write_layout(tmp_path / "nometa", {"train": ["x"]}, meta=None)
    with pytest.raises(ValueError, match="class names of masks/ are unknown"):
        build(no_meta)
    assert build(no_meta, metainfo=dict(semantic_classes=CLASSES, classes=("tumour", "lymphocyte")),
                 check_annotations=True).metainfo["mpp"] is None


def test_dataset_reports_bad_files_at_build_time(layout: Path) -> None:
    (layout / "instances" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances/b.png: file not found \(listed in .*train.txt\)"):
        build(layout)
    ids, semantic = synthetic_annotation()
    semantic[ids == 300] = 3
    Image.fromarray(ids).save(layout / "instances" / "b.png")
    Image.fromarray(semantic).save(layout / "masks" / "b.png")
    with pytest.raises(InstanceAnnotationError, match=r"instances/b.png: object id 300 lies on class 'stroma'"):
        build(layout)
    # without the build-time check the same file is refused when the sample is read
    ds = build(layout, check_annotations=False, pipeline=[dict(type="LoadInstanceAnnotations")])
    with det_scope(), pytest.raises(InstanceAnnotationError, match="object id 300"):
        ds[1]
    Image.fromarray(ids[:, :-1]).save(layout / "instances" / "b.png")
    with pytest.raises(InstanceAnnotationError, match="instances/b.png"):
        build(layout, check_annotations=False)


def test_filter_empty_gt(layout: Path) -> None:
    ids, semantic = synthetic_annotation()
    semantic[ids > 0] = 0
    Image.fromarray(np.zeros_like(ids)).save(layout / "instances" / "a.png")
    Image.fromarray(semantic).save(layout / "masks" / "a.png")
    assert len(build(layout)) == 2
    kept = build(layout, filter_cfg=dict(filter_empty_gt=True))
    assert [kept.get_data_info(i)["stem"] for i in range(len(kept))] == ["b"]


# ---------------------------------------------------------------------------------------- transforms

def encoded_sample(layout: Path, stem: str) -> dict:
    """Load a sample whose image pixels encode the source instance id (R = id >> 8, G = id & 255)."""
    ids = read(layout / "instances" / f"{stem}.png").astype(np.int64)
    image = np.stack([ids >> 8, ids & 255, np.full_like(ids, 7)], axis=2).astype(np.uint8)
    Image.fromarray(image).save(layout / "images" / f"{stem}.png")
    return ids


def source_ids_from_image(img_bgr: np.ndarray) -> np.ndarray:
    return (img_bgr[..., 2].astype(np.int64) << 8) | img_bgr[..., 1].astype(np.int64)


EXACT_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadInstanceAnnotations"),
    dict(type="mmseg.RandomCrop", crop_size=(64, 80)),
    dict(type="mmseg.RandomFlip", prob=0.5, direction=["horizontal", "vertical"]),
    dict(type="mmseg.Albumentations", transforms=[dict(type="RandomRotate90", p=0.75),
                                                  dict(type="Transpose", p=0.5)]),
    dict(type="InstanceMapToTargets"),
    dict(type="PackInstanceInputs"),
]


def test_masks_match_the_image_after_crop_flip_rot90(layout: Path) -> None:
    encoded_sample(layout, "a")
    ids, semantic = synthetic_annotation(seed=0)
    ds = build(layout, pipeline=EXACT_PIPELINE)
    seen_shapes = set()
    dropped = 0
    with det_scope():
        for seed in range(12):
            np.random.seed(seed)
            sample = ds[0]
            img = sample["inputs"].permute(1, 2, 0).numpy()  # BGR, as loaded
            seen_shapes.add(img.shape[:2])
            source = source_ids_from_image(img)  # the reference: what the image shows at each pixel
            gt = sample["data_samples"].gt_instances
            masks = gt.masks.to_ndarray().astype(bool)
            expected = [k for k in np.unique(source) if k and k != 1234]
            assert len(masks) == len(expected)
            dropped += len(np.unique(ids)) - 2 - len(expected)
            for mask, label, box in zip(masks, gt.labels.tolist(), gt.bboxes.tensor.numpy()):
                under = np.unique(source[mask])
                assert len(under) == 1, "a mask covers pixels of two source objects"
                assert np.array_equal(mask, source == under[0]), "mask differs from the object in the image"
                assert label == LOOKUP[semantic[ids == under[0]][0]]
                ys, xs = np.nonzero(mask)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert "gt_sem_seg" not in sample["data_samples"], "uniseg's class mask is no mmdet semantic target"
            ignored = sample["data_samples"].ignored_instances
            assert len(ignored.masks) == int((source == 1234).any())
    assert seen_shapes == {(64, 80), (80, 64)}, "rot90 / transpose really happened"
    assert dropped > 0, "some crops removed objects"


def test_padding_never_becomes_an_object(layout: Path) -> None:
    """Rotations pad label maps with 255; object 255 of the source must stay itself, padding nothing."""
    ids, semantic = synthetic_annotation(seed=1)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadInstanceAnnotations"),
                dict(type="mmseg.Albumentations", transforms=[dict(type="Affine", rotate=(20, 40), p=1.0)]),
                dict(type="InstanceMapToTargets")]
    ds = build(layout, pipeline=pipeline)
    load = LoadInstanceAnnotations()
    with det_scope():
        np.random.seed(0)
        results = ds[1]
    loaded = load(dict(ds.get_data_info(1)))
    assert 255 not in np.unique(loaded["gt_instance_map"])
    assert loaded["gt_instance_map"].dtype == np.uint16 and loaded["gt_instance_map"].max() == len(np.unique(ids)) - 1
    masks = results["gt_masks"].masks.astype(bool)
    assert len(masks) > 0 and not masks.any(axis=0)[0, 0], "the padded corner holds no object"
    assert len(masks) <= len(np.unique(ids)) - 1
    assert not (masks.sum(axis=0) > 1).any()


def test_object_number_255_is_not_taken_for_padding(tmp_path: Path) -> None:
    """With 300 objects, dense id 255 exists: it must be renumbered so padding cannot swallow it."""
    ids = np.zeros((80, 80), np.uint16)
    for k in range(300):
        y, x = divmod(k, 20)
        ids[4 * y:4 * y + 3, 4 * x:4 * x + 3] = k + 1
    root = tmp_path / "many"
    for folder in ("images", "masks", "instances", "splits"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(root / "images" / "m.png")
    Image.fromarray((ids > 0).astype(np.uint8)).save(root / "masks" / "m.png")
    Image.fromarray(ids).save(root / "instances" / "m.png")
    (root / "splits" / "train.txt").write_text("m\n")
    (root / "meta.json").write_text(json.dumps({"classes": ["background", "nucleus"]}))
    loaded = LoadInstanceAnnotations()(dict(build(root).get_data_info(0)))
    assert 255 not in loaded["gt_instance_map"] and loaded["gt_instance_map"].max() == 301
    assert len(InstanceMapToTargets()(dict(loaded))["gt_masks"]) == 300
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadInstanceAnnotations"),
                dict(type="mmseg.Albumentations", transforms=[dict(type="Affine", translate_px=(5, 5), p=1.0)]),
                dict(type="InstanceMapToTargets")]
    out = build(root, pipeline=pipeline)[0]
    masks = out["gt_masks"].masks.astype(bool)
    shifted = np.zeros_like(ids)
    shifted[5:, 5:] = ids[:-5, :-5]
    assert len(masks) == len(np.unique(shifted)) - 1
    assert all(np.array_equal(m, shifted == k) for m, k in zip(masks, np.unique(shifted)[1:]))


def test_targets_detect_maps_moved_differently(layout: Path) -> None:
    with det_scope():
        results = LoadInstanceAnnotations()(dict(build(layout).get_data_info(0)))
    results["gt_instance_map"] = np.roll(results["gt_instance_map"], 3, axis=1)
    with pytest.raises(InstanceAnnotationError, match=r"instances/a.png \(after augmentation\)"):
        InstanceMapToTargets()(results)


@pytest.mark.parametrize("transform, moved", [
    (dict(type="Resize", scale=(56, 48), keep_ratio=False), "one map without the other"),
    (dict(type="RandomResize", scale=(56, 48), ratio_range=(1.5, 1.5), keep_ratio=True), "one map without the other"),
    (dict(type="RandomFlip", prob=1.0, direction="horizontal"), None),
])
def test_mmdet_scoped_transforms_that_move_the_class_mask_alone_are_refused(layout: Path, transform, moved) -> None:
    """In an mmdet-scoped config the bare names are mmdet's, which move gt_seg_map only: never silence."""
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadInstanceAnnotations"), transform,
                dict(type="InstanceMapToTargets")]
    with det_scope():
        ds = build(layout, pipeline=pipeline)
        with pytest.raises(InstanceAnnotationError) as error:
            ds[0]
    if moved:  # sizes differ: named as such, with the transforms that do it and the ones to use instead
        assert f"moved {moved}" in str(error.value) and "use mmseg.Resize, mmseg.RandomFlip" in str(error.value)
    else:  # a flip keeps the sizes: the content check (object on two classes, or cell pixels without object)
        assert "(after augmentation)" in str(error.value)
    mmseg_twin = dict(transform, type="mmseg." + transform["type"])
    if transform["type"] == "RandomResize":
        mmseg_twin = dict(transform, resize_type="mmseg.Resize")
    with det_scope():
        ok = build(layout, pipeline=pipeline[:2] + [mmseg_twin] + pipeline[3:])[0]
    assert ok["gt_masks"].masks.shape[1:] == ok["img"].shape[:2]


def test_an_image_resized_after_the_maps_were_loaded_is_refused(layout: Path) -> None:
    """Test pipelines load the maps after resampling (ground truth at the original size); resizing the image
    once the maps are loaded would leave the ground truth where the prediction is not."""
    import cv2

    with det_scope():
        ds = build(layout, pipeline=[dict(type="LoadImageFromFile"), dict(type="mmseg.ResampleToMPP", target_mpp=0.5),
                                     dict(type="LoadInstanceAnnotations")])
    results = ds[0]
    test_targets = InstanceMapToTargets(with_masks=False, keep_instance_map=True)
    assert test_targets(dict(results))["gt_instance_ids"].shape == (96, 112)  # image 48x56: as loaded, fine
    results["img"] = cv2.resize(results["img"], (28, 24))
    with pytest.raises(InstanceAnnotationError, match=r"maps are 112x96 px but the image is 28x24 px: a transform "
                                                      r"between LoadInstanceAnnotations and InstanceMapToTargets "
                                                      r"moved the image without the maps"):
        test_targets(dict(results))
    with pytest.raises(InstanceAnnotationError, match="training targets must lie on the image"):
        InstanceMapToTargets()(dict(results))


def test_crop_keeps_partial_objects_and_drops_missing_ones(layout: Path) -> None:
    ids, semantic = synthetic_annotation()
    results = LoadInstanceAnnotations()(dict(build(layout).get_data_info(0)))
    window = (slice(5, 17), slice(10, 40))
    for key in ("gt_seg_map", "gt_instance_map"):
        results[key] = results[key][window]
    out = InstanceMapToTargets(keep_instance_map=True)(dict(results))
    visible = [k for k in np.unique(ids[window]) if k]
    assert len(out["gt_masks"]) == len(visible) and len(visible) < len(np.unique(ids)) - 1
    assert sorted(m.sum() for m in out["gt_masks"].masks) == sorted((ids[window] == k).sum() for k in visible)
    assert "gt_seg_map" not in out and "gt_instance_map" not in out and out["seg_fields"] == []
    assert np.array_equal(out["gt_instance_ids"] > 0, ids[window] > 0)
    small = min((ids[window] == k).sum() for k in visible)
    out = InstanceMapToTargets(min_area=small + 1)(dict(results))
    assert len(out["gt_masks"]) == sum((ids[window] == k).sum() > small for k in visible)


def test_boxes_match_mmdets_own_mask_to_box() -> None:
    ids, _ = synthetic_annotation()
    from uniseg.structures.instances import relabel_dense

    dense, old = relabel_dense(ids)
    masks = BitmapMasks((dense[None] == np.arange(1, len(old) + 1)[:, None, None]).astype(np.uint8), *ids.shape)
    reference = HorizontalBoxes.from_instance_masks(masks).tensor.numpy()
    assert np.array_equal(instance_boxes(dense, len(old)), reference)


def test_resample_moves_instance_maps_with_nearest(layout: Path) -> None:
    ids, semantic = synthetic_annotation()
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadInstanceAnnotations"),
                dict(type="mmseg.ResampleToMPP", target_mpp=0.5), dict(type="InstanceMapToTargets")]
    with det_scope():
        out = build(layout, pipeline=pipeline)[0]
    assert out["img"].shape[:2] == (48, 56) and out["mpp"] == 0.5
    small = resize_nearest(ids, (48, 56))
    expected = [k for k in np.unique(small) if k]  # objects keep the order of their source ids
    masks = out["gt_masks"].masks.astype(bool)
    assert len(masks) == len(expected)
    assert all(np.array_equal(m, small == k) for m, k in zip(masks, expected)), "ids > 255 survive resampling"
    assert out["gt_ignore_flags"].tolist() == [k == 1234 for k in expected]


def test_test_pipeline_keeps_ground_truth_at_original_resolution(layout: Path) -> None:
    ids, semantic = synthetic_annotation()
    pipeline = [dict(type="LoadImageFromFile"), dict(type="mmseg.ResampleToMPP", target_mpp=0.5),
                dict(type="LoadInstanceAnnotations"),
                dict(type="InstanceMapToTargets", with_masks=False, keep_instance_map=True),
                dict(type="PackInstanceInputs")]
    with det_scope():
        sample = build(layout, pipeline=pipeline, test_mode=True)[0]
    ds_meta = sample["data_samples"].metainfo
    assert tuple(sample["inputs"].shape[1:]) == (48, 56) and ds_meta["ori_shape"] == (96, 112)
    assert ds_meta["mpp"] == 0.5 and ds_meta["stem"] == "a" and ds_meta["inst_map_path"].endswith("instances/a.png")
    packed = sample["data_samples"].gt_instance_map
    gt_ids, ignore = packed.ids[0].numpy(), packed.ignore[0].numpy()
    assert gt_ids.shape == (96, 112)
    reference = read_instance_annotation(str(Path(ds_meta["seg_map_path"])), ds_meta["inst_map_path"], LOOKUP)
    valid = np.flatnonzero(~reference.ignored) + 1
    labels = sample["data_samples"].gt_instances.labels.numpy()
    assert len(labels) == len(valid) and "masks" not in sample["data_samples"].gt_instances
    for k, ref in enumerate(valid, start=1):
        assert np.array_equal(gt_ids == k, reference.instances.ids == ref)
        assert labels[k - 1] == reference.instances.labels[ref - 1]
    assert np.array_equal(ignore, (semantic == 255))  # ignore pixels (incl. the ignored object)


def test_det_data_preprocessor_batches_and_pads_masks(layout: Path) -> None:
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadInstanceAnnotations"),
                dict(type="mmseg.RandomCrop", crop_size=(64, 80)), dict(type="InstanceMapToTargets"),
                dict(type="PackInstanceInputs")]
    with det_scope():
        ds = build(layout, pipeline=pipeline)
        big = build(layout, pipeline=pipeline[:2] + pipeline[3:])  # uncropped 96x112
        np.random.seed(0)
        batch = pseudo_collate([ds[0], big[1]])
        preprocessor = DET_MODELS.build(dict(type="DetDataPreprocessor", mean=[0, 0, 0], std=[1, 1, 1],
                                             bgr_to_rgb=True, pad_size_divisor=32, pad_mask=True))
        out = preprocessor(batch, training=True)
    assert tuple(out["inputs"].shape) == (2, 3, 96, 128)
    for sample, source in zip(out["data_samples"], batch["data_samples"]):
        masks = sample.gt_instances.masks
        assert isinstance(masks, BitmapMasks) and (masks.height, masks.width) == (96, 128)
        h, w = source.img_shape
        assert masks.masks[:, h:].sum() == 0 and masks.masks[:, :, w:].sum() == 0
        assert masks.masks.sum() > 0 and isinstance(sample.gt_instances.bboxes, torch.Tensor)


def test_pipeline_built_from_an_mmdet_scoped_config(layout: Path) -> None:
    from mmengine.dataset import Compose

    with det_scope():
        pipeline = Compose(EXACT_PIPELINE)
        assert [type(t).__name__ for t in pipeline.transforms][-2:] == ["InstanceMapToTargets", "PackInstanceInputs"]
        assert DET_TRANSFORMS.get("LoadInstanceAnnotations") is LoadInstanceAnnotations


# ----------------------------------------------------------------------------- the instance base configs
INSTANCE_BASES = sorted(p for p in (REPO / "configs" / "_base_" / "datasets").glob("*.py")
                        if p.stem != "histology_instance_folder"
                        and "HistologyInstanceDataset" in str(Config.fromfile(str(p)).test_dataloader.dataset.type))


def write_cells(root: Path, stems: Dict[str, Sequence[str]], classes: Sequence[str], size: int) -> Path:
    """A layout whose objects are squares of every thing class (class ``k`` of masks/ is thing ``k - 1``)."""
    for folder in ("images", "masks", "instances", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, names in stems.items():
        for stem in names:
            ids = np.zeros((size, size), np.uint16)
            semantic = np.zeros((size, size), np.uint8)
            k = 0
            for top in range(4, size - 12, 24):
                for left in range(4, size - 12, 24):
                    k += 1
                    ids[top:top + 10, left:left + 10] = k
                    semantic[top:top + 10, left:left + 10] = 1 + k % (len(classes) - 1)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
            Image.fromarray(semantic).save(root / "masks" / f"{stem}.png")
            Image.fromarray(ids).save(root / "instances" / f"{stem}.png")
        (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
    (root / "meta.json").write_text(json.dumps({"classes": list(classes)}))
    return root


@pytest.mark.parametrize("config", INSTANCE_BASES, ids=lambda p: p.stem)
def test_instance_base_configs_build_and_pack_samples(config: Path, tmp_path: Path) -> None:
    """Each instance base (and the semantic twin's cell evaluation): training samples carry one mask per
    object on the crop; test samples the ground truth as one id map at the source size, no mask stack."""
    cfg = Config.fromfile(str(config))
    cell_classes = tuple(cfg.test_dataloader.dataset.metainfo["classes"])
    factor = cfg.mpp / cfg.working_mpp if cfg.get("mpp") and cfg.get("working_mpp") else 1.0
    size = int(round(max(cfg.crop_size) / factor)) + 24
    root = write_cells(tmp_path / "ds", {"train": ["a"], "val": ["b"], "test": ["c"]},
                       ("background",) + cell_classes, size)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset_cfg = cfg[loader].dataset.copy()
        dataset_cfg.data_root = str(root)
        if dataset_cfg.type == "HistologySegDataset":  # the semantic twin trains on class masks
            sample = SEG_DATASETS.build(dataset_cfg)[0]["data_samples"]
            assert set(np.unique(sample.gt_sem_seg.data.numpy()).tolist()) <= set(range(1 + len(cell_classes)))
            continue
        with det_scope():
            dataset = DET_DATASETS.build(dataset_cfg)
            packed = dataset[0]
        assert dataset.metainfo["classes"] == cell_classes
        sample = packed["data_samples"]
        if loader == "train_dataloader":
            masks = sample.gt_instances.masks
            assert masks.masks.shape[1:] == tuple(packed["inputs"].shape[1:])
            assert len(masks) > 0 and set(sample.gt_instances.labels.tolist()) <= set(range(len(cell_classes)))
        else:
            ids = sample.gt_instance_map.ids
            assert tuple(ids.shape) == (1, size, size) and sample.ori_shape == (size, size)
            assert int(ids.max()) == len(sample.gt_instances.labels) > 0
            assert "masks" not in sample.gt_instances
            expected = tuple(int(round(size * factor)) for _ in range(2))
            assert tuple(packed["inputs"].shape[1:]) == expected


# ----------------------------------------------------------------------------- shipped data/nuclei

def test_nuclei_demo_builds_for_both_tasks() -> None:
    train = build(NUCLEI, ann_file="splits/train.txt")
    test = build(NUCLEI, ann_file="splits/test.txt", test_mode=True)
    assert (len(train), len(test)) == (3, 1)
    assert train.metainfo["classes"] == ("nucleus",) and train.metainfo["mpp"] is None
    semantic = SEG_DATASETS.build(dict(type="HistologySegDataset", data_root=str(NUCLEI), pipeline=[]))
    assert semantic.metainfo["classes"] == ("background", "nucleus") and len(semantic) == 3


def test_nuclei_demo_files_and_meta() -> None:
    meta = json.loads((NUCLEI / "meta.json").read_text())
    split = {name: (NUCLEI / "splits" / f"{name}.txt").read_text().split() for name in ("train", "val", "test")}
    held_out = split["test"]
    assert split["val"] == held_out and len(held_out) == 1 and sorted(split["train"] + held_out) == sorted(QUADRANTS)
    full = np.zeros((512, 512), np.int64)
    for stem, (top, left) in QUADRANTS.items():
        ids = read(NUCLEI / "instances" / f"{stem}.png")
        image, mask = read(NUCLEI / "images" / f"{stem}.png"), read(NUCLEI / "masks" / f"{stem}.png")
        assert ids.dtype == np.uint16 and image.shape == (256, 256, 3) and mask.dtype == np.uint8
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
        assert np.array_equal(mask, (ids > 0).astype(np.uint8))
        assert meta["nuclei_per_quadrant"][stem] == len(np.unique(ids)) - 1
        full[top:top + 256, left:left + 256] = ids
    assert len(np.unique(full)) - 1 == meta["source_nuclei"] == 125 and full.max() == 183
    partial = {}
    for stem, (top, left) in QUADRANTS.items():
        window = full[top:top + 256, left:left + 256]
        partial[stem] = sum(int((window == k).sum() < (full == k).sum()) for k in np.unique(window) if k)
    assert partial == meta["partial_nuclei_per_quadrant"] and sum(partial.values()) > 0
    counts = meta["nuclei_per_quadrant"]
    mean = sum(counts.values()) / 4
    assert all(abs(counts[held_out[0]] - mean) <= abs(c - mean) for c in counts.values())
    assert meta["thing_classes"] == ["nucleus"] and "not H&E" in meta["modality"]
    readme = (NUCLEI / "README.md").read_text()
    for needed in ("BSD 3-Clause", "Uwe Schmidt, Martin Weigert", "THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS",
                   "not H&E", "CC0"):
        assert needed in readme, needed


def load_script():
    spec = importlib.util.spec_from_file_location("make_nuclei_demo_data", REPO / "tools" / "make_nuclei_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nuclei_per_window_matches_brute_force() -> None:
    script = load_script()
    rng = np.random.default_rng(3)
    ids = np.zeros((40, 48), np.int64)
    for k in range(1, 15):
        y, x = rng.integers(0, 36, 2)
        ids[y:y + rng.integers(1, 6), x:x + rng.integers(1, 9)] = k
    for window in (8, 17):
        counts = script.nuclei_per_window(ids, window)
        brute = np.array([[len(np.unique(ids[y:y + window, x:x + window])) - int((ids[y:y + window, x:x + window] == 0)
                           .any()) for x in range(48 - window + 1)] for y in range(40 - window + 1)])
        assert np.array_equal(counts, brute)


def test_script_refuses_other_files(tmp_path: Path) -> None:
    script = load_script()
    folder = tmp_path / "src"
    folder.mkdir()
    import tifffile

    tifffile.imwrite(folder / "img2d.tif", np.zeros((512, 512), np.uint16))
    tifffile.imwrite(folder / "mask2d.tif", np.zeros((512, 512), np.uint16))
    assert script.main([str(folder), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="img2d.tif has SHA-256"):
        script.read_source(folder)


@pytest.mark.skipif(not os.environ.get("UNISEG_STARDIST_WHEEL"),
                    reason="set UNISEG_STARDIST_WHEEL to the stardist-0.9.2 wheel to re-derive data/nuclei")
def test_script_reproduces_the_shipped_files(tmp_path: Path) -> None:
    script = load_script()
    out = tmp_path / "nuclei"
    assert script.main([os.environ["UNISEG_STARDIST_WHEEL"], "--out", str(out)]) == 0
    shipped = sorted(p.relative_to(NUCLEI) for p in NUCLEI.rglob("*") if p.is_file() and p.name != "README.md")
    assert shipped == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in shipped:
        assert (out / rel).read_bytes() == (NUCLEI / rel).read_bytes(), rel
    assert hashlib.sha256((out / "meta.json").read_bytes()).digest() == hashlib.sha256(
        (NUCLEI / "meta.json").read_bytes()).digest()
