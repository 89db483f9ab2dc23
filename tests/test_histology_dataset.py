"""HistologySegDataset: metainfo/mpp resolution, load-time validation, and every base dataset config."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
from mmengine import Config
from PIL import Image

import uniseg.datasets  # noqa: F401  (registers HistologySegDataset)
from mmseg.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]


def _semantic_bases():
    """Every semantic dataset file: trained and scored as class masks (HistologySegDataset throughout).
    histology_folder.py is the layout they share (no data_root, no pipelines); the instance bases and the
    nuclei demo's semantic twin (scored as cells) are tested in test_instance_dataset.py."""
    bases = []
    for path in sorted((REPO / "configs" / "_base_" / "datasets").glob("*.py")):
        cfg = Config.fromfile(str(path))
        if path.stem != "histology_folder" and cfg.test_dataloader.dataset.get("type") == "HistologySegDataset":
            bases.append(path)
    return bases


BASE_DATASETS = _semantic_bases()


def write_layout(root: Path, splits: Dict[str, Sequence[str]], num_classes: int = 3, size=(40, 48),
                 meta: Optional[dict] = None) -> Path:
    """A tiny dataset in the uniseg layout: random RGB tiles and masks with labels 0..K-1 and 255."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    height, width = size
    for stems in splits.values():
        for stem in stems:
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
            mask = rng.integers(0, num_classes, (height, width), dtype=np.uint8)
            mask[0, 0] = 255
            Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    for name, stems in splits.items():
        (root / "splits" / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


META = {"classes": ["background", "a", "b"], "palette": [[0, 0, 0], [1, 2, 3], [4, 5, 6]], "mpp": 0.5}


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_layout(tmp_path / "ds", {"train": ["t1", "t2"], "val": ["v1"]}, meta=META)


def build(root: Path, **kwargs):
    cfg = dict(type="HistologySegDataset", data_root=str(root), pipeline=[])
    cfg.update(kwargs)
    return DATASETS.build(cfg)


def test_reads_classes_palette_and_mpp_from_meta_json(layout: Path) -> None:
    ds = build(layout)
    assert len(ds) == 2
    assert ds.metainfo["classes"] == ("background", "a", "b")
    assert [list(c) for c in ds.metainfo["palette"]] == META["palette"]
    info = ds.get_data_info(1)
    assert info["img_path"] == str(layout / "images" / "t2.png")
    assert info["seg_map_path"] == str(layout / "masks" / "t2.png")
    assert info["mpp"] == 0.5
    assert ds.mpp == 0.5


def test_val_split_and_config_overrides(layout: Path) -> None:
    ds = build(layout, ann_file="splits/val.txt", mpp=0.25,
               metainfo=dict(classes=("bg", "x", "y")))
    assert len(ds) == 1
    assert ds.get_data_info(0)["img_path"].endswith("v1.png")
    assert ds.get_data_info(0)["mpp"] == 0.25
    assert ds.metainfo["classes"] == ("bg", "x", "y")
    # names differ from meta.json, so its palette is not borrowed: the default palette is used
    assert [list(c) for c in ds.metainfo["palette"]] == [[0, 0, 0], [230, 159, 0], [86, 180, 233]]


def test_config_classes_without_meta_json(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "ds", {"train": ["t1"]})
    ds = build(root, metainfo=dict(classes=("bg", "fg", "other"), palette=[[1, 1, 1], [2, 2, 2], [3, 3, 3]]))
    assert ds.metainfo["palette"] == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]
    assert ds.get_data_info(0)["mpp"] is None


def test_meta_json_with_null_mpp_gives_none(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "ds", {"train": ["t1"]}, meta={**META, "mpp": None})
    assert build(root).get_data_info(0)["mpp"] is None


def test_absolute_ann_file_without_data_root_finds_meta_json(layout: Path) -> None:
    ds = DATASETS.build(dict(type="HistologySegDataset", ann_file=str(layout / "splits" / "train.txt"),
                             data_prefix=dict(img_path=str(layout / "images"), seg_map_path=str(layout / "masks")),
                             pipeline=[]))
    assert ds.metainfo["classes"] == ("background", "a", "b")
    assert ds.get_data_info(0)["mpp"] == 0.5


def test_no_classes_anywhere_names_the_root(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "ds", {"train": ["t1"]})
    with pytest.raises(ValueError, match=str(root / "meta.json")):
        build(root)


def test_class_count_mismatch_with_meta_json(layout: Path) -> None:
    with pytest.raises(ValueError, match="lists 3"):
        build(layout, metainfo=dict(classes=("bg", "fg")))


def test_palette_length_mismatch(layout: Path) -> None:
    with pytest.raises(ValueError, match="palette has 2 colours for 3 classes"):
        build(layout, metainfo=dict(classes=("bg", "a", "b"), palette=[[0, 0, 0], [1, 1, 1]]))


@pytest.mark.parametrize("bad", [0, -1.0, "0.5", True])
def test_invalid_mpp(layout: Path, bad) -> None:
    with pytest.raises(ValueError, match="mpp must be a positive number"):
        build(layout, mpp=bad)


def test_malformed_meta_json(layout: Path) -> None:
    (layout / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(layout / "meta.json")):
        build(layout)


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_missing_file_for_listed_stem_names_the_path(layout: Path, folder: str) -> None:
    (layout / folder / "t2.png").unlink()
    with pytest.raises(FileNotFoundError, match=str(layout / folder / "t2.png")):
        build(layout)


def test_empty_split_names_the_split_file(layout: Path) -> None:
    (layout / "splits" / "val.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=str(layout / "splits" / "val.txt")):
        build(layout, ann_file="splits/val.txt")


def test_missing_split_file(layout: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(layout / "splits" / "test.txt")):
        build(layout, ann_file="splits/test.txt")


def test_blank_lines_in_split_are_ignored(layout: Path) -> None:
    (layout / "splits" / "train.txt").write_text("t1\n\n t2 \n")
    assert len(build(layout)) == 2


def test_without_split_file_lists_the_image_folder(layout: Path) -> None:
    ds = build(layout, ann_file="")
    assert len(ds) == 3
    assert all(ds.get_data_info(i)["mpp"] == 0.5 for i in range(3))


def test_pipeline_sample_from_raw_mmseg_transforms(layout: Path) -> None:
    ds = build(layout, pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                                 dict(type="PackSegInputs")])
    sample = ds[0]
    assert tuple(sample["inputs"].shape) == (3, 40, 48)
    gt = sample["data_samples"].gt_sem_seg.data
    assert tuple(gt.shape) == (1, 40, 48)
    expected = np.asarray(Image.open(layout / "masks" / "t1.png"))
    assert np.array_equal(gt[0].numpy(), expected)


def test_tiff_tiles_via_suffixes(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "ds", {"train": ["t1"]}, meta=META)
    for folder in ("images", "masks"):
        png = root / folder / "t1.png"
        with Image.open(png) as im:
            im.save(root / folder / "t1.tif")
        png.unlink()
    ds = build(root, img_suffix=".tif", seg_map_suffix=".tif",
               pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")])
    assert ds.get_data_info(0)["img_path"].endswith("t1.tif")
    sample = ds[0]
    assert tuple(sample["inputs"].shape) == (3, 40, 48)
    with Image.open(root / "masks" / "t1.tif") as im:
        assert np.array_equal(sample["data_samples"].gt_sem_seg.data[0].numpy(), np.asarray(im))


def test_mpp_reaches_the_resampling_transform(layout: Path) -> None:
    """The contract with ResampleToMPP: the dataset's mpp (0.5 in meta.json, 0.25 here) drives the scale."""
    ds = build(layout, mpp=0.25, pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                                           dict(type="ResampleToMPP", target_mpp=0.5), dict(type="PackSegInputs")])
    sample = ds[0]
    assert tuple(sample["inputs"].shape) == (3, 20, 24)
    assert tuple(sample["data_samples"].gt_sem_seg.data.shape) == (1, 20, 24)


