#!/usr/bin/env python
"""Pipelined window reading: windows/s of the inferencer with reader/writer threads against the
synchronous loop, on the same real H&E slide, model and sinks, in one process.

    python benchmarks/bench_pipeline.py                          # CMU-1 region, level 0, workers 0 1 2
    python benchmarks/bench_pipeline.py --mpp 1.0 --workers 0 2 4 --device cuda

The baseline is the loop the inferencer had before the pipeline (one strip per tile row read in the
model's thread, windows sliced from it, bands written by the model's thread), kept here only as the
reference. Every run writes the same outputs (indexed PNG mask and overlay JPEG) into a temporary
folder; the pipelined masks are checked to equal the baseline's. Time is split into read (decoding
windows: summed over reader threads, so it may exceed the wall time), model (forward passes and
blending in the model's thread) and write (the sinks), plus how long the model waited for windows
and for the writer. The model is the config's with random weights (no checkpoint needed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_CONFIG = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb4-1k_ihc-demo-128x128.py"
SOURCE = REPO / "data/wsi/CMU-1-Small-Region.svs"
FORMATS = ("png", "overlay")


class _Collect:
    """Keeps the label rows of a run (to compare runs); not timed as a sink."""

    def __init__(self):
        self.rows = {}

    def write_band(self, y0, labels, probs=None, image=None):
        self.rows[y0] = labels.copy()

    def labels(self) -> np.ndarray:
        return np.concatenate([self.rows[k] for k in sorted(self.rows)])


def _open_sinks(seg, source, out: Path, name: str):
    from uniseg.export import ExportContext, build_sinks

    ctx = ExportContext(source.width, source.height, seg.classes, seg.palette)
    sinks = build_sinks(list(FORMATS), out, name)
    for sink in sinks:
        sink.open(ctx)
    return sinks


def run_baseline(inferencer, source, sinks) -> dict:
    """The synchronous loop as it was before the pipeline (reference only), timed by phase."""
    import torch

    from uniseg.inference.tiling import TileGrid, blend_window

    width, height = source.width, source.height
    grid = TileGrid(width, height, inferencer.tile, inferencer.stride)
    th, tw = grid.tile_height, grid.tile_width
    device = inferencer.device
    weights = torch.from_numpy(blend_window(inferencer.window_kind, th, tw)).to(device)
    band_scores = torch.zeros(inferencer.num_classes, th, width, device=device)
    band_weight = torch.zeros(th, width, device=device)
    cols = grid.col_starts
    t = dict(read=0.0, model=0.0, write=0.0)
    windows = 0
    start = time.perf_counter()
    for y0, finished in grid.rows():
        t0 = time.perf_counter()
        strip = source.read(0, y0, width, th)
        t1 = time.perf_counter()
        t["read"] += t1 - t0
        for i in range(0, len(cols), inferencer.batch_size):
            xs = cols[i:i + inferencer.batch_size]
            tiles = np.stack([strip[:, x:x + tw] for x in xs])
            scores = inferencer.predict_tiles(tiles)
            for x, s in zip(xs, scores):
                band_scores[:, :, x:x + tw] += s * weights
                band_weight[:, x:x + tw] += weights
            windows += len(xs)
        n = finished - y0
        labels, probs = inferencer._finish(band_scores[:, :n], band_weight[:n])
        t2 = time.perf_counter()
        t["model"] += t2 - t1
        for sink in sinks:
            sink.write_band(y0, labels, probs=probs, image=strip[:n])
        t["write"] += time.perf_counter() - t2
        band_scores = torch.roll(band_scores, -n, dims=1)
        band_weight = torch.roll(band_weight, -n, dims=0)
        band_scores[:, th - n:] = 0
        band_weight[th - n:] = 0
    seconds = time.perf_counter() - start
    return dict(windows=windows, seconds=seconds, **t, read_wait=t["read"], write_wait=t["write"])


def run_pipelined(inferencer, source, sinks) -> dict:
    stats = inferencer.run(source, sinks, progress=False)
    tm = stats.times
    return dict(windows=stats.tiles, seconds=stats.seconds, read=tm.read, model=tm.model, write=tm.write,
                read_wait=tm.read_wait, write_wait=tm.write_wait)


def _median(runs) -> dict:
    """Per figure, the median over repeats (windows/s from the median seconds)."""
    out = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
    out["windows"] = runs[0]["windows"]
    out["windows_per_second"] = out["windows"] / out["seconds"]
    out["repeats"] = len(runs)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", default=str(SOURCE))
    p.add_argument("--mpp", type=float, default=None, help="resample to this resolution (default: level 0)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--tile", type=int, nargs=2, default=None, help="default: the config's crop_size")
    p.add_argument("--stride", type=int, nargs=2, default=None, help="default: the config's stride")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (as tools/infer.py --amp)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeat", type=int, default=1, help="run the whole sequence this often; report medians")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import torch

    from bench_large_roi import _random_segmentor
    from uniseg.inference import SlidingWindowInferencer
    from uniseg.io import RegionSource, open_slide

    if args.threads:
        torch.set_num_threads(args.threads)
    seg = _random_segmentor(args.config, args.device)
    tile = tuple(args.tile) if args.tile else seg.tile
    stride = tuple(args.stride) if args.stride else seg.stride
    out = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    results, masks = {}, {}
    with open_slide(args.slide) as reader:
        source = RegionSource.open(reader, target_mpp=args.mpp) if args.mpp else RegionSource.open(reader)
        runs = [("synchronous", None)] + [(f"workers={w}", w) for w in args.workers]
        warm = SlidingWindowInferencer(seg.model, seg.num_classes, tile=tile, stride=stride,
                                       batch_size=args.batch_size, amp=args.amp)
        warm.predict_tiles(np.zeros((args.batch_size, *tile, 3), np.uint8))  # first-call costs out of the figures
        for name, workers in [run for _ in range(args.repeat) for run in runs]:
            inferencer = SlidingWindowInferencer(seg.model, seg.num_classes, tile=tile, stride=stride,
                                                 batch_size=args.batch_size, num_workers=workers or 0,
                                                 with_probs=False, amp=args.amp)
            collect = _Collect()
            sinks = _open_sinks(seg, source, out, name.replace("=", "")) + [collect]
            cuda = torch.device(args.device).type == "cuda"
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                result = (run_baseline if workers is None else run_pipelined)(inferencer, source, sinks)
            if cuda:  # peak GPU memory of the run, the model's weights included
                result["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
            for sink in sinks[:-1]:
                sink.close()
            results.setdefault(name, []).append(result)
            masks[name] = collect.labels()
    results = {name: _median(rs) for name, rs in results.items()}
    base = results["synchronous"]
    for name, r in results.items():
        r["ratio"] = r["windows_per_second"] / base["windows_per_second"]
        r["identical"] = bool(np.array_equal(masks[name], masks["synchronous"]))
    print(f"\n{Path(args.slide).name}: {source.width} x {source.height} px, tile {tile}, stride {stride}, "
          f"batch {args.batch_size}, device {args.device}, {os.cpu_count()} CPUs, outputs {', '.join(FORMATS)}, "
          f"median of {args.repeat}{', bf16' if args.amp else ''}")
    print(f"{'run':12} {'windows':>7} {'s':>7} {'win/s':>7} {'ratio':>6} {'read':>6} {'model':>6} {'write':>6} "
          f"{'r-wait':>6} {'w-wait':>6} identical")
    for name, r in results.items():
        print(f"{name:12} {r['windows']:7d} {r['seconds']:7.2f} {r['windows_per_second']:7.2f} {r['ratio']:6.2f} "
              f"{r['read']:6.2f} {r['model']:6.2f} {r['write']:6.2f} {r['read_wait']:6.2f} {r['write_wait']:6.2f} "
              f"{r['identical']}" + (f"  GPU peak {r['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in r else ""))
    summary = dict(slide=str(args.slide), size=[source.width, source.height], tile=list(tile), stride=list(stride),
                   batch_size=args.batch_size, device=args.device, amp=args.amp, cpus=os.cpu_count(),
                   results=results)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
