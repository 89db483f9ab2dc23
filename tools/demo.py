#!/usr/bin/env python
"""The embedded demo: fine-tune, evaluate against the majority-class baseline, segment a held-out image.

Runs entirely offline on the data shipped in data/ihc (one real IHC image; masks derived by colour
deconvolution, see data/README.md) with the tiny UNI-layout model on a CPU:

1. ``tools/train.py`` fine-tunes the demo config (three quadrants for training);
2. ``tools/test.py`` predicts the held-out quadrant; the per-class IoU/Dice table is printed beside the
   majority-class baseline (always predict the most frequent training class), same metric code;
3. ``tools/infer.py`` segments the held-out image with the large-ROI inferencer and exports an indexed
   PNG, a pyramidal TIFF, QuPath GeoJSON and an overlay.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
CONFIG = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb4-1k_ihc-demo-128x128.py"
DATA = REPO / "data/ihc"


def _run(step: str, cmd: list) -> None:
    print(f"\n=== {step}\n$ {' '.join(str(c) for c in cmd)}", flush=True)
    subprocess.run([str(c) for c in cmd], cwd=REPO, check=True)


def _read_split(name: str) -> list:
    return [s.strip() for s in (DATA / "splits" / f"{name}.txt").read_text().splitlines() if s.strip()]


def _labels(path: Path) -> np.ndarray:
    from uniseg.utils.imageio import read_label

    return read_label(path)


def per_class_metrics(preds: list, gts: list, num_classes: int, ignore_index: int = 255) -> dict:
    """IoU and Dice per class with mmseg's own accumulation (areas summed over images, then divided)."""
    import torch
    from mmseg.evaluation.metrics import IoUMetric

    areas = [IoUMetric.intersect_and_union(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g.astype(np.int64)),
                                           num_classes, ignore_index) for p, g in zip(preds, gts)]
    inter, union, pred_area, label_area = (sum(a[i] for a in areas) for i in range(4))
    iou = (inter / union).numpy() * 100
    dice = (2 * inter / (pred_area + label_area)).numpy() * 100
    return dict(iou=iou, dice=dice, mIoU=float(np.nanmean(iou)), mDice=float(np.nanmean(dice)))


def report(classes, model_m: dict, base_m: dict, base_class: str) -> str:
    lines = [f"held-out evaluation ({', '.join(_read_split('test'))}); baseline = always '{base_class}'",
             f"| {'class':<14} | {'IoU model':>9} | {'IoU base':>8} | {'Dice model':>10} | {'Dice base':>9} |",
             f"|{'-' * 16}|{'-' * 11}|{'-' * 10}|{'-' * 12}|{'-' * 11}|"]
    fmt = lambda v: "  nan" if np.isnan(v) else f"{v:5.2f}"  # noqa: E731
    for i, name in enumerate(classes):
        lines.append(f"| {name:<14} | {fmt(model_m['iou'][i]):>9} | {fmt(base_m['iou'][i]):>8} | "
                     f"{fmt(model_m['dice'][i]):>10} | {fmt(base_m['dice'][i]):>9} |")
    lines.append(f"| {'mean':<14} | {model_m['mIoU']:9.2f} | {base_m['mIoU']:8.2f} | {model_m['mDice']:10.2f} | "
                 f"{base_m['mDice']:9.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default=str(REPO / "work_dirs" / "demo"))
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    py = sys.executable
    start = time.time()

    # 1. fine-tune
    train = [py, REPO / "tools/train.py", CONFIG, "--work-dir", work]
    if args.iters:
        from uniseg.engine.launch import schedule_overrides

        train += ["--cfg-options", *schedule_overrides(args.iters)]
    if args.resume:
        train += ["--resume"]
    _run("1/3 fine-tune the tiny UNI + ViT-Adapter + Mask2Former on data/ihc (CPU)", train)
    checkpoint = Path((work / "last_checkpoint").read_text().strip())

    # 2. evaluate on the held-out quadrant, beside the majority-class baseline
    pred_dir = work / "test_predictions"
    _run("2/3 evaluate on the held-out quadrant", [py, REPO / "tools/test.py", CONFIG, checkpoint, "--work-dir",
                                                    work / "test", "--out", pred_dir, "--show-dir", work / "test"])
    meta = json.loads((DATA / "meta.json").read_text())
    classes = meta["classes"]
    train_counts = np.zeros(len(classes), np.int64)
    for stem in _read_split("train"):
        train_counts += np.bincount(_labels(DATA / "masks" / f"{stem}.png").ravel(), minlength=256)[:len(classes)]
    majority = int(train_counts.argmax())
    gts = [_labels(DATA / "masks" / f"{s}.png") for s in _read_split("test")]
    preds = [_labels(pred_dir / f"{s}.png") for s in _read_split("test")]
    model_m = per_class_metrics(preds, gts, len(classes))
    base_m = per_class_metrics([np.full_like(g, majority) for g in gts], gts, len(classes))
    table = report(classes, model_m, base_m, classes[majority])

    # 3. large-ROI inference and export on the held-out image
    infer_dir = work / "inference"
    _run("3/3 segment the held-out image with the large-ROI inferencer and export it",
         [py, REPO / "tools/infer.py", CONFIG, checkpoint, DATA / "images" / f"{_read_split('test')[0]}.png",
          "--out", infer_dir, "--formats", "png", "tiff", "geojson", "overlay", "--no-progress"])

    print("\n" + table)
    verdict = "above" if model_m["mDice"] > base_m["mDice"] else "NOT above"
    print(f"\nmDice {model_m['mDice']:.2f} is {verdict} the majority-class baseline's {base_m['mDice']:.2f}.")
    print(f"\nEverything is in {work}:")
    print(f"  checkpoint       {checkpoint}")
    print(f"  training logs    {work}/<timestamp>/ (TensorBoard: tensorboard --logdir {work})")
    print(f"  val overlays     {work}/<timestamp>/vis_data/vis_image/")
    print(f"  test overlays    {work / 'test'}/vis_data/vis_image/ (image + ground truth | prediction)")
    print(f"  test masks       {pred_dir}/")
    print(f"  exported outputs {infer_dir}/ (PNG, pyramidal TIFF, GeoJSON for QuPath, overlay)")
    print("Masks in data/ihc are derived by colour deconvolution, not expert labels (see data/README.md).")
    print(f"Demo finished in {(time.time() - start) / 60:.1f} min.")
    (work / "demo_results.md").write_text(table + "\n")
    return 0 if model_m["mDice"] > base_m["mDice"] else 1


if __name__ == "__main__":
    sys.exit(main())