@pytest.mark.parametrize("config", BASE_DATASETS, ids=lambda p: p.stem)
def test_base_config_loads(config: Path) -> None:
    cfg = Config.fromfile(str(config))
    # custom_imports (and every other runtime key) comes from default_runtime.py; a dataset base that
    # repeated one would make mmengine reject any config inheriting both ("Duplicate key").
    runtime = Config.fromfile(str(REPO / "configs" / "_base_" / "default_runtime.py"))
    assert not set(cfg.keys()) & set(runtime.keys())
    assert "uniseg" in runtime.custom_imports["imports"]
    assert cfg.dataset_type == "HistologySegDataset"
    assert len(cfg.metainfo["classes"]) == len(cfg.metainfo["palette"])
    assert cfg.val_evaluator == dict(type="IoUMetric", iou_metrics=["mIoU", "mDice"])
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = cfg[loader]["dataset"]
        assert dataset["type"] == "HistologySegDataset"
        assert dataset["metainfo"] == cfg.metainfo and dataset["mpp"] == cfg.mpp
    types = [t["type"] for t in cfg.train_pipeline]
    assert types[:2] == ["LoadImageFromFile", "LoadAnnotations"] and types[-1] == "PackSegInputs"
    assert "RandomCrop" in types and "Albumentations" in types
    if cfg.mpp is not None:  # resampled to the encoder's working resolution, driven by the metadata
        assert "ResampleToMPP" in types and cfg.working_mpp == 0.5


