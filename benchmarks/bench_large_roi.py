#!/usr/bin/env python
"""Large-ROI inference: uniseg's streaming inferencer against mmseg's ``slide_inference``.

Both run the same model, ROI and window settings, each in a fresh subprocess so that peak memory is
measured cleanly: the figure reported is the peak resident memory (and CUDA memory on a GPU) that the
inference adds above the process's own baseline once the model is loaded. The parent prints both,
their ratio, windows per second, and the pixel agreement of the two label masks.

    python benchmarks/bench_large_roi.py --size 8192                  # both methods
    python benchmarks/bench_large_roi.py --size 32768 --methods uniseg --tile 512 --stride 384

The ROI is real H&E: the CMU-1 slide region in data/wsi, mirrored to fill the requested size and
written once as a tiled TIFF (cached under --cache). mmseg's path needs the ROI as one tensor; at
32768 px its requirement is printed instead of run (it cannot fit in this machine's memory).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CONFIG = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb4-1k_ihc-demo-128x128.py"
SOURCE = REPO / "data/wsi/CMU-1-Small-Region.svs"


# ---------------------------------------------------------------------------------------------- ROI
def make_roi(size: int, cache: Path) -> Path:
    """A size x size tiled TIFF of real H&E pixels (the CMU region, mirrored), written tile by tile."""
    import tifffile

    from uniseg.io import open_slide
    from uniseg.utils.atomic import atomic_output

    path = cache / f"roi_{size}.tif"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with open_slide(SOURCE) as slide:
        w, h = slide.dimensions
        base = slide.read_region(0, 0, w, h)
    # mirror tiling: [A, flip(A)] so that neighbouring copies meet without seams
    period = np.concatenate([base, base[:, ::-1]], 1)
    period = np.concatenate([period, period[::-1]], 0)
    ph, pw = period.shape[:2]
    tile = 512

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                ys = (np.arange(y, y + tile) % ph)[:, None]
                xs = (np.arange(x, x + tile) % pw)[None, :]
                yield period[ys, xs]

    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                         photometric="rgb", compression="zlib", bigtiff=True,
                         resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return path


# ---------------------------------------------------------------------------------------------- child
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def run_child(args) -> None:
    import torch

    from uniseg.inference.api import load_segmentor

    torch.set_num_threads(args.threads)
    seg = load_segmentor(args.config, args.checkpoint, device=args.device) if args.checkpoint else \
        _random_segmentor(args.config, args.device)
    tile, stride = tuple(args.tile or seg.tile), tuple(args.stride or seg.stride)
    # Warm up (allocator, lazy inits) on one window so that the baseline includes what any run needs.
    with torch.no_grad():
        x = torch.zeros(1, 3, *tile, device=args.device)
        seg.model.encode_decode(x, [dict(img_shape=tile, pad_shape=tile, ori_shape=tile)])
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    base = _rss_bytes()
    # ru_maxrss is a lifetime maximum that cannot be reset: when model loading already peaked above the
    # baseline, sample the resident size during the run instead.
    sampler = _PeakSampler() if _peak_rss_bytes() > base else None

    start = time.perf_counter()
    if args.method == "uniseg":
        windows = _run_uniseg(seg, args, tile, stride)
    else:
        windows = _run_mmseg(seg, args, tile, stride)
    seconds = time.perf_counter() - start
    peak = sampler.stop() if sampler else _peak_rss_bytes()
    result = dict(method=args.method, seconds=seconds, windows=windows, windows_per_second=windows / seconds,
                  rss_added=peak - base, rss_base=base, peak_measured_by="sampling" if sampler else "ru_maxrss")
    if cuda:
        result["cuda_added"] = torch.cuda.max_memory_allocated() - cuda_base
    Path(args.result).write_text(json.dumps(result))


class _PeakSampler:
    def __init__(self, interval: float = 0.002):
        import threading

        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _loop(self, interval):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_bytes())


def _random_segmentor(config: str, device: str):
    """The config's model with random weights (no trained checkpoint needed to compare the two paths)."""
    import torch
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import uniseg  # noqa: F401
    from uniseg.inference.api import Segmentor, _class_names
    from uniseg.utils.palette import resolve_palette

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(config)
    cfg.model.backbone.encoder_weights = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device).eval()
    classes, palette = _class_names(cfg, {}, config, "semantic")
    test_cfg = cfg.model.test_cfg
    return Segmentor(model, classes, resolve_palette(classes, palette), tuple(test_cfg.crop_size),
                     tuple(test_cfg.stride), 0.5, config)


def _run_uniseg(seg, args, tile, stride) -> int:
    from uniseg.export import ExportContext, build_sinks
    from uniseg.inference import SlidingWindowInferencer
    from uniseg.io import RegionSource, open_slide

    with open_slide(args.roi) as reader:
        source = RegionSource.open(reader, None, None, 0)
        ctx = ExportContext(source.width, source.height, seg.classes, seg.palette)
        (sink,) = build_sinks(["tiff"], args.workdir, "uniseg")
        sink.open(ctx)
        inferencer = SlidingWindowInferencer(seg.model, seg.num_classes, tile=tile, stride=stride,
                                             batch_size=args.batch_size, window="uniform", amp=args.amp)
        stats = inferencer.run(source, [sink], progress=False)
        sink.close()
    return stats.tiles


