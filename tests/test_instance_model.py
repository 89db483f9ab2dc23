"""Cells as objects: the instance configs (mmdet Mask2Former on the UNI ViT-Adapter) build, train, predict
full-size masks, group their parameters for layer decay like the semantic model, and run through the tools."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LEAVES = sorted((REPO / "configs" / "uni").glob("*-instance-*.py"))
DEMO = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb2-800_nuclei-instance-256x256.py"
SEMANTIC_TWIN = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb2-800_nuclei-256x256.py"
NUCLEI = REPO / "data/nuclei"


def _cfg(path: Path) -> Config:
    return Config.fromfile(str(path))


def _build(cfg_dict, scope: str = "mmdet", device: str = "cpu"):
    from mmengine.registry import MODELS

    with DefaultScope.overwrite_default_scope(scope), torch.device(device):
        return MODELS.build(copy.deepcopy(cfg_dict))


def _tool(name: str):
    """A script of tools/ as a module, loaded by path (``test`` would otherwise be the standard library's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"uniseg_tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dataset(cfg_dict, scope: str = "mmdet"):
    from mmengine.registry import DATASETS

    with DefaultScope.overwrite_default_scope(scope):
        return DATASETS.build(copy.deepcopy(cfg_dict))


def test_instance_leaves_exist():
    names = {p.name for p in LEAVES}
    assert {"mask2former_uni-adapter-l_8xb8-40k_pannuke-instance-128x128.py",
            "mask2former_uni-adapter-l_8xb2-10k_consep-instance-256x256.py",
            "mask2former_uni2-h-adapter_8xb8-40k_pannuke-instance-128x128.py", DEMO.name} <= names


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.stem)
def test_instance_leaf_builds_with_its_dataset_classes(path):
    cfg = _cfg(path)
    assert cfg.default_scope == "mmdet" and cfg.custom_imports.imports == ["uniseg"]
    things = cfg.test_dataloader.dataset.metainfo.classes
    assert cfg.train_dataloader.dataset.metainfo.classes == things
    head, fusion = cfg.model.panoptic_head, cfg.model.panoptic_fusion_head
    assert head.num_things_classes == fusion.num_things_classes == len(things)
    assert head.num_stuff_classes == fusion.num_stuff_classes == 0
    assert len(head.loss_cls.class_weight) == len(things) + 1 and head.loss_cls.class_weight[-1] == 0.1
    test_cfg = cfg.model.test_cfg
    assert test_cfg.instance_on and not test_cfg.panoptic_on and not test_cfg.semantic_on
    assert test_cfg.max_per_image == head.num_queries
    assert cfg.test_evaluator.type == "CellInstanceMetric" and cfg.test_evaluator.pred_source == "instances"
    tiny = "tiny" in cfg.model.backbone.encoder
    model = _build(cfg.model, device="cpu" if tiny else "meta")
    from mmdet.models.detectors import Mask2Former

    assert type(model).__name__ == "UniMask2Former" and isinstance(model, Mask2Former)  # mmdet's, plus slide tests
    assert model.panoptic_head.num_things_classes == len(things)
    assert model.panoptic_head.cls_embed.out_features == len(things) + 1  # + no-object
    assert model.panoptic_head.num_queries == head.num_queries
    assert list(model.backbone.out_channels) == list(head.in_channels)
    if not tiny:
        assert head.num_queries == 300
        assert cfg.model.backbone.encoder_weights == "hub"
        assert cfg.optim_wrapper.constructor == "ViTLayerDecayOptimizerConstructor"
        assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.9
        assert cfg.optim_wrapper.optimizer.lr == 2e-5