@pytest.mark.parametrize("config", BASE_DATASETS, ids=lambda p: p.stem)
def test_base_config_pipelines_yield_packed_samples(config: Path, tmp_path: Path) -> None:
    cfg = Config.fromfile(str(config))
    crop_h, crop_w = cfg.crop_size
    num_classes = len(cfg.metainfo["classes"])
    size = (crop_h + 8, crop_w + 16)
    root = write_layout(tmp_path / "ds", {"train": ["a", "b"], "val": ["c"], "test": ["d"]},
                        num_classes=num_classes, size=size)
    train_cfg = cfg.train_dataloader.dataset.copy()
    train_cfg.data_root = str(root)
    train = DATASETS.build(train_cfg)
    assert len(train) == 2 and train.get_data_info(0)["mpp"] == cfg.mpp
    sample = train[0]
    _, h, w = sample["inputs"].shape
    assert sample["inputs"].shape[0] == 3 and h <= crop_h and w <= crop_w
    assert tuple(sample["data_samples"].gt_sem_seg.data.shape) == (1, h, w)
    labels = set(np.unique(sample["data_samples"].gt_sem_seg.data.numpy()).tolist())
    assert labels <= set(range(num_classes)) | {255}

    for loader, stem in (("val_dataloader", "c"), ("test_dataloader", "d")):
        eval_cfg = cfg[loader].dataset.copy()
        eval_cfg.data_root = str(root)
        ds = DATASETS.build(eval_cfg)
        assert len(ds) == 1 and ds.get_data_info(0)["img_path"].endswith(f"{stem}.png")
        packed = ds[0]
        # the image is resampled to the working resolution; ground truth stays at the source resolution
        # (predictions are resized back to ori_shape before evaluation)
        factor = cfg.mpp / cfg.working_mpp if cfg.mpp is not None else 1.0
        expected = tuple(int(round(s * factor)) for s in size)
        assert tuple(packed["inputs"].shape) == (3, *expected)
        assert tuple(packed["data_samples"].gt_sem_seg.data.shape) == (1, *size)
        assert packed["data_samples"].ori_shape == size


# ----------------------------------------------------------------------------- sample validation
LOAD = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]


def _mask(root: Path, stem: str, values, dtype=np.uint8, size=(40, 48)) -> np.ndarray:
    """Overwrite a mask with ``values`` spread over its pixels (every value appears)."""
    mask = np.resize(np.asarray(values, dtype=dtype), size[0] * size[1]).reshape(size)
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return mask


