"""The shipped demo data: data/ihc builds through its base config, and the derivation reproduces it."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from mmengine import Config
from PIL import Image

import uniseg.datasets  # noqa: F401  (registers HistologySegDataset)
from mmseg.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
IHC = REPO / "data" / "ihc"
SVS = REPO / "data" / "wsi" / "CMU-1-Small-Region.svs"
CONFIG = REPO / "configs" / "_base_" / "datasets" / "ihc_demo.py"
STEMS = ("ihc_tl", "ihc_tr", "ihc_bl", "ihc_br")
ORIGINS = {"ihc_tl": (0, 0), "ihc_tr": (0, 256), "ihc_bl": (256, 0), "ihc_br": (256, 256)}


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def build(loader: str):
    cfg = Config.fromfile(str(CONFIG))
    dataset = cfg[loader].dataset.copy()
    dataset.data_root = str(IHC)
    return DATASETS.build(dataset)


def split(name: str) -> list:
    return (IHC / "splits" / f"{name}.txt").read_text().split()


def test_splits_are_disjoint_quadrants() -> None:
    assert split("train") == ["ihc_tl", "ihc_tr", "ihc_bl"]
    assert split("val") == ["ihc_br"] and split("test") == ["ihc_br"]
    source = read(IHC / "source.png")
    assert source.shape == (512, 512, 3) and source.dtype == np.uint8
    for stem, (top, left) in ORIGINS.items():
        assert np.array_equal(read(IHC / "images" / f"{stem}.png"), source[top:top + 256, left:left + 256])


def test_masks_hold_three_classes_and_all_occur_in_train() -> None:
    for stem in STEMS:
        mask = read(IHC / "masks" / f"{stem}.png")
        assert mask.shape == (256, 256) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 1, 2}
    train = np.concatenate([read(IHC / "masks" / f"{s}.png").ravel() for s in split("train")])
    fractions = np.bincount(train, minlength=3) / train.size
    assert np.all(fractions > 0.05), f"every class should be well represented in train: {fractions}"


def test_meta_json_documents_provenance() -> None:
    meta = json.loads((IHC / "meta.json").read_text())
    assert meta["classes"] == ["background", "nuclei", "dab_positive"]
    assert meta["mpp"] is None
    assert "not expert" in meta["labels"]
    assert "immunohistochemistry" in meta["source"] and meta["licence"]
    assert meta["regenerate"] == "python tools/make_demo_data.py --overwrite"
    pixels = read(IHC / "source.png")
    assert meta["source_pixels_sha256"] == hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def test_builds_through_the_demo_config() -> None:
    train, val, test = (build(f"{s}_dataloader") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (3, 1, 1)
    assert train.metainfo["classes"] == ("background", "nuclei", "dab_positive")
    assert train.get_data_info(0)["mpp"] is None
    sample = train[0]
    assert tuple(sample["inputs"].shape) == (3, 128, 128)
    assert tuple(sample["data_samples"].gt_sem_seg.data.shape) == (1, 128, 128)
    whole = test[0]
    assert tuple(whole["inputs"].shape) == (3, 256, 256)
    gt = whole["data_samples"].gt_sem_seg.data[0].numpy()
    assert np.array_equal(gt, read(IHC / "masks" / "ihc_br.png"))


def test_derivation_reproduces_the_shipped_files(tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="re-deriving the masks needs scikit-image (dev extra)")
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "tools" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ihc"
    assert module.main(["--out", str(out)]) == 0
    for stem in STEMS:
        assert np.array_equal(read(out / "masks" / f"{stem}.png"), read(IHC / "masks" / f"{stem}.png")), stem
        assert (out / "masks" / f"{stem}.png").read_bytes() == (IHC / "masks" / f"{stem}.png").read_bytes()
        assert (out / "images" / f"{stem}.png").read_bytes() == (IHC / "images" / f"{stem}.png").read_bytes()
    assert (out / "source.png").read_bytes() == (IHC / "source.png").read_bytes()
    for name in ("train", "val", "test"):
        assert (out / "splits" / f"{name}.txt").read_bytes() == (IHC / "splits" / f"{name}.txt").read_bytes()
    assert module.main(["--out", str(out)]) == 1, "refuses to replace without --overwrite"


def test_shipped_whole_slide_file() -> None:
    import tifffile

    assert hashlib.sha256(SVS.read_bytes()).hexdigest() == (
        "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7")
    with tifffile.TiffFile(SVS) as tif:
        level0 = tif.pages[0]
        assert level0.shape == (2967, 2220, 3) and level0.is_tiled
        assert "MPP = 0.4990" in level0.description and "AppMag = 20" in level0.description


def test_data_folder_stays_small() -> None:
    total = sum(p.stat().st_size for p in (REPO / "data").rglob("*") if p.is_file())
    assert total < 4 * 1024 * 1024, f"data/ is {total / 2**20:.1f} MiB"