def test_instance_recipe_is_the_semantic_recipe():
    """The instance base takes backbone, pixel decoder, decoder, losses and matcher from the semantic base."""
    for suffix in ("uni", "uni2-h", "uni-tiny"):
        sem = _cfg(REPO / f"configs/_base_/models/mask2former_vit-adapter_{suffix}.py").model
        ins = _cfg(REPO / f"configs/_base_/models/mask2former-ins_vit-adapter_{suffix}.py").model
        assert ins.backbone == sem.backbone, suffix
        for key in ("in_channels", "feat_channels", "pixel_decoder", "transformer_decoder", "positional_encoding",
                    "loss_mask", "loss_dice"):
            assert ins.panoptic_head[key] == sem.decode_head[key], (suffix, key)
        assert ins.train_cfg == sem.decode_head.train_cfg, suffix
        assert ins.panoptic_head.loss_cls.loss_weight == sem.decode_head.loss_cls.loss_weight == 2.0
    assert sem.decode_head.loss_mask.loss_weight == 5.0 and sem.decode_head.loss_dice.loss_weight == 5.0


def _shared_names():
    """(registry, type) of every class the shared runtime, schedule and model bases name, and of those
    tools/train.py adds (--amp, --strategy fsdp) and the instance pipelines use."""
    runtime = _cfg(REPO / "configs/_base_/default_runtime.py")
    schedule = _cfg(REPO / "configs/_base_/schedules/schedule_40k_layer-decay.py")
    model = _cfg(REPO / "configs/_base_/models/mask2former_vit-adapter_uni.py").model
    names = [("RUNNERS", runtime.runner_type), ("RUNNERS", "UnisegFlexibleRunner"),
             ("OPTIM_WRAPPERS", schedule.optim_wrapper.type), ("OPTIM_WRAPPERS", "BF16OptimWrapper"),
             ("OPTIM_WRAPPER_CONSTRUCTORS", schedule.optim_wrapper.constructor),
             ("MODELS", model.backbone.type), ("MODELS", model.decode_head.pixel_decoder.type),
             ("TRANSFORMS", "ResampleToMPP"), ("TRANSFORMS", "Albumentations"), ("METRICS", "CellInstanceMetric")]
    names += [("HOOKS", hook.type) for hook in runtime.custom_hooks]
    names += [("HOOKS", hook.type) for hook in schedule.default_hooks.values()]
    return names


def test_uniseg_classes_resolve_by_bare_name_in_mmdet_scope():
    """The registration rule: uniseg's classes that the shared bases (and tools/train.py) name sit in mmdet's
    registries too, so those bases work unchanged under an mmdet-scoped instance config."""
    import mmdet.registry as det
    import mmseg.registry as seg

    checked = []
    for registry, name in _shared_names():
        cls = getattr(seg, registry).get(name)
        assert cls is not None, f"{name} is not in mmseg's {registry}"
        if not cls.__module__.startswith("uniseg."):
            continue  # mmengine's own classes live in the root registry both scopes fall back to
        assert getattr(det, registry).module_dict.get(name) is cls, f"{name} is not in mmdet's {registry}"
        checked.append(name)
    assert {"IterationSeedHook", "ViTLayerDecayOptimizerConstructor", "ViTAdapter", "BF16OptimWrapper"} <= set(checked)


# ---------------------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def demo_cfg():
    return _cfg(DEMO)


def _batch(cfg, split: str, n: int, pipeline=None, **dataset_kw):
    ds_cfg = copy.deepcopy(getattr(cfg, f"{split}_dataloader").dataset)
    ds_cfg.update(data_root=str(NUCLEI), **dataset_kw)
    if pipeline is not None:
        ds_cfg.pipeline = pipeline
    ds = _dataset(ds_cfg)
    return pseudo_collate([ds[i % len(ds)] for i in range(n)])