def test_out_of_range_label_is_refused_on_first_read_naming_the_mask(layout: Path) -> None:
    _mask(layout, "t2", [0, 1, 2, 7, 255])
    ds = build(layout, pipeline=LOAD)
    ds[0]  # a valid sample loads
    expected = (f"{layout / 'masks' / 't2.png'}: label values [7] are outside the 3 classes "
                f"('background', 'a', 'b') and ignore_index 255")
    with pytest.raises(ValueError, match=re.escape(expected)):
        ds[1]


def test_out_of_range_label_in_test_mode(layout: Path) -> None:
    _mask(layout, "v1", [0, 3])
    ds = build(layout, ann_file="splits/val.txt", test_mode=True, pipeline=LOAD)
    with pytest.raises(ValueError, match=r"v1.png: label values \[3\]"):
        ds[0]


def test_ignore_index_pixels_are_accepted(layout: Path) -> None:
    mask = _mask(layout, "t1", [0, 1, 2, 255])
    sample = build(layout, pipeline=LOAD)[0]
    np.testing.assert_array_equal(sample["data_samples"].gt_sem_seg.data[0].numpy(), mask)


def test_a_dataset_specific_ignore_index_is_the_one_accepted(layout: Path) -> None:
    _mask(layout, "t1", [0, 1, 2, 254])
    _mask(layout, "t2", [0, 1, 2, 255])
    ds = build(layout, ignore_index=254, pipeline=LOAD)
    ds[0]
    with pytest.raises(ValueError, match=r"t2.png: label values \[255\] .* ignore_index 254"):
        ds[1]


def test_reduce_zero_label_is_respected(layout: Path) -> None:
    # with reduce_zero_label, stored 1..3 are the 3 classes and 0 (like 255) is ignored
    _mask(layout, "t1", [0, 1, 2, 3, 255])
    _mask(layout, "t2", [1, 4])
    ds = build(layout, reduce_zero_label=True, pipeline=LOAD)
    gt = ds[0]["data_samples"].gt_sem_seg.data[0].numpy()
    assert set(np.unique(gt).tolist()) == {0, 1, 2, 255}
    with pytest.raises(ValueError, match=r"t2.png: label values \[4\] .*reduce_zero_label"):
        ds[1]
    # the same stored 3 without reduce_zero_label is outside the classes
    with pytest.raises(ValueError, match=r"t1.png: label values \[3\]"):
        build(layout, pipeline=LOAD)[0]


@pytest.mark.parametrize("reduce_zero_label", [False, True])
@pytest.mark.parametrize("label_map", [None, {0: 255, 1: 0, 2: 1, 3: 255}], ids=["no-map", "map"])
def test_label_rule_agrees_with_mmseg_load_annotations(tmp_path: Path, reduce_zero_label: bool, label_map) -> None:
    """Reference: run mmseg's own LoadAnnotations on every stored value and see what comes out."""
    from mmseg.datasets.transforms import LoadAnnotations

    from uniseg.datasets.validation import LabelRule

    classes, ignore_index = ("x", "y"), 255
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(stored).save(tmp_path / "all.png")
    out = LoadAnnotations()(dict(seg_map_path=str(tmp_path / "all.png"), reduce_zero_label=reduce_zero_label,
                                 label_map=label_map, seg_fields=[]))["gt_seg_map"]
    reference = (out < len(classes)) | (out == ignore_index)
    rule = LabelRule(classes=classes, ignore_index=ignore_index, reduce_zero_label=reduce_zero_label,
                     label_map=label_map)
    np.testing.assert_array_equal(rule.allowed, reference.ravel())
    assert set(rule.invalid_values(stored).tolist()) == set(np.flatnonzero(~reference.ravel()).tolist())


