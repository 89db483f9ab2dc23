"""Dataset converters: each reads a small fake source written in its published format.

For every converter: the output layout, label values, split files and meta.json; and for each kind
of bad input (size mismatch, out-of-range label, corrupt file, missing mask) an error that names the
offending file while leaving nothing at the output path.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from uniseg.datasets.converters import ConversionError, LayoutWriter
from uniseg.datasets.converters import convert_bcss, convert_crag, convert_pannuke, convert_segpath
from uniseg.datasets.converters.bcss import BCSS_CODES, tile_origins
from uniseg.datasets.converters.common import carve_val_split
from uniseg.datasets.converters.pannuke import instances_to_semantic
from uniseg.datasets.converters import convert_consep
from uniseg.datasets.converters.pannuke import instances_to_objects
from uniseg.utils.imageio import ImageReadError

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(1234)


def rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def split(out: Path, name: str) -> List[str]:
    path = out / "splits" / f"{name}.txt"
    return path.read_text().split() if path.exists() else []


def assert_layout(out: Path, classes, mpp) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == list(classes)
    assert meta["mpp"] == mpp
    assert len(meta["palette"]) == len(classes)
    stems = {p.stem for p in (out / "images").glob("*.png")}
    assert stems == {p.stem for p in (out / "masks").glob("*.png")}
    listed = [s for name in ("train", "val", "test") for s in split(out, name)]
    assert sorted(listed) == sorted(stems), "every written tile is in exactly one split"
    for stem in stems:
        image, mask = read(out / "images" / f"{stem}.png"), read(out / "masks" / f"{stem}.png")
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask).tolist()) <= set(range(len(classes))) | {255}
    return meta


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*")), "temporary output left behind"


# --------------------------------------------------------------------------------------------- CRAG

def make_crag(root: Path) -> Path:
    src = root / "CRAG_v2" / "CRAG"
    for folder, prefix, n in (("train", "train", 4), ("valid", "test", 2)):
        for i in range(1, n + 1):
            save(rgb(24, 30), src / folder / "Images" / f"{prefix}_{i}.png")
            instances = np.zeros((24, 30), dtype=np.uint16)
            instances[2:8, 3:9] = 1
            instances[10:20, 12:28] = 300 + i  # 16-bit instance ids are common
            save(instances, src / folder / "Annotation" / f"{prefix}_{i}.png")
    save(np.zeros((24, 30), dtype=np.uint8), src / "valid" / "Annotation" / "test_9.png")  # v1 orphan
    return root / "CRAG_v2"


def test_crag_converts_layout_labels_splits_and_meta(tmp_path: Path) -> None:
    src, out = make_crag(tmp_path), tmp_path / "out"
    meta = convert_crag(src, out, val_fraction=0.25, seed=3)
    assert_layout(out, ("background", "gland"), 0.55)
    assert split(out, "test") == ["test_1", "test_2"]
    assert sorted(split(out, "train") + split(out, "val")) == [f"train_{i}" for i in range(1, 5)]
    assert len(split(out, "val")) == 1
    assert meta["ignored_orphan_masks"] == ["test_9.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask, "output folder gets normal permissions"
    assert meta["split_counts"] == {"train": 3, "val": 1, "test": 2}
    source = read(src / "CRAG" / "train" / "Annotation" / "train_2.png")
    assert np.array_equal(read(out / "masks" / "train_2.png"), (source > 0).astype(np.uint8))
    assert np.array_equal(read(out / "images" / "train_2.png"), read(src / "CRAG" / "train" / "Images" / "train_2.png"))


def test_crag_val_split_is_reproducible(tmp_path: Path) -> None:
    src = make_crag(tmp_path)
    convert_crag(src, tmp_path / "a", val_fraction=0.5, seed=7)
    convert_crag(src, tmp_path / "b", val_fraction=0.5, seed=7)
    assert split(tmp_path / "a", "val") == split(tmp_path / "b", "val")
    assert (tmp_path / "a" / "meta.json").read_bytes() != b""


def test_crag_accepts_readme_spelling(tmp_path: Path) -> None:
    src = make_crag(tmp_path) / "CRAG"
    (src / "valid").rename(src / "test")
    for folder in ("train", "test"):
        (src / folder / "Annotation").rename(src / folder / "Annotations")
    convert_crag(src, tmp_path / "out")
    assert split(tmp_path / "out", "test") == ["test_1", "test_2"]


def test_crag_not_a_crag_folder(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="not a CRAG download"):
        convert_crag(tmp_path, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# -------------------------------------------------------------------------------------------- SegPath

SEGPATH_ROWS = [("s1", "train"), ("s2", "train"), ("s3", "train"), ("s4", "val"), ("s5", "test")]


def make_segpath(root: Path) -> Path:
    folder = root / "panCK_Epithelium"
    for name, _ in SEGPATH_ROWS:
        save(rgb(32, 32), folder / f"{name}_HE.png")
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4:20, 6:30] = 1
        save(mask, folder / f"{name}_mask.png")
    with open(root / "panCK_fileinfo.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "organ", "train_val_test"])
        for name, part in SEGPATH_ROWS:
            writer.writerow([f"{name}_HE.png", "colon", part])
            writer.writerow([f"{name}_mask.png", "colon", part])
    return root


def test_segpath_converts_with_published_split(tmp_path: Path) -> None:
    src, out = make_segpath(tmp_path / "segpath"), tmp_path / "out"
    meta = convert_segpath(src, out)
    assert_layout(out, ("background", "epithelium"), 0.2208)
    assert split(out, "train") == ["s1", "s2", "s3"] and split(out, "val") == ["s4"] and split(out, "test") == ["s5"]
    assert meta["antibody"] == "panCK"
    assert np.array_equal(read(out / "masks" / "s2.png"), read(src / "panCK_Epithelium" / "s2_mask.png"))


def test_segpath_set_folder_as_source_and_antibody_check(tmp_path: Path) -> None:
    src = make_segpath(tmp_path / "segpath")
    convert_segpath(src / "panCK_Epithelium", tmp_path / "out", antibody="panCK")
    assert split(tmp_path / "out", "test") == ["s5"]
    with pytest.raises(ConversionError, match="holds the panCK set, not ERG"):
        convert_segpath(src / "panCK_Epithelium", tmp_path / "out2", antibody="ERG")
    with pytest.raises(ConversionError, match="SegPath set folder for ERG is missing"):
        convert_segpath(src, tmp_path / "out3", antibody="ERG")
    assert_nothing_written(tmp_path / "out2")


def test_segpath_needs_the_split_csv(tmp_path: Path) -> None:
    src = make_segpath(tmp_path / "segpath")
    (src / "panCK_fileinfo.csv").unlink()
    with pytest.raises(ConversionError, match="panCK_fileinfo.csv"):
        convert_segpath(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# ----------------------------------------------------------------------------------------------- BCSS

BCSS_ROIS = {  # roi name -> (height, width)
    "TCGA-A1-A0SK-DX1_xmin100_ymin200_MPP-0.2500": (50, 70),
    "TCGA-A2-A0YE-DX1_xmin5_ymin6_MPP-0.2500": (40, 40),
    "TCGA-BH-A18V-DX1_xmin7_ymin8_MPP-0.2500": (30, 20),
    "TCGA-OL-A5D6-DX1_xmin9_ymin9_MPP-0.2500": (40, 40),
}


def make_bcss(root: Path) -> Path:
    base = root / "0_Public-data-Amgad2019_0.25MPP"
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "gtruth_codes.tsv").write_text(
        "label\tGT_code\n" + "".join(f"{name}\t{code}\n" for name, code in BCSS_CODES.items()))
    for name, (h, w) in BCSS_ROIS.items():
        save(rgb(h, w), base / "rgbs_colorNormalized" / f"{name}.png")
        codes = np.zeros((h, w), dtype=np.uint8)  # outside_roi everywhere ...
        codes[: min(h, 30), :] = 2  # stroma
        codes[:10, :10] = 19  # angioinvasion -> tumor
        codes[10:20, :10] = 10  # plasma cells -> inflammatory
        codes[20:30, :10] = 9  # fat -> other
        save(codes, base / "masks" / f"{name}.png")
    return root


def test_tile_origins_cover_the_roi() -> None:
    assert tile_origins(70, 32) == [0, 32, 38]
    assert tile_origins(64, 32) == [0, 32]
    assert tile_origins(20, 32) == [0]


def test_bcss_tiles_groups_and_splits_by_hospital(tmp_path: Path) -> None:
    src, out = make_bcss(tmp_path / "bcss"), tmp_path / "out"
    meta = convert_bcss(src, out, tile=32, val_fraction=0.34, seed=0)
    assert_layout(out, ("tumor", "stroma", "inflammatory", "necrosis", "other"), 0.25)
    first = "TCGA-A1-A0SK-DX1_xmin100_ymin200_MPP-0.2500"
    # 50x70 ROI -> tiles at x 0/32/38, y 0/18; rows >= 30 are outside_roi, but every tile touches row < 30
    assert sorted(s for s in meta_stems(out) if s.startswith(first)) == sorted(
        f"{first}_x{x:05d}_y{y:05d}" for x in (0, 32, 38) for y in (0, 18))
    mask = read(out / "masks" / f"{first}_x00000_y00000.png")
    assert mask[0, 0] == 0 and mask[15, 0] == 2 and mask[25, 0] == 4 and mask[0, 20] == 1
    lower = read(out / "masks" / f"{first}_x00000_y00018.png")
    assert lower.shape == (32, 32) and lower[-1, -1] == 255  # outside_roi became ignore
    assert set(split(out, "test")) == {s for s in meta_stems(out) if s.startswith("TCGA-OL")}
    val_cases = {s[:12] for s in split(out, "val")}
    assert len(val_cases) == 1 and not val_cases & {s[:12] for s in split(out, "train")}
    assert meta["source_codes_to_labels"]["outside_roi"] == 255
    assert meta["source_codes_to_labels"]["dcis"] == 0


def meta_stems(out: Path) -> List[str]:
    return [p.stem for p in (out / "images").glob("*.png")]


def test_bcss_all_classes_and_dropping_empty_tiles(tmp_path: Path) -> None:
    src = make_bcss(tmp_path / "bcss")
    base = src / "0_Public-data-Amgad2019_0.25MPP"
    codes = np.zeros((64, 32), dtype=np.uint8)
    codes[:32] = 21  # 'other'; the lower tile is all outside_roi and must be dropped
    save(codes, base / "masks" / "TCGA-A2-A0YE-DX1_xmin5_ymin6_MPP-0.2500.png")
    save(rgb(64, 32), base / "rgbs_colorNormalized" / "TCGA-A2-A0YE-DX1_xmin5_ymin6_MPP-0.2500.png")
    out = tmp_path / "out"
    meta = convert_bcss(base, out, tile=32, classes="all")
    assert len(meta["classes"]) == 21 and meta["classes"][0] == "tumor" and meta["classes"][-1] == "other"
    stems = [s for s in meta_stems(out) if s.startswith("TCGA-A2")]
    assert stems == ["TCGA-A2-A0YE-DX1_xmin5_ymin6_MPP-0.2500_x00000_y00000"]
    assert np.all(read(out / "masks" / f"{stems[0]}.png") == 20)


# -------------------------------------------------------------------------------------------- PanNuke

FOLD_SIZES = {1: 3, 2: 2, 3: 2}


def make_pannuke(root: Path) -> Path:
    for fold, n in FOLD_SIZES.items():
        images = RNG.uniform(0, 255, (n, 16, 16, 3))
        masks = np.zeros((n, 16, 16, 6))
        masks[:, 2:6, 2:6, 0] = 3  # neoplastic nucleus id 3
        masks[:, 8:12, 8:12, 1] = 5  # inflammatory
        masks[:, 10:14, 10:14, 4] = 7  # epithelial, overlapping the inflammatory one
        masks[..., 5] = (masks[..., :5].sum(-1) == 0)
        types = np.array(["Breast", "Bile-duct", "Head & Neck"][:n])
        (root / f"Fold {fold}" / "images" / f"fold{fold}").mkdir(parents=True)
        (root / f"Fold {fold}" / "masks" / f"fold{fold}").mkdir(parents=True)
        np.save(root / f"Fold {fold}" / "images" / f"fold{fold}" / "images.npy", images)
        np.save(root / f"Fold {fold}" / "images" / f"fold{fold}" / "types.npy", types)
        np.save(root / f"Fold {fold}" / "masks" / f"fold{fold}" / "masks.npy", masks)
    return root


def test_instances_to_semantic_later_channel_wins() -> None:
    masks = np.zeros((4, 4, 6))
    masks[0, 0, 2] = 9
    masks[1, 1, 1] = 2
    masks[1, 1, 3] = 4
    labels = instances_to_semantic(masks)
    assert labels[0, 0] == 3 and labels[1, 1] == 4 and labels[3, 3] == 0


def test_pannuke_converts_folds_to_cell_type_masks(tmp_path: Path) -> None:
    src, out = make_pannuke(tmp_path / "pannuke"), tmp_path / "out"
    meta = convert_pannuke(src, out)
    assert_layout(out, ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"), 0.25)
    assert split(out, "train") == ["fold1_00000_Breast", "fold1_00001_Bile-duct", "fold1_00002_Head-Neck"]
    assert split(out, "val") == ["fold2_00000_Breast", "fold2_00001_Bile-duct"]
    assert [s[:5] for s in split(out, "test")] == ["fold3", "fold3"]
    mask = read(out / "masks" / "fold1_00001_Bile-duct.png")
    assert mask[3, 3] == 1 and mask[8, 8] == 2 and mask[11, 11] == 5 and mask[0, 0] == 0
    source = np.load(src / "Fold 1" / "images" / "fold1" / "images.npy")[1]
    assert np.array_equal(read(out / "images" / "fold1_00001_Bile-duct.png"), np.rint(source).astype(np.uint8))
    assert meta["tissue_counts"] == {"Bile-duct": 3, "Breast": 3, "Head & Neck": 1}
    tissue = meta["image_attributes"]["tissue"]
    assert len(tissue) == 7 and tissue["fold1_00002_Head-Neck"] == "Head & Neck"  # the name, not the stem's
    assert tissue["fold3_00001_Bile-duct"] == "Bile-duct"
    assert meta["folds"] == {"1": "train", "2": "val", "3": "test"}


def test_pannuke_custom_fold_assignment(tmp_path: Path) -> None:
    src, out = make_pannuke(tmp_path / "pannuke"), tmp_path / "out"
    convert_pannuke(src, out, train_folds=[1, 2], val_folds=[], test_folds=[3])
    assert len(split(out, "train")) == 5 and split(out, "val") == [] and len(split(out, "test")) == 2
    with pytest.raises(ValueError, match="fold 2 is assigned to both"):
        convert_pannuke(src, tmp_path / "o2", train_folds=[1, 2], val_folds=[2])


def test_instances_to_objects_one_object_per_channel_and_id() -> None:
    masks = np.zeros((6, 6, 6))
    masks[0:2, 0:2, 0] = 4  # neoplastic 4
    masks[0:2, 4:6, 2] = 4  # connective 4: same id, other channel -> another nucleus
    masks[3:5, 0:3, 1] = 9  # inflammatory 9, partly covered by epithelial 2
    masks[3:5, 2:4, 4] = 2
    masks[5, 5, 3] = 6  # dead 6, entirely covered by epithelial 1
    masks[5, 5, 4] = 1
    objects = instances_to_objects(masks)
    semantic = instances_to_semantic(masks)
    assert objects.max() == 5 and len(np.unique(objects)) == 6  # 4, 4', 9, 2, 1 (dead 6 lost every pixel)
    assert objects[0, 0] != objects[0, 4]
    assert (objects[3:5, 2] == objects[3, 3]).all() and (objects[3:5, 0:2] == objects[3, 0]).all()
    for k in range(1, 6):  # every object lies on one class, the class of its channel
        assert len(np.unique(semantic[objects == k])) == 1
    assert np.array_equal(objects > 0, semantic > 0)
    masks[0, 0, 0] = 4.5
    with pytest.raises(ValueError, match="channel 0 holds non-integer instance ids"):
        instances_to_objects(masks)


def test_pannuke_writes_instances_beside_masks(tmp_path: Path) -> None:
    from uniseg.datasets.instances import read_instance_annotation, thing_label_lookup

    src, out = make_pannuke(tmp_path / "pannuke"), tmp_path / "out"
    meta = convert_pannuke(src, out)
    classes = ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")
    assert meta["thing_classes"] == list(classes[1:]) and "instance_rule" in meta
    stems = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert stems == sorted(p.stem for p in (out / "instances").glob("*.png"))
    ids = read(out / "instances" / "fold1_00001_Bile-duct.png")
    assert ids.dtype == np.uint16 and ids.max() == 3
    assert ids[3, 3] == 1 and ids[8, 8] == 2 and ids[11, 11] == 3 and ids[0, 0] == 0
    source = np.load(src / "Fold 1" / "masks" / "fold1" / "masks.npy")[1]
    assert np.array_equal(ids == 2, (source[..., 1] > 0) & (source[..., 4] == 0)), "epithelial wins the overlap"
    ann = read_instance_annotation(out / "masks" / "fold1_00001_Bile-duct.png", out / "instances" /
                                   "fold1_00001_Bile-duct.png", thing_label_lookup(classes, classes[1:]))
    assert ann.instances.labels.tolist() == [0, 1, 4]  # neoplastic, inflammatory, epithelial
    convert_pannuke(src, tmp_path / "semantic_only", instances=False)
    assert not (tmp_path / "semantic_only" / "instances").exists()
    assert "thing_classes" not in json.loads((tmp_path / "semantic_only" / "meta.json").read_text())
    semantic_only = read(tmp_path / "semantic_only" / "masks" / f"{stems[0]}.png")
    assert np.array_equal(semantic_only, read(out / "masks" / f"{stems[0]}.png"))


def test_pannuke_instance_config_averages_over_tissues(tmp_path: Path) -> None:
    """The PanNuke instance base scores bPQ per tissue, then over tissues, as PanNuke's authors report it:
    from the converter's tissues, through the dataset and the packed samples, to the metric."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdet.registry import DATASETS, METRICS

    src, out = make_pannuke(tmp_path / "pannuke"), tmp_path / "out"
    convert_pannuke(src, out, train_folds=[2], val_folds=[], test_folds=[1, 3])
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / "configs/_base_/datasets/pannuke_instance.py"))
    dataset_cfg = cfg.test_dataloader.dataset.copy()
    dataset_cfg.update(data_root=str(out), ann_file="splits/test.txt")
    with DefaultScope.overwrite_default_scope("mmdet"):
        dataset = DATASETS.build(dataset_cfg)
        metric = METRICS.build(cfg.test_evaluator)
    metric.dataset_meta = dataset.metainfo
    tissues = []
    for i in range(len(dataset)):
        sample = dataset[i]["data_samples"]
        tissues.append(sample.tissue)
        ids = sample.gt_instance_map.ids[0]
        n = len(sample.gt_instances.labels)
        perfect = sample.tissue != "Bile-duct"  # every nucleus exactly right, or none found
        found = range(1, n + 1) if perfect else []
        masks = torch.stack([ids == k for k in found]) if found else torch.zeros((0, *ids.shape), dtype=torch.bool)
        labels = sample.gt_instances.labels if perfect else torch.zeros(0, dtype=torch.long)
        result = sample.to_dict()
        result["pred_instances"] = dict(masks=masks, labels=labels, scores=torch.ones(len(labels)))
        metric.process(None, [result])
    assert sorted(tissues) == ["Bile-duct", "Bile-duct", "Breast", "Breast", "Head & Neck"]
    scores = metric.evaluate(len(dataset))
    # per tissue: Breast 100, Bile-duct 0, Head & Neck 100 -> 66.67; over images it would be 3/5 = 60
    assert scores["cell/bPQ"] == pytest.approx(200 / 3, abs=0.01)
    assert scores["cell/mPQ"] == pytest.approx(200 / 3, abs=0.01)