def test_tiny_instance_model_trains_and_predicts_full_size_masks(demo_cfg):
    torch.manual_seed(0)
    np.random.seed(0)
    model = _build(demo_cfg.model)
    model.train()
    data = model.data_preprocessor(_batch(demo_cfg, "train", 2), True)
    assert tuple(data["inputs"].shape[-2:]) == tuple(demo_cfg.crop_size)
    losses = model(**data, mode="loss")
    for key in ("loss_cls", "loss_mask", "loss_dice", "d0.loss_dice"):
        assert torch.isfinite(losses[key]) and losses[key] > 0, key
    loss, _ = model.parse_losses(losses)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for prefix in ("backbone.vit.blocks.0.", "backbone.interactions.", "panoptic_head.pixel_decoder.",
                   "panoptic_head.transformer_decoder.", "panoptic_head.query_feat", "panoptic_head.cls_embed"):
        reached = [g for n, g in grads.items() if n.startswith(prefix) and g is not None and g.abs().sum() > 0]
        assert reached, f"no gradient reaches {prefix}"

    # Prediction at the original size: read the 256 px quadrant as if it were 0.25 um/px through the PanNuke
    # test pipeline, so that the network sees it resampled to 128 px; masks must come back at 256 px, where
    # the ground truth was made.
    model.eval()
    pipeline = _cfg(REPO / "configs/_base_/datasets/pannuke_instance.py").test_pipeline
    batch = _batch(demo_cfg, "test", 1, pipeline=pipeline, mpp=0.25)
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        assert data["inputs"].shape[-2:] == (128, 128)
        (sample,) = model(**data, mode="predict")
    masks = sample.pred_instances.masks
    assert tuple(masks.shape) == (demo_cfg.model.test_cfg.max_per_image, 256, 256)
    assert tuple(sample.gt_instance_map.ids.shape) == (1, 256, 256) and "masks" not in sample.gt_instances
    scores = sample.pred_instances.scores
    assert ((scores >= 0) & (scores <= 1)).all() and (sample.pred_instances.labels == 0).all()


def _layer_ids(model, cfg) -> dict:
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
            type=cfg.optim_wrapper.constructor, optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(
                type="AdamW", lr=1e-3, weight_decay=0.05)), paramwise_cfg=cfg.optim_wrapper.paramwise_cfg))
    groups = constructor(model).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in groups:
        for p in group["params"]:
            assert names[id(p)] not in out, f"{names[id(p)]} in two groups"
            out[names[id(p)]] = (group["layer_id"], group["lr"], group["weight_decay"])
    return out


def test_layer_decay_groups_the_instance_head_like_the_semantic_head(demo_cfg):
    """mmdet's detector calls the head ``panoptic_head``, mmseg's segmentor ``decode_head``; the same
    parameter must land in the same layer (and weight-decay group) under either name."""
    sem_cfg = _cfg(SEMANTIC_TWIN)
    ins_model, sem_model = _build(demo_cfg.model), _build(sem_cfg.model, scope="mmseg")
    ins, sem = _layer_ids(ins_model, demo_cfg), _layer_ids(sem_model, sem_cfg)
    assert set(ins) == {n for n, p in ins_model.named_parameters() if p.requires_grad}
    depth = len(ins_model.backbone.vit.blocks)
    for name, (layer, lr, _) in ins.items():
        if name.startswith("backbone."):
            assert sem[name][0] == layer, name
        if name.startswith("backbone.vit.blocks."):
            block = int(name.split(".")[3])
            assert layer == block + 1 and lr == pytest.approx(1e-3 * 0.9 ** (depth - block)), name
    compared = 0
    for name, (layer, _, weight_decay) in ins.items():
        if name.startswith("panoptic_head."):
            twin = "decode_head." + name[len("panoptic_head."):]
            assert twin in sem, f"{name} has no counterpart {twin} in the semantic model"
            assert (layer, weight_decay) == (sem[twin][0], sem[twin][2]), f"{name}: {ins[name]}, {twin}: {sem[twin]}"
            compared += 1
    for embedding in ("query_embed", "query_feat", "level_embed", "cls_embed", "mask_embed"):
        assert any(n.startswith(f"panoptic_head.{embedding}.") for n in ins), embedding
    assert compared > 50