def _run_mmseg(seg, args, tile, stride) -> int:
    """mmseg's slide_inference on the ROI as one tensor, normalised like its data preprocessor."""
    import tifffile
    import torch
    from mmengine.config import ConfigDict
    from mmseg.models.segmentors import EncoderDecoder

    from uniseg.inference.tiling import TileGrid

    model = seg.model
    img = tifffile.imread(args.roi)
    with torch.no_grad():
        x = torch.from_numpy(img).to(args.device).permute(2, 0, 1)[None].float()
        del img
        x = (x - model.data_preprocessor.mean.view(1, 3, 1, 1)) / model.data_preprocessor.std.view(1, 3, 1, 1)
        model.test_cfg = ConfigDict(mode="slide", crop_size=tile, stride=stride)
        h, w = x.shape[-2:]
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))
        logits = EncoderDecoder.slide_inference(model, x, [meta])
        labels = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
    np.save(Path(args.workdir) / "mmseg_labels.npy", labels)
    return len(TileGrid(w, h, tile, stride))


# ---------------------------------------------------------------------------------------------- parent
def mmseg_bytes_needed(size: int, num_classes: int) -> int:
    """What mmseg's slide_inference holds at once: float input, scores, count matrix, one padded window."""
    pixels = size * size
    return pixels * (3 * 4 + num_classes * 4 + 4 + num_classes * 4)


def agreement(workdir: Path) -> float:
    import tifffile

    ours = tifffile.imread(workdir / "uniseg_mask.tif", level=0)
    theirs = np.load(workdir / "mmseg_labels.npy", mmap_mode="r")
    same = 0
    for y in range(0, ours.shape[0], 1024):
        same += int(np.count_nonzero(ours[y:y + 1024] == theirs[y:y + 1024]))
    return same / ours.size


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--checkpoint", default=None, help="trained weights (default: the config's model, random init)")
    p.add_argument("--methods", nargs="+", default=["uniseg", "mmseg"], choices=["uniseg", "mmseg"])
    p.add_argument("--tile", type=int, nargs=2, default=None, help="default: the config's crop_size")
    p.add_argument("--stride", type=int, nargs=2, default=None, help="default: the config's stride")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (uniseg)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for uniseg's path")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "uniseg_bench"))
    p.add_argument("--json", help="also write the results here")
    # internal: one measurement in a fresh process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--roi", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(args)
        return

    roi = make_roi(args.size, Path(args.cache))
    workdir = Path(tempfile.mkdtemp(prefix="bench_roi_", dir=args.cache))
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    results = {}
    from mmengine.config import Config

    num_classes = Config.fromfile(args.config).model.decode_head.num_classes
    for method in args.methods:
        need = mmseg_bytes_needed(args.size, num_classes)
        if method == "mmseg" and need > 0.8 * total_ram:
            print(f"mmseg slide_inference at {args.size}^2 needs at least {need / 2**30:.1f} GiB for its tensors "
                  f"(machine: {total_ram / 2**30:.1f} GiB): not run")
            continue
        result_file = workdir / f"{method}.json"
        cmd = [sys.executable, __file__, "--child", "--method", method, "--roi", str(roi), "--workdir", str(workdir),
               "--result", str(result_file), "--config", args.config, "--batch-size", str(args.batch_size),
               "--device", args.device, "--threads", str(args.threads)]
        cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        cmd += ["--tile", *map(str, args.tile)] if args.tile else []
        cmd += ["--stride", *map(str, args.stride)] if args.stride else []
        cmd += ["--amp"] if args.amp else []
        print(f"running {method} on a {args.size} x {args.size} ROI ...", flush=True)
        subprocess.run(cmd, check=True)
        results[method] = json.loads(result_file.read_text())

    print(f"\nROI {args.size} x {args.size}, config {Path(args.config).name}, device {args.device}")
    print(f"{'method':8} {'windows':>8} {'seconds':>9} {'windows/s':>10} {'RSS added':>11} {'CUDA added':>11}")
    for r in results.values():
        cuda = f"{r['cuda_added'] / 2**20:9.0f} MiB" if "cuda_added" in r else f"{'-':>11}"
        print(f"{r['method']:8} {r['windows']:8d} {r['seconds']:9.1f} {r['windows_per_second']:10.2f} "
              f"{r['rss_added'] / 2**20:7.0f} MiB {cuda}")
    summary = dict(size=args.size, results=results)
    if {"uniseg", "mmseg"} <= results.keys():
        u, m = results["uniseg"], results["mmseg"]
        summary["memory_ratio"] = u["rss_added"] / max(m["rss_added"], 1)
        summary["throughput_ratio"] = u["windows_per_second"] / m["windows_per_second"]
        summary["pixel_agreement"] = agreement(workdir)
        print(f"memory added, uniseg / mmseg: {summary['memory_ratio']:.4f} (target <= 0.1)")
        if "cuda_added" in u and "cuda_added" in m:
            summary["cuda_memory_ratio"] = u["cuda_added"] / max(m["cuda_added"], 1)
            print(f"CUDA memory added, uniseg / mmseg: {summary['cuda_memory_ratio']:.4f}")
        print(f"throughput, uniseg / mmseg: {summary['throughput_ratio']:.2f} (target >= 1)")
        print(f"pixel agreement of the two masks: {summary['pixel_agreement']:.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