def test_each_sample_is_checked_once_per_process(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uniseg.datasets.histology as histology

    calls = []
    real = histology.check_sample_pixels
    monkeypatch.setattr(histology, "check_sample_pixels", lambda *a: calls.append(a[1]) or real(*a))
    ds = build(layout, pipeline=LOAD)
    for _ in range(3):
        ds[0], ds[1]
    assert [Path(p).name for p in calls] == ["t1.png", "t2.png"]


def test_out_of_range_label_through_dataloader_workers_names_the_mask(layout: Path) -> None:
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    _mask(layout, "t2", [0, 9])
    loader = DataLoader(build(layout, pipeline=LOAD), batch_size=2, num_workers=1, collate_fn=pseudo_collate)
    with pytest.raises(ValueError, match=r"t2.png: label values \[9\]"):
        next(iter(loader))


def test_16bit_mask_values_are_checked_before_mmseg_casts_them_to_8_bit(layout: Path) -> None:
    _mask(layout, "t1", [0, 1, 2, 255], dtype=np.uint16)  # 16-bit file, valid values: trains as usual
    _mask(layout, "t2", [0, 1, 258], dtype=np.uint16)  # 258 would become label 2 after mmseg's uint8 cast
    ds = build(layout, pipeline=LOAD)
    assert set(np.unique(ds[0]["data_samples"].gt_sem_seg.data.numpy()).tolist()) == {0, 1, 2, 255}
    with pytest.raises(ValueError, match=r"t2.png: label values \[258\] .*would wrap around"):
        ds[1]


def test_rgb_mask_is_refused_when_the_dataset_loads(layout: Path) -> None:
    Image.new("RGB", (48, 40)).save(layout / "masks" / "t2.png")
    with pytest.raises(OSError, match=re.escape(f"{layout / 'masks' / 't2.png'}: label mask must be a "
                                                f"single-channel index image") + ".*mode RGB"):
        build(layout)


def test_palette_mask_is_read_as_indices(layout: Path) -> None:
    index = _mask(layout, "t1", [0, 1, 2, 255])
    im = Image.fromarray(index, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [255, 255, 255] * 253)
    im.save(layout / "masks" / "t1.png")
    gt = build(layout, pipeline=LOAD)[0]["data_samples"].gt_sem_seg.data[0].numpy()
    np.testing.assert_array_equal(gt, index)


def test_mask_larger_than_its_image_is_refused_when_the_dataset_loads(layout: Path) -> None:
    Image.fromarray(np.zeros((50, 48), np.uint8)).save(layout / "masks" / "t1.png")
    with pytest.raises(ValueError, match=re.escape(f"{layout / 'masks' / 't1.png'}: mask is 48x50 (w x h) but its "
                                                   f"image {layout / 'images' / 't1.png'} is 48x40")):
        build(layout)


def test_16bit_image_is_refused_when_the_dataset_loads(layout: Path) -> None:
    Image.fromarray(np.full((40, 48), 1000, np.uint16)).save(layout / "images" / "t2.png")
    with pytest.raises(OSError, match=re.escape(f"{layout / 'images' / 't2.png'}: 16-bit samples")):
        build(layout)


def test_exif_rotated_image_is_refused(layout: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: OpenCV (mmcv's image loader) would turn the image but not the mask
    Image.open(layout / "images" / "t1.png").save(layout / "images" / "t1.png", exif=exif.tobytes())
    with pytest.raises(ValueError, match="t1.png: EXIF orientation 6"):
        build(layout)


def test_transparent_image_is_refused_on_first_read(layout: Path) -> None:
    rgba = np.full((40, 48, 4), 255, np.uint8)
    Image.fromarray(rgba).save(layout / "images" / "t1.png")  # opaque RGBA: fine
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(layout / "images" / "t2.png")
    ds = build(layout, pipeline=LOAD)
    ds[0]
    with pytest.raises(ValueError, match="t2.png: 16 transparent pixels"):
        ds[1]


def test_every_unusable_sample_is_named_in_one_error(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "ds", {"train": [f"t{i}" for i in range(14)]}, meta=META)
    for i in range(12):
        Image.new("RGB", (48, 40)).save(root / "masks" / f"t{i}.png")
    with pytest.raises(ValueError, match=r"12 of 14 samples listed in .*train.txt cannot be used") as info:
        build(root)
    message = str(info.value)
    assert all(f"t{i}.png" in message for i in range(10)) and "... and 2 more" in message


# ----------------------------------------------------------------------------- the tools refuse bad data
E2E_CONFIG = """
_base_ = ['{base}/models/mask2former_vit-adapter_uni-tiny.py', '{base}/default_runtime.py',
          '{base}/schedules/schedule_40k_layer-decay.py']
num_classes = {num_classes}
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    test_cfg=dict(mode='whole'))
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
dataset = dict(type='HistologySegDataset', data_root='{root}', pipeline=pipeline)
loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
train_dataloader = dict(**loader, sampler=dict(type='InfiniteSampler', shuffle=False),
                        dataset=dict(**dataset, ann_file='splits/train.txt'))
test_dataloader = dict(**loader, sampler=dict(type='DefaultSampler', shuffle=False),
                       dataset=dict(**dataset, ann_file='splits/val.txt', test_mode=True))
test_cfg = dict(type='TestLoop')
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
val_dataloader = None
val_cfg = None
val_evaluator = None
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=10 ** 6)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, save_best=None),
                     visualization=dict(type='SegVisualizationHook', draw=False))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(vis_backends=vis_backends)
env_cfg = dict(cudnn_benchmark=False)
"""


def _e2e_config(tmp_path: Path, root: Path, num_classes: int = 3) -> Path:
    path = tmp_path / "cfg.py"
    path.write_text(E2E_CONFIG.format(base=REPO / "configs" / "_base_", root=root, num_classes=num_classes))
    return path


def _tool(tool: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _assert_refused(proc, *needles: str) -> None:
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    for needle in needles:
        assert needle in log, log[-3000:]
    assert "Iter(train) [1/2]" not in log  # refused before the first step completed


def _break_rgb_mask(root: Path) -> str:
    Image.new("RGB", (48, 40)).save(root / "masks" / "t2.png")
    return f"{root / 'masks' / 't2.png'}: label mask must be a single-channel index image"


def _break_label(root: Path) -> str:
    _mask(root, "t2", [0, 1, 7])
    return f"{root / 'masks' / 't2.png'}: label values [7] are outside the 3 classes"


def _break_size(root: Path) -> str:
    Image.fromarray(np.zeros((56, 48), np.uint8)).save(root / "masks" / "t1.png")
    return f"{root / 'masks' / 't1.png'}: mask is 48x56 (w x h) but its image"


def _break_16bit_image(root: Path) -> str:
    Image.fromarray(np.full((40, 48), 30000, np.uint16)).save(root / "images" / "t1.png")
    return f"{root / 'images' / 't1.png'}: 16-bit samples"


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [_break_rgb_mask, _break_label, _break_size, _break_16bit_image],
                         ids=["rgb-mask", "label-7", "size-mismatch", "16-bit-image"])
def test_train_tool_refuses_bad_samples_naming_the_file(layout: Path, tmp_path: Path, corrupt) -> None:
    needle = corrupt(layout)
    _assert_refused(_tool("train.py", _e2e_config(tmp_path, layout), "--work-dir", tmp_path / "work"), needle)


@pytest.mark.slow
def test_train_tool_refuses_a_model_with_fewer_classes_than_the_dataset(layout: Path, tmp_path: Path) -> None:
    proc = _tool("train.py", _e2e_config(tmp_path, layout, num_classes=2), "--work-dir", tmp_path / "work")
    _assert_refused(proc, "model.decode_head.num_classes is 2 but the train dataset", "has 3 classes")


@pytest.mark.slow
def test_test_tool_refuses_an_out_of_range_label_naming_the_mask(layout: Path, tmp_path: Path) -> None:
    import torch
    from mmengine.config import Config

    from mmseg.registry import MODELS

    config = _e2e_config(tmp_path, layout)
    model = MODELS.build(Config.fromfile(str(config)).model)  # an untrained model is enough to reach the data
    checkpoint = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, checkpoint)
    _mask(layout, "v1", [0, 1, 2, 7])
    proc = _tool("test.py", config, checkpoint, "--work-dir", tmp_path / "eval")
    _assert_refused(proc, f"{layout / 'masks' / 'v1.png'}: label values [7] are outside the 3 classes")
    assert "summary: mIoU" not in proc.stdout