# ---------------------------------------------------------------------------------------------- the data
def _window_counts(ids: np.ndarray, window: int) -> np.ndarray:
    """Objects touching each ``window`` x ``window`` position (stride 1), counting an object when its
    bounding box meets the window: an upper bound of the count of objects with a pixel inside."""
    height, width = ids.shape
    nh, nw = height - window + 1, width - window + 1
    diff = np.zeros((nh + 1, nw + 1), np.int64)
    for k in np.unique(ids[ids > 0]):
        ys, xs = np.nonzero(ids == k)
        top, bottom = max(0, ys.min() - window + 1), min(nh - 1, ys.max())
        left, right = max(0, xs.min() - window + 1), min(nw - 1, xs.max())
        diff[top, left] += 1
        diff[top, right + 1] -= 1
        diff[bottom + 1, left] -= 1
        diff[bottom + 1, right + 1] += 1
    return diff.cumsum(0).cumsum(1)[:nh, :nw]


def test_demo_queries_reach_every_nucleus(demo_cfg):
    """Every training crop of data/nuclei and the held-out quadrant hold fewer nuclei than the demo has queries."""
    import json

    from uniseg.utils.imageio import read_label

    def stems(split):
        return (NUCLEI / "splits" / f"{split}.txt").read_text().split()

    def counts(split, window):
        return np.concatenate([_window_counts(read_label(NUCLEI / "instances" / f"{s}.png"), window).ravel()
                               for s in stems(split)])

    crop = demo_cfg.crop_size[0]
    train, test = counts("train", crop), counts("test", 256)
    queries = demo_cfg.model.panoptic_head.num_queries
    assert train.max() <= queries and test.max() <= demo_cfg.model.test_cfg.max_per_image
    assert np.minimum(train, queries).sum() / train.sum() == 1.0  # the fraction of nuclei within reach
    # the semantic tiny model's 16 queries would not reach them all
    assert np.minimum(train, 16).sum() / train.sum() < 0.6
    # the counts agree with those data/nuclei/README.md reports over every window of the full image
    reported = json.loads((NUCLEI / "meta.json").read_text())["nuclei_per_window"]
    for window in (128, 256):
        assert counts("train", window).max() <= reported[str(window)]["max"]
    assert counts("train", 128).max() == reported["128"]["max"] == 18
    assert test.max() == 35 and train.max() == 40


def test_semantic_twin_trains_on_the_same_pixels(demo_cfg):
    """Same seed -> the same crop and augmentation of the same image for the instance and the semantic demo,
    and the semantic nucleus mask is the union of the instance masks."""
    sem_cfg = _cfg(SEMANTIC_TWIN)
    for key in ("batch_size", "num_workers"):
        assert sem_cfg.train_dataloader[key] == demo_cfg.train_dataloader[key]
    for key in ("optim_wrapper", "param_scheduler", "train_cfg", "randomness"):
        assert sem_cfg[key] == demo_cfg[key], key
    ins_ds = _dataset(dict(demo_cfg.train_dataloader.dataset, data_root=str(NUCLEI)))
    sem_ds = _dataset(dict(sem_cfg.train_dataloader.dataset, data_root=str(NUCLEI)), scope="mmseg")
    assert [d["img_path"] for d in ins_ds.data_list] == [d["img_path"] for d in sem_ds.data_list]
    for i, seed in [(0, 1), (1, 2), (2, 3), (0, 4)]:
        np.random.seed(seed)
        ins = ins_ds[i]
        np.random.seed(seed)
        sem = sem_ds[i]
        assert torch.equal(ins["inputs"], sem["inputs"]), (i, seed)
        nucleus = sem["data_samples"].gt_sem_seg.data[0] == 1
        masks = torch.from_numpy(ins["data_samples"].gt_instances.masks.to_ndarray()).bool()
        assert len(masks) > 0 and torch.equal(masks.any(0), nucleus), (i, seed)


