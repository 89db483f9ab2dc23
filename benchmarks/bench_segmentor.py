#!/usr/bin/env python
"""Training-step cost of the UNI + ViT-Adapter + Mask2Former segmentor: time and peak memory per image.

``python benchmarks/bench_segmentor.py [--configs tiny uni uni2-h] [--with-cp both|on|off] [--json OUT]``

For each model configuration and gradient-checkpointing setting (``backbone.with_cp``) the script
builds the segmentor from the project's configs, runs warm-up steps and then times forward + backward
of the training loss on a synthetic batch. The optimizer step is *not* included (no optimizer is
built): the figures are what the model itself costs, comparable across optimizers. It prints

* the parameter counts (total, encoder ``backbone.vit``, adapter = rest of the backbone, head),
* seconds per image (mean step wall time / batch size),
* peak memory per image above what the model holds before the step (so activations, gradients and
  workspace; the step's peak / batch size),
* ratios: with vs without checkpointing, and each configuration vs the first one of ``--configs``.

Each (configuration, with_cp) case runs in its own subprocess, so one case's allocator caches and
peak never leak into another's, and a case killed for memory leaves the others' results intact.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
``memory_allocated()`` at that moment. On CPU the resident set size: the kernel's high-water mark
(VmHWM) is reset through ``/proc/self/clear_refs`` just before the measured steps and read after them;
where the kernel refuses that, a thread samples ``/proc/self/statm``. Free heap memory is returned to
the system (``malloc_trim``) before the baseline is taken, so memory that glibc kept from the warm-up
does not hide in the baseline.

Steps run with subnormal floats flushed to zero, as in training (``FlushDenormalHook``); the previous
setting is restored after the measurement.

Figures are only comparable within one run on one machine; they are a benchmark, never a test.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

__all__ = [
    "ModelVariant", "VARIANTS", "default_steps", "variant_model_cfg", "build_segmentor", "count_parameters",
    "synthetic_batch", "PeakMemoryMeter", "measure_case", "add_ratios", "format_table", "run_benchmark", "main",
]

_MODELS_DIR = "configs/_base_/models"


@dataclass(frozen=True)
class ModelVariant:
    """A model configuration to benchmark: a config file plus overrides of its ``model`` dict."""

    name: str
    config: str  # relative to the repository root
    overrides: Mapping[str, Any] = field(default_factory=dict)  # dotted keys under ``model``
    description: str = ""


VARIANTS: Dict[str, ModelVariant] = {
    v.name: v for v in (
        ModelVariant("tiny", f"{_MODELS_DIR}/mask2former_vit-adapter_uni-tiny.py", {},
                     "uni-tiny encoder (ViT width 64, depth 4) + adapter + 64-channel Mask2Former"),
        # No UNI weights offline; random weights cost the same time and memory.
        ModelVariant("uni", f"{_MODELS_DIR}/mask2former_vit-adapter_uni.py",
                     {"backbone.encoder_weights": None},
                     "UNI ViT-L/16 + adapter + 1024-channel Mask2Former (the training configuration)"),
        ModelVariant("uni2-h", f"{_MODELS_DIR}/mask2former_vit-adapter_uni.py",
                     {"backbone.encoder_weights": None, "backbone.encoder": "uni2-h",
                      "backbone.deform_num_heads": 24, "decode_head.in_channels": [1536] * 4},
                     "UNI2-h ViT-H/14 (width 1536) + adapter + Mask2Former"),
    )
}

NUM_CLASSES = 3


# ----------------------------------------------------------------------------------------------------------
# Model and data


def default_steps(config: str, device: str) -> Tuple[int, int]:
    """(warm-up, measured) steps when the command line gives none.

    A full-size step on a 2-core CPU takes minutes, so there a single cold step is measured; its time
    includes one-off costs (kernel selection, first-touch page faults) and reads high.
    """
    if device == "cuda":
        return 3, 10
    return (1, 3) if config == "tiny" else (0, 1)


def _register_modules() -> None:
    from mmseg.utils import register_all_modules

    import uniseg  # noqa: F401  (registers uniseg's modules into mmseg's registries)

    register_all_modules(init_default_scope=True)


def variant_model_cfg(config: str, with_cp: bool, size: int, num_classes: int = NUM_CLASSES):
    """The ``model`` config of a :data:`VARIANTS` entry for ``size`` x ``size`` training crops."""
    from mmengine.config import Config

    if config not in VARIANTS:
        raise ValueError(f"unknown config {config!r}; known: {', '.join(VARIANTS)}")
    variant = VARIANTS[config]
    cfg = Config.fromfile(str(REPO_ROOT / variant.config))
    options = {f"model.{k}": v for k, v in variant.overrides.items()}
    options.update({
        "model.backbone.with_cp": with_cp,
        "model.data_preprocessor.size": (size, size),
        "model.decode_head.num_classes": num_classes,
        "model.decode_head.loss_cls.class_weight": [1.0] * num_classes + [0.1],
    })
    cfg.merge_from_dict(options)
    return cfg.model


def build_segmentor(config: str, with_cp: bool, size: int, num_classes: int = NUM_CLASSES):
    """Build and initialise the segmentor of :func:`variant_model_cfg`."""
    from mmseg.registry import MODELS

    _register_modules()
    model = MODELS.build(variant_model_cfg(config, with_cp, size, num_classes))
    model.init_weights()
    return model


def count_parameters(model) -> Dict[str, int]:
    """Parameter counts: total, encoder (``backbone.vit``), adapter (rest of the backbone), head."""
    def n(module) -> int:
        return sum(p.numel() for p in module.parameters())

    backbone, encoder = n(model.backbone), n(model.backbone.vit)
    return dict(total=n(model), encoder=encoder, adapter=backbone - encoder, head=n(model.decode_head))


def synthetic_batch(batch_size: int, size: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> Dict[str, list]:
    """A batch with every class present as a few blobs, so the head's matcher has real masks to assign."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = max(size // 8, 2)
    inputs, samples = [], []
    for _ in range(batch_size):
        label = torch.zeros(size, size, dtype=torch.long)
        for cls in range(1, num_classes):
            for _blob in range(2):
                cy, cx = torch.randint(0, size, (2,), generator=g).tolist()
                label[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = cls
        img = (label.float() * (200.0 / num_classes) + 30.0).expand(3, size, size).clone()
        img += torch.randn(3, size, size, generator=g) * 10
        inputs.append(img.clamp(0, 255).to(torch.uint8))
        sample = SegDataSample(gt_sem_seg=PixelData(data=label[None]))
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


# ----------------------------------------------------------------------------------------------------------
# Peak memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    if match is None:
        raise OSError("/proc/self/status has no VmHWM line")
    return int(match.group(1)) * 1024


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give glibc's free heap memory back to the system (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemoryMeter:
    """Peak memory of a block of work above the memory in use when it starts.

    ``method``: ``"auto"`` (CUDA allocator on a GPU; on CPU the VmHWM reset, else sampling), or one of
    ``"cuda"``, ``"vmhwm"``, ``"rss_sampling"``. The chosen one is in :attr:`method` after :meth:`start`
    (``"unavailable"`` without ``/proc``, with :meth:`stop` returning ``None``).
    """

    def __init__(self, device: str, method: str = "auto", interval_s: float = 0.002):
        self.device = device
        self.method = method
        self.interval_s = interval_s
        self.baseline_bytes = 0
        self._peak_rss = 0
        self._stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.method = "cuda"
            self.baseline_bytes = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return
        _malloc_trim()
        if not os.path.exists("/proc/self/statm"):
            self.method = "unavailable"
            return
        self.baseline_bytes = _rss_bytes()
        if self.method in ("auto", "vmhwm") and _reset_hwm():
            self.method = "vmhwm"
            return
        if self.method == "vmhwm":
            raise OSError("PeakMemoryMeter: /proc/self/clear_refs refused the peak-RSS reset (method='vmhwm')")
        self.method = "rss_sampling"
        self._peak_rss = self.baseline_bytes
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop_event.is_set():
            self._peak_rss = max(self._peak_rss, _rss_bytes())
            self._stop_event.wait(self.interval_s)

    def stop(self) -> Optional[int]:
        """Peak bytes above the baseline since :meth:`start`."""
        if self.method == "cuda":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline_bytes
        if self.method == "vmhwm":
            return max(0, _hwm_bytes() - self.baseline_bytes)
        if self.method == "rss_sampling":
            self._stop_event.set()
            assert self._thread is not None
            self._thread.join()
            self._peak_rss = max(self._peak_rss, _rss_bytes())
            return max(0, self._peak_rss - self.baseline_bytes)
        return None


# ----------------------------------------------------------------------------------------------------------
# One case


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def measure_case(config: str, with_cp: bool, *, size: int = 512, batch_size: int = 1, warmup: int = 1,
                 iters: int = 1, device: str = "cpu", amp: str = "none", num_classes: int = NUM_CLASSES,
                 seed: int = 0, memory_method: str = "auto",
                 log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Build one configuration and measure forward + backward of its training loss, in this process.

    Returns a JSON-ready dict: the case's settings, ``params`` (see :func:`count_parameters`),
    ``step_times_s``, ``time_per_image_s``, ``peak_memory_bytes`` / ``peak_memory_per_image_bytes``
    (``None`` where unmeasurable), ``memory_method``, ``gradient_bytes`` (the gradients' share of the peak,
    computed), ``loss`` of the last step, and the environment.
    """
    import torch

    if amp not in ("bf16", "none"):
        raise ValueError(f"amp must be 'bf16' or 'none', got {amp!r}")
    if size < 32 or batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need size >= 32, batch_size >= 1, iters >= 1, warmup >= 0; got size={size}, "
                         f"batch_size={batch_size}, iters={iters}, warmup={warmup}")
    log = log or (lambda msg: None)
    dev = torch.device(device)

    torch.manual_seed(seed)
    model = build_segmentor(config, with_cp, size, num_classes).to(dev).train()
    params = count_parameters(model)
    # Computed, not measured: the share of the peak that is gradients, independent of the batch size.
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    data = model.data_preprocessor(synthetic_batch(batch_size, size, num_classes, seed), True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def autocast():
        if amp == "bf16":
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    meter = PeakMemoryMeter(str(dev), memory_method)
    times: List[float] = []
    loss = None
    for step in range(warmup + iters):
        model.zero_grad(set_to_none=True)  # as mmengine's OptimWrapper: gradients are part of the step's peak
        if step == warmup:
            meter.start()
        sync()
        t0 = time.perf_counter()
        with autocast():
            losses = model(**data, mode="loss")
        loss = sum(v for k, v in losses.items() if "loss" in k)
        loss.backward()
        sync()
        elapsed = time.perf_counter() - t0
        phase = "warm-up" if step < warmup else "measured"
        log(f"{config} with_cp={with_cp}: {phase} step {step + 1}/{warmup + iters}: {elapsed:.3f} s")
        if step >= warmup:
            times.append(elapsed)
    peak = meter.stop()
    final_loss = float(loss.detach())
    if final_loss != final_loss or final_loss in (float("inf"), float("-inf")):
        raise FloatingPointError(f"{config} with_cp={with_cp}: loss is {final_loss}")

    mean = sum(times) / len(times)
    return dict(
        config=config, with_cp=with_cp, size=size, batch_size=batch_size, warmup=warmup, iters=iters,
        device=str(dev), device_name=_device_name(str(dev)), amp=amp, params=params,
        step_times_s=times, time_per_image_s=mean / batch_size,
        peak_memory_bytes=peak, peak_memory_per_image_bytes=None if peak is None else peak / batch_size,
        memory_method=meter.method, baseline_memory_bytes=meter.baseline_bytes, gradient_bytes=grad_bytes,
        loss=final_loss,
        torch_version=torch.__version__, threads=torch.get_num_threads(), pid=os.getpid(),
        optimizer_step=False,
    )


# ----------------------------------------------------------------------------------------------------------
# Ratios and report


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def add_ratios(cases: List[Dict[str, Any]], baseline_config: Optional[str]) -> None:
    """Add, in place, ratios to the matching successful case.

    ``time_ratio_vs_no_cp`` / ``memory_ratio_vs_no_cp`` on a ``with_cp=True`` case: against the same
    config without checkpointing. ``time_ratio_vs_baseline`` / ``memory_ratio_vs_baseline`` on a case
    of another config: against ``baseline_config`` with the same ``with_cp``. ``None`` where the partner
    case is missing or failed.
    """
    ok = {(c["config"], c["with_cp"]): c for c in cases if "error" not in c}
    for case in ok.values():
        if case["with_cp"]:
            off = ok.get((case["config"], False))
            case["time_ratio_vs_no_cp"] = _ratio(case["time_per_image_s"], off and off["time_per_image_s"])
            case["memory_ratio_vs_no_cp"] = _ratio(case["peak_memory_per_image_bytes"],
                                                   off and off["peak_memory_per_image_bytes"])
        if baseline_config is not None and case["config"] != baseline_config:
            base = ok.get((baseline_config, case["with_cp"]))
            case["time_ratio_vs_baseline"] = _ratio(case["time_per_image_s"], base and base["time_per_image_s"])
            case["memory_ratio_vs_baseline"] = _ratio(case["peak_memory_per_image_bytes"],
                                                      base and base["peak_memory_per_image_bytes"])


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(cases: Sequence[Dict[str, Any]], baseline_config: Optional[str]) -> str:
    """A plain-text table of the cases (with the ratios of :func:`add_ratios`)."""
    base = baseline_config or "baseline"
    header = ["config", "with_cp", "params M (total/enc/adapter/head)", "s/image", "peak MiB/image",
              "time x no-cp", "mem x no-cp", f"time x {base}", f"mem x {base}"]
    rows = [header]
    for c in cases:
        if "error" in c:
            rows.append([c["config"], str(c["with_cp"]), f"FAILED: {c['error']}"])
            continue
        p = c["params"]
        mem = c["peak_memory_per_image_bytes"]
        rows.append([
            c["config"], str(c["with_cp"]),
            "/".join(f"{p[k] / 1e6:.1f}" for k in ("total", "encoder", "adapter", "head")),
            f"{c['time_per_image_s']:.3f}", _fmt(None if mem is None else mem / 2 ** 20, ".0f"),
            _fmt(c.get("time_ratio_vs_no_cp"), ".2f"), _fmt(c.get("memory_ratio_vs_no_cp"), ".2f"),
            _fmt(c.get("time_ratio_vs_baseline"), ".2f"), _fmt(c.get("memory_ratio_vs_baseline"), ".2f"),
        ])
    widths = [max(len(r[i]) for r in rows if i < len(r) and len(r) == len(header)) for i in range(len(header))]
    lines = []
    for r in rows:
        if len(r) != len(header):  # a failed case: the message takes the rest of the line
            lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]]))
        else:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Orchestration: one subprocess per case


def _run_isolated(case: Dict[str, Any], timeout: Optional[float], threads: Optional[int]) -> Dict[str, Any]:
    """Run one case in a fresh interpreter; its output goes to this process's stderr."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_segmentor-") as tmp:
        out = Path(tmp) / "case.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-out", str(out),
               "--configs", case["config"], "--with-cp", "on" if case["with_cp"] else "off",
               "--size", str(case["size"]), "--batch-size", str(case["batch_size"]),
               "--warmup", str(case["warmup"]), "--iters", str(case["iters"]),
               "--device", case["device"], "--amp", case["amp"]]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        try:
            proc = subprocess.run(cmd, stdout=2, stderr=2, timeout=timeout, cwd=str(REPO_ROOT))
        except subprocess.TimeoutExpired:
            return dict(case, error=f"timed out after {timeout:g} s")
        if out.exists():
            return json.loads(out.read_text())
        reason = "killed by signal %d (out of memory?)" % -proc.returncode if proc.returncode < 0 \
            else f"exit code {proc.returncode}"
        return dict(case, error=f"worker {reason}; see its output above")


def run_benchmark(configs: Sequence[str], with_cp: Sequence[bool], *, size: int, batch_size: int,
                  warmup: Optional[int], iters: Optional[int], device: str, amp: str,
                  threads: Optional[int] = None, timeout: Optional[float] = None,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure every (config, with_cp) case in its own subprocess; returns ``{"meta", "cases"}``."""
    cases = []
    for config in configs:
        w, n = default_steps(config, device)
        for cp_flag in with_cp:
            case = dict(config=config, with_cp=cp_flag, size=size, batch_size=batch_size,
                        warmup=w if warmup is None else warmup, iters=n if iters is None else iters,
                        device=device, amp=amp)
            log(f"[bench_segmentor] {config} with_cp={cp_flag}: {case['warmup']} warm-up + "
                f"{case['iters']} measured steps at {size}x{size}, batch {batch_size}, {device}, amp={amp}")
            t0 = time.perf_counter()
            result = _run_isolated(case, timeout, threads)
            log(f"[bench_segmentor] {config} with_cp={cp_flag}: "
                f"{'FAILED: ' + result['error'] if 'error' in result else 'done'} "
                f"({time.perf_counter() - t0:.0f} s)")
            cases.append(result)
    baseline = configs[0] if configs else None
    add_ratios(cases, baseline)
    first_ok = next((c for c in cases if "error" not in c), {})
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=platform.node(), cpu_count=os.cpu_count(), device=device,
        device_name=first_ok.get("device_name"), torch_version=first_ok.get("torch_version"),
        threads=first_ok.get("threads"), amp=amp, size=size, batch_size=batch_size,
        baseline_config=baseline, optimizer_step=False,
        timing="forward + backward of the training loss (optimizer step excluded), mean wall time / batch size",
        memory="peak above the memory held before the step (activations, gradients, workspace) / batch size",
    )
    return dict(meta=meta, cases=cases)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Forward+backward time and peak memory per image of the uniseg segmentor.")
    parser.add_argument("--configs", nargs="+", choices=list(VARIANTS), default=["tiny", "uni"],
                        help="model configurations, ratios taken against the first (default: tiny uni): "
                             + "; ".join(f"{v.name}: {v.description}" for v in VARIANTS.values()))
    parser.add_argument("--size", type=int, default=512, help="square crop size in pixels (default 512)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iters", type=int, default=None,
                        help="measured steps (default: 10 on CUDA; on CPU 3 for tiny, 1 for full-size models)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up steps (default: 3 on CUDA; on CPU 1 for tiny, 0 for full-size models)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--amp", choices=["bf16", "none"], default=None,
                        help="bf16 autocast of the forward pass (default: bf16 on CUDA, none on CPU)")
    parser.add_argument("--with-cp", choices=["both", "on", "off"], default="both",
                        help="gradient checkpointing of the backbone (model.backbone.with_cp)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of each case (torch.set_num_threads; default: torch's own, all cores). "
                             "On a CPU other jobs share, 1 avoids threads waiting for a descheduled peer")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed per case; a case over it is reported as failed")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)  # internal: run one case, write its JSON
    args = parser.parse_args(argv)
    if args.size < 32 or args.batch_size < 1:
        parser.error(f"--size must be >= 32 and --batch-size >= 1 (got {args.size}, {args.batch_size})")
    if (args.iters is not None and args.iters < 1) or (args.warmup is not None and args.warmup < 0):
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1 (got {args.threads})")
    return args


def _worker(args: argparse.Namespace) -> int:
    from mmengine.logging import MMLogger

    from uniseg.utils import atomic_output

    # The current logger decides what init_weights reports; at WARNING it skips one line per parameter.
    MMLogger.get_instance("bench_segmentor", log_level="WARNING")

    config = args.configs[0]
    warmup, iters = default_steps(config, args.device)
    case = dict(config=config, with_cp=args.with_cp == "on", size=args.size, batch_size=args.batch_size,
                warmup=warmup if args.warmup is None else args.warmup,
                iters=iters if args.iters is None else args.iters, device=args.device, amp=args.amp)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from uniseg.engine.hooks import flush_denormal

    try:
        with flush_denormal():  # as FlushDenormalHook in training: subnormals would slow CPU steps 10x
            result = measure_case(**case, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        code = 0
    except Exception as exc:  # reported in the parent's table; the traceback goes to the log
        traceback.print_exc()
        result, code = dict(case, error=f"{type(exc).__name__}: {exc}"), 1
    with atomic_output(args.worker_out) as tmp:
        tmp.write_text(json.dumps(result))
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.amp is None:
        args.amp = "bf16" if args.device == "cuda" else "none"
    if args.worker_out:
        return _worker(args)

    modes = {"both": [False, True], "on": [True], "off": [False]}[args.with_cp]
    configs = list(dict.fromkeys(args.configs))
    report = run_benchmark(configs, modes, size=args.size, batch_size=args.batch_size, warmup=args.warmup,
                           iters=args.iters, device=args.device, amp=args.amp, threads=args.threads,
                           timeout=args.timeout,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    meta = report["meta"]
    env = (f"{meta['device_name']}, torch {meta['torch_version']}, {meta['threads']} threads"
           if meta["device_name"] else "no case completed")
    print(f"uniseg segmentor, forward+backward (optimizer step excluded), {meta['size']}x{meta['size']}, "
          f"batch {meta['batch_size']}, {meta['device']} ({env}), amp={meta['amp']}, {meta['date']}")
    print(format_table(report["cases"], meta["baseline_config"]))
    if args.json:
        from uniseg.utils import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return 1 if any("error" in c for c in report["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