def test_instance_dataset_needs_every_listed_image_attribute(tmp_path: Path) -> None:
    from mmengine.registry import DefaultScope

    from mmdet.registry import DATASETS

    src, out = make_pannuke(tmp_path / "pannuke"), tmp_path / "out"
    convert_pannuke(src, out)
    meta = json.loads((out / "meta.json").read_text())
    del meta["image_attributes"]["tissue"]["fold3_00001_Bile-duct"]
    (out / "meta.json").write_text(json.dumps(meta))
    with DefaultScope.overwrite_default_scope("mmdet"), \
            pytest.raises(ValueError, match=r"meta.json: image_attributes\['tissue'\] has no value for "
                                            r"'fold3_00001_Bile-duct' \(listed in .*test.txt\)"):
        DATASETS.build(dict(type="HistologyInstanceDataset", data_root=str(out), ann_file="splits/test.txt"))


# -------------------------------------------------------------------------------------------- CoNSeP

CONSEP_SIZE = (30, 36)


def consep_label(seed: int):
    """inst_map with 6 nuclei (ids 1..6), their types 1..7, a consistent type_map and centroids."""
    inst_map = np.zeros(CONSEP_SIZE)
    types = np.array([1, 2, 3, 4, 5, 7][seed % 2:] + [6][: seed % 2])
    for k in range(1, 7):
        y, x = divmod(k - 1, 3)
        inst_map[2 + 9 * y:8 + 9 * y, 2 + 11 * x:9 + 11 * x] = k
    type_map = np.concatenate([[0], types])[inst_map.astype(int)]
    centroids = np.array([[5.0 + 11 * ((k - 1) % 3), 5.0 + 9 * ((k - 1) // 3)] for k in range(1, 7)])
    return {"inst_map": inst_map, "type_map": type_map.astype(float), "inst_type": types[:, None].astype(float),
            "inst_centroid": centroids}


def make_consep(root: Path) -> Path:
    from scipy.io import savemat

    src = root / "CoNSeP"
    for folder, prefix, n in (("Train", "train", 4), ("Test", "test", 2)):
        for i in range(1, n + 1):
            rgba = np.dstack([rgb(*CONSEP_SIZE), np.full(CONSEP_SIZE, 255, np.uint8)])
            save(rgba, src / folder / "Images" / f"{prefix}_{i}.png")
            (src / folder / "Labels").mkdir(parents=True, exist_ok=True)
            savemat(src / folder / "Labels" / f"{prefix}_{i}.mat", consep_label(i))
        (src / folder / "Overlay").mkdir()
    return root


def test_consep_converts_to_instances_with_merged_types(tmp_path: Path) -> None:
    from uniseg.datasets.instances import read_instance_annotation, thing_label_lookup

    src, out = make_consep(tmp_path / "src"), tmp_path / "out"
    meta = convert_consep(src, out, val_fraction=0.25, seed=1)
    classes = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")
    assert_layout(out, classes, 0.25)
    assert meta["thing_classes"] == list(classes[1:])
    assert split(out, "test") == ["test_1", "test_2"] and len(split(out, "val")) == 1
    assert sorted(split(out, "train") + split(out, "val")) == [f"train_{i}" for i in range(1, 5)]
    label = consep_label(2)
    ids = read(out / "instances" / "train_2.png")
    assert np.array_equal(ids, label["inst_map"].astype(np.uint16))
    merged = np.array([0, 1, 2, 3, 3, 4, 4, 4])[label["type_map"].astype(int)]
    assert np.array_equal(read(out / "masks" / "train_2.png"), merged)
    image = read(out / "images" / "train_2.png")
    assert np.array_equal(image, read(src / "CoNSeP" / "Train" / "Images" / "train_2.png")[..., :3])
    ann = read_instance_annotation(out / "masks" / "train_2.png", out / "instances" / "train_2.png",
                                   thing_label_lookup(classes, classes[1:]))
    assert ann.instances.labels.tolist() == (np.array([1, 2, 3, 3, 4, 4]) - 1).tolist()
    assert meta["type_map_disagreement"] == {"pixels": 0, "per_image": {}}
    assert meta["nucleus_counts"] == {"epithelial": 12, "inflammatory": 6, "other": 3, "spindle-shaped": 15}


def test_consep_keeps_seven_types_and_counts_type_map_disagreement(tmp_path: Path) -> None:
    from scipy.io import savemat

    src = make_consep(tmp_path / "src")
    label = consep_label(1)
    label["type_map"][2, 2] = 7  # one pixel of nucleus 1 (type 2) says endothelial
    savemat(src / "CoNSeP" / "Train" / "Labels" / "train_1.mat", label)
    meta = convert_consep(src, tmp_path / "out", merge_types=False)
    assert meta["classes"][3:5] == ["healthy_epithelial", "dysplastic_malignant_epithelial"]
    assert len(meta["classes"]) == 8 and meta["thing_classes"] == meta["classes"][1:]
    mask = read(tmp_path / "out" / "masks" / "train_1.png")
    assert np.array_equal(mask, np.concatenate([[0], label["inst_type"][:, 0]])[label["inst_map"].astype(int)])
    assert meta["type_map_disagreement"] == {"pixels": 1, "per_image": {"train_1": 1}}


def test_consep_dataset_reads_the_conversion(tmp_path: Path) -> None:
    from mmengine.registry import DefaultScope
    from mmdet.registry import DATASETS

    out = tmp_path / "out"
    convert_consep(make_consep(tmp_path / "src"), out, val_fraction=0.0)
    with DefaultScope.overwrite_default_scope("mmdet"):
        ds = DATASETS.build(dict(type="HistologyInstanceDataset", data_root=str(out), ann_file="splits/test.txt",
                                 pipeline=[]))
    assert ds.metainfo["classes"] == ("other", "inflammatory", "epithelial", "spindle-shaped")
    assert ds.metainfo["mpp"] == 0.25 and ds.get_data_info(0)["num_instances"] == 6


# ------------------------------------------------------------------------------- shared error checks

def _crag_mismatch(src: Path) -> Path:
    path = src / "CRAG" / "train" / "Annotation" / "train_3.png"
    return save(np.zeros((20, 30), dtype=np.uint8), path)


def _crag_rgb_mask(src: Path) -> Path:
    return save(rgb(24, 30), src / "CRAG" / "train" / "Annotation" / "train_2.png")


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x00\x01this is not an image at all" * 10)
    return path


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _segpath_value(src: Path) -> Path:
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[3, 3] = 2
    return save(mask, src / "panCK_Epithelium" / "s4_mask.png")


def _bcss_unknown_code(src: Path) -> Path:
    codes = np.full((40, 40), 2, dtype=np.uint8)
    codes[5, 5] = 22
    return save(codes, src / "0_Public-data-Amgad2019_0.25MPP" / "masks" / "TCGA-OL-A5D6-DX1_xmin9_ymin9_MPP-0.2500.png")


def _bcss_mismatch(src: Path) -> Path:
    return save(np.full((41, 40), 2, dtype=np.uint8),
                src / "0_Public-data-Amgad2019_0.25MPP" / "masks" / "TCGA-BH-A18V-DX1_xmin7_ymin8_MPP-0.2500.png")


def _pannuke_path(src: Path, fold: int, kind: str) -> Path:
    folder = "masks" if kind == "masks" else "images"
    return src / f"Fold {fold}" / folder / f"fold{fold}" / f"{kind}.npy"


def _pannuke_negative(src: Path) -> Path:
    path = _pannuke_path(src, 2, "masks")
    masks = np.load(path)
    masks[1, 0, 0, 2] = -1
    np.save(path, masks)
    return path


def _pannuke_mismatch(src: Path) -> Path:
    path = _pannuke_path(src, 3, "masks")
    np.save(path, np.zeros((2, 16, 15, 6)))
    return path


def _pannuke_pixels(src: Path) -> Path:
    path = _pannuke_path(src, 1, "images")
    images = np.load(path)
    images[2, 0, 0, 0] = 300.0
    np.save(path, images)
    return path


def _pannuke_fraction(src: Path) -> Path:
    path = _pannuke_path(src, 3, "masks")
    masks = np.load(path)
    masks[0, 2, 2, 0] = 3.5
    np.save(path, masks)
    return path


def _consep_label(src: Path, name: str, **changes) -> Path:
    from scipy.io import savemat

    split_dir = "Train" if name.startswith("train") else "Test"
    path = src / "CoNSeP" / split_dir / "Labels" / f"{name}.mat"
    label = consep_label(int(name.split("_")[1]))
    for key, value in changes.items():
        if value is None:
            del label[key]
        else:
            label[key] = value
    savemat(path, label)
    return path


def _consep_missing_id(src: Path) -> Path:
    label = consep_label(2)
    return _consep_label(src, "train_2", inst_type=label["inst_type"][:5])


SEGPATH_IMG = Path("panCK_Epithelium") / "s2_HE.png"
BCSS_RGB = Path("0_Public-data-Amgad2019_0.25MPP") / "rgbs_colorNormalized" / "TCGA-A2-A0YE-DX1_xmin5_ymin6_MPP-0.2500.png"
BCSS_MASK = Path("0_Public-data-Amgad2019_0.25MPP") / "masks" / "TCGA-A1-A0SK-DX1_xmin100_ymin200_MPP-0.2500.png"

ERROR_CASES: Dict[str, tuple] = {
    # name: (make source, convert, break the source -> offending path, expected exception)
    "crag-size-mismatch": (make_crag, convert_crag, _crag_mismatch, ConversionError),
    "crag-non-label-mask": (make_crag, convert_crag, _crag_rgb_mask, ImageReadError),
    "crag-corrupt-image": (make_crag, convert_crag,
                           lambda s: _garbage(s / "CRAG" / "valid" / "Images" / "test_2.png"), ImageReadError),
    "crag-missing-mask": (make_crag, convert_crag,
                          lambda s: _unlink(s / "CRAG" / "train" / "Annotation" / "train_4.png"), ConversionError),
    "segpath-size-mismatch": (make_segpath, convert_segpath,
                              lambda s: save(np.zeros((31, 32), np.uint8), s / "panCK_Epithelium" / "s5_mask.png"),
                              ConversionError),
    "segpath-label-value": (make_segpath, convert_segpath, _segpath_value, ConversionError),
    "segpath-corrupt-image": (make_segpath, convert_segpath, lambda s: _garbage(s / SEGPATH_IMG), ImageReadError),
    "segpath-missing-mask": (make_segpath, convert_segpath,
                             lambda s: _unlink(s / "panCK_Epithelium" / "s3_mask.png"), ConversionError),
    "segpath-missing-image": (make_segpath, convert_segpath, lambda s: _unlink(s / SEGPATH_IMG), ConversionError),
    "bcss-size-mismatch": (make_bcss, lambda s, o: convert_bcss(s, o, tile=32), _bcss_mismatch, ConversionError),
    "bcss-unknown-code": (make_bcss, lambda s, o: convert_bcss(s, o, tile=32), _bcss_unknown_code, ConversionError),
    "bcss-corrupt-image": (make_bcss, lambda s, o: convert_bcss(s, o, tile=32), lambda s: _garbage(s / BCSS_RGB),
                           ImageReadError),
    "bcss-corrupt-mask": (make_bcss, lambda s, o: convert_bcss(s, o, tile=32), lambda s: _garbage(s / BCSS_MASK),
                          ImageReadError),
    "bcss-missing-mask": (make_bcss, lambda s, o: convert_bcss(s, o, tile=32), lambda s: _unlink(s / BCSS_MASK),
                          ConversionError),
    "pannuke-negative-id": (make_pannuke, convert_pannuke, _pannuke_negative, ConversionError),
    "pannuke-shape-mismatch": (make_pannuke, convert_pannuke, _pannuke_mismatch, ConversionError),
    "pannuke-pixel-range": (make_pannuke, convert_pannuke, _pannuke_pixels, ConversionError),
    "pannuke-corrupt-npy": (make_pannuke, convert_pannuke, lambda s: _garbage(_pannuke_path(s, 2, "images")),
                            ConversionError),
    "pannuke-missing-masks": (make_pannuke, convert_pannuke, lambda s: _unlink(_pannuke_path(s, 3, "masks")),
                              ConversionError),
    "pannuke-fractional-id": (make_pannuke, convert_pannuke, _pannuke_fraction, ConversionError),
    "consep-unknown-type": (make_consep, convert_consep,
                            lambda s: _consep_label(s, "train_3", inst_type=np.array([[1], [2], [9], [1], [1], [1]])),
                            ConversionError),
    "consep-id-without-type": (make_consep, convert_consep, _consep_missing_id, ConversionError),
    "consep-size-mismatch": (make_consep, convert_consep,
                             lambda s: _consep_label(s, "test_2", inst_map=np.zeros((30, 35)),
                                                     type_map=np.zeros((30, 35))), ConversionError),
    "consep-corrupt-mat": (make_consep, convert_consep,
                           lambda s: _garbage(s / "CoNSeP" / "Test" / "Labels" / "test_1.mat"), ConversionError),
    "consep-missing-mat": (make_consep, convert_consep,
                           lambda s: _unlink(s / "CoNSeP" / "Train" / "Labels" / "train_4.mat"), ConversionError),
    "consep-no-inst-type": (make_consep, convert_consep,
                            lambda s: _consep_label(s, "train_1", inst_type=None), ConversionError),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_names_the_file_and_leaves_no_output(case: str, tmp_path: Path) -> None:
    make, convert, corrupt, error = ERROR_CASES[case]
    src = make(tmp_path / "src")
    bad = corrupt(src)
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        convert(src, out)
    assert bad.name in str(info.value) and str(bad.parent) in str(info.value), str(info.value)
    assert_nothing_written(out)


def test_pannuke_refuses_pickled_arrays(tmp_path: Path) -> None:
    src = make_pannuke(tmp_path / "src")
    path = src / "Fold 1" / "images" / "fold1" / "types.npy"
    np.save(path, np.array(["Breast", 1, None], dtype=object), allow_pickle=True)
    with pytest.raises(ConversionError, match="refuses to unpickle"):
        convert_pannuke(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# ----------------------------------------------------------------------------- output folder handling

def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    src, out = make_crag(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        convert_crag(src, out)
    assert (out / "keep.txt").read_text() == "precious"
    convert_crag(src, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "meta.json").is_file()


def test_failed_overwrite_keeps_the_previous_dataset(tmp_path: Path) -> None:
    src, out = make_crag(tmp_path / "src"), tmp_path / "out"
    convert_crag(src, out)
    before = (out / "meta.json").read_bytes()
    _garbage(src / "CRAG" / "train" / "Images" / "train_1.png")
    with pytest.raises(ImageReadError):
        convert_crag(src, out, overwrite=True)
    assert (out / "meta.json").read_bytes() == before


def test_layout_writer_discards_output_without_finish(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="without LayoutWriter.finish"):
        with LayoutWriter(out, ("a", "b")) as writer:
            writer.add("x", rgb(4, 4), np.zeros((4, 4), np.uint8))
    assert_nothing_written(out)


def test_layout_writer_rejects_duplicate_stems_and_bad_labels(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="same output name 'x'"):
        with LayoutWriter(tmp_path / "o1", ("a", "b")) as writer:
            writer.add("x", rgb(4, 4), np.zeros((4, 4), np.uint8))
            writer.add("x", rgb(4, 4), np.zeros((4, 4), np.uint8))
    with pytest.raises(ConversionError, match=r"label values \[2\]"):
        with LayoutWriter(tmp_path / "o2", ("a", "b")) as writer:
            writer.add("x", rgb(4, 4), np.full((4, 4), 2, np.uint8))
    assert_nothing_written(tmp_path / "o1")
    assert_nothing_written(tmp_path / "o2")


def test_carve_val_split_properties() -> None:
    items = [f"s{i}" for i in range(10)]
    train, val = carve_val_split(items[::-1], 0.3, seed=5)
    assert len(val) == 3 and sorted(train + val) == sorted(items) and not set(train) & set(val)
    assert carve_val_split(items, 0.3, seed=5) == (train, val), "independent of input order"
    assert carve_val_split(items, 0.0, seed=5) == (sorted(items), [])
    assert carve_val_split(["only"], 0.5, seed=1) == (["only"], [])
    with pytest.raises(ValueError, match="val_fraction"):
        carve_val_split(items, 1.0, seed=1)


# ---------------------------------------------------------------------------------------------- CLIs

def load_cli(name: str):
    path = REPO / "tools" / "dataset_converters" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"cli_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI_CASES: Dict[str, tuple] = {
    "crag": (make_crag, ["--val-fraction", "0.25", "--seed", "1"]),
    "segpath": (make_segpath, ["--antibody", "panCK"]),
    "bcss": (make_bcss, ["--tile", "32", "--classes", "main"]),
    "pannuke": (make_pannuke, ["--train-folds", "1", "2", "--val-folds", "--test-folds", "3"]),
    "consep": (make_consep, ["--keep-7-types", "--val-fraction", "0.25"]),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_converts_and_reports_errors(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make, extra = CLI_CASES[name]
    src, out = make(tmp_path / "src"), tmp_path / "out"
    cli = load_cli(name)
    assert cli.main([str(src), str(out), *extra]) == 0
    assert (out / "meta.json").is_file() and (out / "splits" / "train.txt").is_file()
    assert cli.main([str(src), str(out), *extra]) == 1, "existing output without --overwrite"
    assert "exists" in capsys.readouterr().err
    assert cli.main([str(src), str(out), *extra, "--overwrite"]) == 0
    assert cli.main([str(tmp_path / "nowhere"), str(tmp_path / "o2")]) == 1
    assert str(tmp_path / "nowhere") in capsys.readouterr().err



def test_pannuke_cli_without_instances(tmp_path: Path) -> None:
    src, out = make_pannuke(tmp_path / "src"), tmp_path / "out"
    assert load_cli("pannuke").main([str(src), str(out), "--no-instances"]) == 0
    assert (out / "masks").is_dir() and not (out / "instances").exists()
    assert load_cli("pannuke").main([str(src), str(tmp_path / "with")]) == 0
    assert len(list((tmp_path / "with" / "instances").glob("*.png"))) == sum(FOLD_SIZES.values())