# ---------------------------------------------------------------------------------------------- overfitting
OVERFIT_ITERS = 80  # about 20 s of CPU time; measured bPQ about 80 after 60 iterations, 91 after 90


def test_tiny_instance_model_overfits_two_images(demo_cfg):
    """Loss falls far and the predicted nuclei match the ground truth (bPQ) on the two images it saw."""
    from mmengine.evaluator import Evaluator

    torch.manual_seed(0)
    np.random.seed(0)
    cfg = copy.deepcopy(demo_cfg)
    # two random 128 px crops without augmentation, then always the same two
    fixed = [dict(t, crop_size=(128, 128)) if t.type.endswith("RandomCrop") else t
             for t in cfg.train_pipeline if not t.type.endswith("Albumentations")]
    batch = _batch(cfg, "train", 2, pipeline=fixed)
    for sample in batch["data_samples"]:  # predict at the crop's size, where its ground truth is
        sample.set_metainfo(dict(ori_shape=sample.img_shape))
    model = _build(cfg.model)

    def score():
        model.eval()
        with torch.no_grad():
            samples = model(**model.data_preprocessor(batch, False), mode="predict")
        with DefaultScope.overwrite_default_scope("mmdet"):
            evaluator = Evaluator(dict(type="CellInstanceMetric", pair_radius=12))
        evaluator.dataset_meta = dict(classes=("nucleus", ))
        evaluator.process(samples)
        return {k.split("/")[-1]: v for k, v in evaluator.evaluate(2).items()}

    before = score()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    model.train()
    data = model.data_preprocessor(batch, True)
    for _ in range(OVERFIT_ITERS):
        loss, _ = model.parse_losses(model(**data, mode="loss"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = score()
    print(f"overfit: loss {losses[0]:.2f} -> {losses[-1]:.2f}; bPQ {before['bPQ']} -> {after['bPQ']}, "
          f"F1_d {before['F1_d']} -> {after['F1_d']}, objects {after['num_gt']} gt / {after['num_pred']} pred")
    assert np.mean(losses[-5:]) < 0.3 * losses[0]
    assert before["bPQ"] < 5.0
    assert after["bPQ"] > 60.0 and after["F1_d"] > 80.0


# ---------------------------------------------------------------------------------------------- the tools
def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    return env


@pytest.mark.slow
def test_train_and_test_tools_run_the_instance_config(tmp_path):
    """tools/train.py trains the demo instance config for a few iterations (validating once) and
    tools/test.py evaluates the checkpoint with bPQ / F1 in its summary line."""
    work = tmp_path / "work"
    train = [sys.executable, str(REPO / "tools/train.py"), str(DEMO), "--work-dir", str(work), "--cfg-options",
             "train_cfg.max_iters=4", "train_cfg.val_interval=4",
             "default_hooks.logger.interval=1", "default_hooks.checkpoint.interval=4",
             "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
             "val_dataloader.num_workers=0", "val_dataloader.persistent_workers=False"]
    proc = subprocess.run(train, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Iter(train) [4/4]" in log and "cell/bPQ" in log
    checkpoint = work / "iter_4.pth"
    assert checkpoint.is_file() and (work / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    out, show = tmp_path / "cells", tmp_path / "show"
    test = [sys.executable, str(REPO / "tools/test.py"), str(DEMO), str(checkpoint), "--work-dir",
            str(tmp_path / "test"), "--out", str(out), "--show-dir", str(show), "--cfg-options",
            "test_dataloader.num_workers=0", "test_dataloader.persistent_workers=False",
            "test_evaluator.score_thr=0.0"]  # a 4-iteration model is unsure: keep its cells so the files have rows
    proc = subprocess.run(test, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary = re.search(r"summary: bPQ (\S+)  bDQ (\S+)  bSQ (\S+)  mPQ (\S+)  F1_d (\S+)  objects_gt (\d+)  "
                        r"objects_pred (\d+)", log)
    assert summary, log[-3000:]
    assert int(summary.group(6)) == 35  # the held-out quadrant's nuclei
    # --out: the scored cells of the one test image, as an id PNG and a table of the same cells
    predicted = int(summary.group(7))
    assert predicted > 0
    ids = np.asarray(Image.open(out / "nuclei_tl.png"))
    assert ids.shape == (256, 256) and len(np.unique(ids[ids > 0])) == predicted == int(ids.max())
    rows = (out / "nuclei_tl_cells.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + predicted
    # --show-dir: the config's DetVisualizationHook drew the test image
    assert len(list(show.rglob("*.png"))) == 1, sorted(show.rglob("*"))

    # the same checkpoint through sliding windows (as the CoNSeP config tests its large tiles): same ground truth
    slide = test[:4] + ["--work-dir", str(tmp_path / "slide"), "--cfg-options", "test_dataloader.num_workers=0",
                        "test_dataloader.persistent_workers=False", "test_evaluator.score_thr=0.0",
                        "model.test_cfg.mode=slide", "model.test_cfg.crop_size=[128,128]",
                        "model.test_cfg.stride=[96,96]", "model.test_cfg.score_thr=0.0"]
    proc = subprocess.run(slide, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    windows = re.search(r"summary: bPQ (\S+) .* objects_gt (\d+)  objects_pred (\d+)", log)
    assert windows and int(windows.group(2)) == 35 and int(windows.group(3)) > 0, log[-3000:]


def test_print_summary_reports_cell_and_pixel_metrics(capsys):
    print_summary = _tool("test").print_summary  # tools/test.py
    print_summary({"cell/bPQ": 61.234, "cell/bDQ": 80.0, "cell/bSQ": 76.5, "cell/mPQ": 61.234, "cell/mPQ+": 61.2,
                   "cell/F1_d": 82.5, "cell/num_gt": 35, "cell/num_pred": 33, "cell/PQ_nucleus": 61.2})
    assert capsys.readouterr().out == ("summary: bPQ 61.23  bDQ 80.00  bSQ 76.50  mPQ 61.23  F1_d 82.50  "
                                       "objects_gt 35  objects_pred 33\n")
    print_summary({"mIoU": 70.0, "mDice": 80.0, "aAcc": 90.0})
    assert capsys.readouterr().out == "summary: mIoU 70.00  mDice 80.00  aAcc 90.00\n"


def test_demo_cells_reads_the_summary_line_and_bounds_connected_components(capsys):
    from scipy import ndimage

    from uniseg.utils.imageio import read_label

    demo, test_tool = _tool("demo_cells"), _tool("test")
    test_tool.print_summary({"cell/bPQ": 51.09, "cell/bDQ": 63.16, "cell/bSQ": 80.89, "cell/mPQ": 51.09,
                             "cell/F1_d": 70.18, "cell/num_gt": 35, "cell/num_pred": 22})
    line = capsys.readouterr().out
    assert demo.parse_cell_summary("log\n" + line, "x") == dict(bPQ=51.09, bDQ=63.16, bSQ=80.89, F1_d=70.18,
                                                                  gt=35, pred=22)
    with pytest.raises(RuntimeError, match="no cell summary"):
        demo.parse_cell_summary("summary: mIoU 70.00  mDice 80.00\n", "semantic run")

    facts = demo.held_out_facts(["nuclei_tl"])
    ids = read_label(NUCLEI / "instances/nuclei_tl.png").astype(np.int64)
    components = ndimage.label(read_label(NUCLEI / "masks/nuclei_tl.png") == 1)[1]
    cross = ndimage.generate_binary_structure(2, 1)
    touching = sum(bool(((ids > 0) & (ids != k) & ndimage.binary_dilation(ids == k, cross)).any())
                   for k in np.unique(ids[ids > 0]))
    assert (facts["total"], facts["objects"], facts["touching"]) == (35, components, touching)
    assert components < 35 and 0 < facts["bPQ"] < 100
