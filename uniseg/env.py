"""Is this environment able to run uniseg? ``python -m uniseg.env [--json]`` or ``python tools/check_env.py``.

The OpenMMLab stack breaks in ways that only show late: mmcv without compiled ops (``mmcv-lite``)
fails at the first ``import mmseg.models``, ops compiled against another torch fail with undefined
symbols or worse, and a CPU-only build on a GPU node silently falls back to a slow deformable
attention. This module checks each of these up front and says, per problem, what to run.

Errors (exit status 1) are things that stop uniseg from working; warnings (exit status 0) are
things that work but differ from what was tested or run slower than they should.

Only the standard library is imported at module level, so the check still reports when torch or
mmcv is broken; ``tools/check_env.py`` loads this file without importing the ``uniseg`` package,
whose import needs the very stack being checked.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "TESTED_MATRIX", "PACKAGES", "Problem", "EnvReport", "collect", "format_report", "main",
    "probe_package", "probe_torch", "probe_mmcv_ops", "probe_deform_attn", "check_deform_attn_kernel",
    "probe_build_marker", "default_marker_path", "expected_build_tag", "probe_setup_plan", "DEFORM_ATTN_PATHS",
]

# The tested stack, keyed by distribution name. Must agree with tools/setup_env.sh (torch, torchvision,
# mmcv) and requirements/stack.txt (the rest); tests/test_env.py checks that it does.
TESTED_MATRIX: Dict[str, str] = {
    "torch": "2.9.1",
    "torchvision": "0.24.1",
    "mmcv": "2.1.0",
    "mmengine": "0.10.7",
    "mmsegmentation": "1.2.2",
    "mmdet": "3.3.0",
    "timm": "1.0.31",
    "albumentations": "2.0.8",
    "numpy": "2.4.6",
    "opencv-python": "5.0.0.93",
}

SETUP_CMD = "bash tools/setup_env.sh"
MARKER_NAME = ".uniseg-mmcv-build"
STAMP_NAME = ".uniseg-env-stamp"
# Written by tools/setup_env.sh next to the marker: its CUDA decision (tools/cuda_build_plan.py --json), and the
# decision's key plus the compiler log when the CUDA build of mmcv failed and the CPU ops were built instead.
PLAN_NAME = ".uniseg-cuda-plan.json"
CUDA_FAILED_NAME = ".uniseg-mmcv-cuda-failed"
# Where uniseg's deformable attention runs (uniseg.models.layers.deform_attn.use_compiled_kernel decides).
DEFORM_ATTN_PATHS = {
    "cuda-kernel": "mmcv's compiled CUDA kernel",
    "pytorch-gpu": "uniseg's PyTorch path on the GPU (mmcv has no CUDA ops; slower)",
    "pytorch-cpu": "uniseg's PyTorch path on CPU (no GPU visible)",
    "unavailable": "unavailable (mmcv.ops does not import)",
}
_NO_CUDA = ("not available", "", None)


@dataclass(frozen=True)
class Package:
    """A package the check imports: how it is imported, installed, and whether uniseg needs it."""

    label: str
    module: str
    distributions: Tuple[str, ...]
    required: bool = True
    tested_as: Optional[str] = None  # key in TESTED_MATRIX
    note: str = ""  # shown when an optional package is missing


PACKAGES: Tuple[Package, ...] = (
    Package("torch", "torch", ("torch",), tested_as="torch"),
    Package("torchvision", "torchvision", ("torchvision",), tested_as="torchvision"),
    Package("mmcv", "mmcv", ("mmcv", "mmcv-full", "mmcv-lite"), tested_as="mmcv"),
    Package("mmengine", "mmengine", ("mmengine",), tested_as="mmengine"),
    Package("mmsegmentation", "mmseg", ("mmsegmentation",), tested_as="mmsegmentation"),
    Package("mmdet", "mmdet", ("mmdet",), tested_as="mmdet"),
    Package("timm", "timm", ("timm",), tested_as="timm"),
    Package("albumentations", "albumentations", ("albumentations",), tested_as="albumentations"),
    Package("numpy", "numpy", ("numpy",), tested_as="numpy"),
    Package("opencv", "cv2", ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                              "opencv-contrib-python-headless"), tested_as="opencv-python"),
    Package("tifffile", "tifffile", ("tifffile",)),
    # openslide-python with the native library from openslide-bin: vendor formats (.ndpi, .mrxs, .scn, ...).
    Package("openslide", "openslide", ("openslide-python",)),
    # Last: importing uniseg imports (and registers into) everything above.
    Package("uniseg", "uniseg", ("uniseg",)),
)


@dataclass
class Problem:
    level: str  # "error" | "warning"
    message: str


@dataclass
class EnvReport:
    python: Dict[str, Any]
    platform: str
    packages: Dict[str, Dict[str, Any]]
    torch: Dict[str, Any]
    mmcv_ops: Dict[str, Any]
    deform_attn: Dict[str, Any]
    build_marker: Dict[str, Any]
    setup_plan: Dict[str, Any]
    tested_matrix: Dict[str, str] = field(default_factory=lambda: dict(TESTED_MATRIX))
    problems: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)

    def to_dict(self) -> Dict[str, Any]:
        return {"ok": self.ok, **dataclasses.asdict(self)}


# ----------------------------------------------------------------------------------------- probes
def _public(version: Optional[str]) -> Optional[str]:
    """``2.9.1+cu128`` -> ``2.9.1``: local build labels do not change the API or the ABI tag."""
    return version.split("+", 1)[0] if version else version


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _uniseg_version_from_source() -> Optional[str]:
    """The version of the checkout this file belongs to, without importing the package."""
    import runpy

    try:
        return runpy.run_path(str(Path(__file__).with_name("version.py")))["__version__"]
    except Exception:  # noqa: BLE001 - a broken version file just leaves the version unknown
        return None


def probe_package(pkg: Package) -> Dict[str, Any]:
    """Import ``pkg`` and read its version and installed distribution."""
    info: Dict[str, Any] = {"version": None, "distribution": None, "distribution_version": None,
                            "importable": False, "missing": False, "error": None, "required": pkg.required}
    for dist in pkg.distributions:
        try:
            info["distribution_version"] = importlib.metadata.version(dist)
            info["distribution"] = dist
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        module = importlib.import_module(pkg.module)
    except Exception as exc:  # noqa: BLE001 - any import failure is something to report
        info["error"] = _error_text(exc)
        info["missing"] = isinstance(exc, ModuleNotFoundError) and exc.name == pkg.module
    else:
        info["importable"] = True
        info["version"] = getattr(module, "__version__", None)
    if info["version"] is None:
        info["version"] = (_uniseg_version_from_source() if pkg.module == "uniseg" else None) \
            or info["distribution_version"]
    return info


def probe_torch() -> Dict[str, Any]:
    """torch's CUDA build and the GPUs it can see."""
    info: Dict[str, Any] = {"version": None, "cuda_build": None, "cuda_available": False, "devices": [],
                            "capabilities": [], "error": None}
    try:
        import torch

        info["version"] = torch.__version__
        info["cuda_build"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            for i in range(torch.cuda.device_count()):
                info["devices"].append(torch.cuda.get_device_name(i))
                info["capabilities"].append(".".join(map(str, torch.cuda.get_device_capability(i))))
    except Exception as exc:  # noqa: BLE001
        info["error"] = _error_text(exc)
    return info


def probe_mmcv_ops() -> Dict[str, Any]:
    """Whether ``mmcv.ops`` imports with its compiled extension, and what that extension was built with."""
    info: Dict[str, Any] = {"compiled": False, "extension_file_present": False, "extension": None,
                            "compiler": None, "cuda_version": None, "cuda_ops": False, "error": None}
    try:
        info["extension_file_present"] = importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        pass
    try:
        ops = importlib.import_module("mmcv.ops")  # imports mmcv._ext through mmcv's ext_loader
        ext = importlib.import_module("mmcv._ext")
    except Exception as exc:  # noqa: BLE001
        info["error"] = _error_text(exc)
        return info
    info["compiled"] = True
    info["extension"] = getattr(ext, "__file__", None)
    try:
        info["compiler"] = ops.get_compiler_version()
        info["cuda_version"] = ops.get_compiling_cuda_version()
    except Exception as exc:  # noqa: BLE001
        info["error"] = _error_text(exc)
    info["cuda_ops"] = info["cuda_version"] not in _NO_CUDA
    return info


def check_deform_attn_kernel(device: Any) -> Tuple[bool, Optional[float], Optional[str]]:
    """Run mmcv's compiled deformable attention once on ``device``; compare it with mmcv's PyTorch path.

    Returns ``(ok, max_abs_diff, error)``. Only CUDA has a compiled kernel in mmcv 2.1.0; on CPU the call
    fails, which the tests use to exercise this function without a GPU.
    """
    try:
        import torch
        from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                      multi_scale_deformable_attn_pytorch)

        gen = torch.Generator().manual_seed(0)
        heads, channels, queries, levels, points = 2, 8, 3, 2, 2
        shapes = torch.tensor([[4, 4], [2, 2]], device=device)
        level_start = torch.tensor([0, 16], device=device)
        value = torch.rand(1, 20, heads, channels, generator=gen).to(device)
        locations = torch.rand(1, queries, heads, levels, points, 2, generator=gen).to(device)
        weights = torch.rand(1, queries, heads, levels * points, generator=gen).softmax(-1)
        weights = weights.view(1, queries, heads, levels, points).to(device)
        ref = multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)
        out = MultiScaleDeformableAttnFunction.apply(value, shapes, level_start, locations, weights, 64)
        diff = float((out - ref).abs().max())
    except Exception as exc:  # noqa: BLE001 - a missing kernel or a CUDA error is the finding
        return False, None, _error_text(exc)
    if diff >= 1e-4:
        return False, diff, f"result differs from the PyTorch reference by {diff:.3g}"
    return True, diff, None


def probe_deform_attn(ops: Dict[str, Any], torch_info: Dict[str, Any]) -> Dict[str, Any]:
    """Which path uniseg's deformable attention takes here (a key of ``DEFORM_ATTN_PATHS``), and whether
    mmcv's kernel computes the right thing on a GPU.

    ``cuda_call_ok`` is None when the call was not attempted (no GPU visible, or mmcv has no CUDA ops).
    """
    on_gpu = bool(torch_info.get("cuda_available"))
    path = ("unavailable" if not ops.get("compiled") else "pytorch-cpu" if not on_gpu
            else "cuda-kernel" if ops.get("cuda_ops") else "pytorch-gpu")
    info: Dict[str, Any] = {"path": path, "cuda_kernel": bool(ops.get("cuda_ops")), "cuda_call_ok": None,
                            "max_abs_diff": None, "error": None}
    if ops.get("compiled") and info["cuda_kernel"] and torch_info.get("cuda_available"):
        info["cuda_call_ok"], info["max_abs_diff"], info["error"] = check_deform_attn_kernel("cuda")
    return info


def default_marker_path() -> Path:
    """tools/setup_env.sh records which torch mmcv's ops were built for in the environment's root."""
    return Path(sys.prefix) / MARKER_NAME


def expected_build_tag(torch_version: str, cuda: bool) -> str:
    """The tag tools/setup_env.sh would write for this interpreter: ``torch2.9.1-cpu-cp311-x86_64``."""
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    return f"torch{_public(torch_version)}-{'cuda' if cuda else 'cpu'}-{py}-{platform.machine()}"


_TAG_RE = re.compile(r"^torch(?P<torch>[^-]+)-(?P<variant>cpu|cuda)-(?P<python>cp\d+)-(?P<arch>\S+)$")


def probe_build_marker(path: Path) -> Dict[str, Any]:
    """Read and parse the build marker; absent when mmcv was not installed by tools/setup_env.sh."""
    info: Dict[str, Any] = {"path": str(path), "present": path.is_file(), "tag": None, "parsed": None}
    if info["present"]:
        info["tag"] = path.read_text(encoding="utf-8", errors="replace").strip()
        match = _TAG_RE.match(info["tag"])
        info["parsed"] = match.groupdict() if match else None
    return info


def probe_setup_plan(marker_path: Path) -> Dict[str, Any]:
    """The CUDA decision tools/setup_env.sh recorded next to the marker, and whether its CUDA build failed."""
    path = marker_path.with_name(PLAN_NAME)
    info: Dict[str, Any] = {"path": str(path), "present": path.is_file(), "action": None, "reason_code": None,
                            "why": None, "fix": None, "key": None, "error": None,
                            "cuda_build_failed": False, "cuda_build_log": None}
    if info["present"]:
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
            info.update({k: plan.get(k) for k in ("action", "reason_code", "why", "fix", "key")})
        except (OSError, ValueError, AttributeError) as exc:
            info["error"] = _error_text(exc)
    failed = marker_path.with_name(CUDA_FAILED_NAME)
    if failed.is_file():
        lines = failed.read_text(encoding="utf-8", errors="replace").splitlines() + ["", ""]
        # A record from an earlier decision (another toolkit, torch or GPU) says nothing about this build.
        info["cuda_build_failed"] = not info["key"] or lines[0].strip() == info["key"]
        info["cuda_build_log"] = lines[1].strip() or None
    return info


# ------------------------------------------------------------------------------------- diagnosis
def _setup_command(venv: Path, settings: str = "") -> str:
    """``bash tools/setup_env.sh`` with the settings that make it work on ``venv`` (not always the repo's)."""
    if venv != Path(__file__).resolve().parents[1] / ".venv":
        settings = f"UNISEG_VENV={venv} {settings}"
    return f"{settings.strip()} {SETUP_CMD}".strip()


def _why_no_cuda_ops(plan: Dict[str, Any], venv: Path) -> Tuple[str, str]:
    """``(why, fix)`` for mmcv without CUDA ops on a GPU machine, from what the set-up recorded."""
    force = _setup_command(venv, "UNISEG_CUDA=1")
    if plan.get("cuda_build_failed"):
        return (f"its CUDA build failed during set-up (log: {plan['cuda_build_log']})",
                f"fix the compiler error at the end of that log, then `{force}` retries the CUDA build")
    code = plan.get("reason_code")
    if plan.get("action") == "cpu" and code == "no-gpu":
        return ("the set-up saw no GPU (`nvidia-smi -L` listed none where it ran)",
                f"run `{_setup_command(venv)}` where the GPU is visible, or `{force}`")
    if plan.get("action") == "cpu" and code == "disabled":
        return "the set-up ran with UNISEG_CUDA=0", f"`{_setup_command(venv, 'UNISEG_CUDA=auto')}`"
    if plan.get("action") == "cpu" and plan.get("why"):
        return (f"the set-up could not build them: {plan['why']}",
                f"{plan.get('fix') or 'see the set-up output'}, then run `{_setup_command(venv)}`")
    return ("mmcv was not built with CUDA ops by tools/setup_env.sh",
            f"`{force}` builds them, or says why it cannot")


def _diagnose(packages: Dict[str, Dict[str, Any]], torch_info: Dict[str, Any], ops: Dict[str, Any],
              msda: Dict[str, Any], marker: Dict[str, Any], plan: Optional[Dict[str, Any]] = None) -> List[Problem]:
    problems: List[Problem] = []
    err = lambda msg: problems.append(Problem("error", msg))  # noqa: E731
    warn = lambda msg: problems.append(Problem("warning", msg))  # noqa: E731

    mmcv = packages.get("mmcv", {})
    for pkg in PACKAGES:
        info = packages[pkg.label]
        if info["importable"] or not pkg.required or pkg.label == "uniseg":
            continue
        if info["missing"]:
            err(f"{pkg.label} is not installed: run `{SETUP_CMD}`")
        else:
            err(f"{pkg.label} is installed but does not import ({info['error']}): run `{SETUP_CMD}`")

    stamp = Path(marker["path"]).with_name(STAMP_NAME)
    if mmcv.get("importable") and not ops["compiled"]:
        if not ops["extension_file_present"] or mmcv.get("distribution") == "mmcv-lite":
            err(f"mmcv is installed without compiled ops (mmcv-lite?): `import mmcv.ops` fails ({ops['error']}); "
                f"run `{SETUP_CMD}` to build mmcv {TESTED_MATRIX['mmcv']} with its ops")
        else:
            err(f"mmcv's compiled ops do not load ({ops['error']}); they were probably built against another "
                f"torch: rebuild with `{SETUP_CMD}`")

    parsed = marker.get("parsed")
    torch_version = _public(torch_info.get("version"))
    if marker["present"] and parsed is None:
        warn(f"{marker['path']}: unrecognised build marker {marker['tag']!r}; `rm -f {stamp} && {SETUP_CMD}` "
             f"checks the build and rewrites it")
    elif parsed and torch_version:
        built = parsed["torch"]
        if built != torch_version:
            err(f"mmcv ops were built against torch {built} but torch {torch_version} is installed: rebuild them "
                f"with `UNISEG_TORCH={torch_version} {SETUP_CMD}`, or return to torch {built} with "
                f"`rm -f {stamp} && UNISEG_TORCH={built} {SETUP_CMD}`")
        py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        if parsed["python"] != py or parsed["arch"] != platform.machine():
            err(f"mmcv ops were built for {parsed['python']}/{parsed['arch']} but this is {py}/{platform.machine()}: "
                f"rebuild with `rm -f {stamp} {marker['path']} && {SETUP_CMD}`")
        if parsed["variant"] == "cuda" and ops["compiled"] and not ops["cuda_ops"]:
            warn(f"{marker['path']} records a CUDA build but the installed mmcv has no CUDA ops (reinstalled "
                 f"by hand?): rebuild with `rm -f {stamp} {marker['path']} && UNISEG_CUDA=1 {SETUP_CMD}`")

    if torch_info.get("cuda_available") and ops["compiled"]:
        if not ops["cuda_ops"]:
            why, fix = _why_no_cuda_ops(plan or {}, stamp.parent)
            warn(f"a GPU is visible but mmcv has no CUDA ops, so deformable attention runs uniseg's PyTorch path on "
                 f"the GPU (slower): {why}; fix: {fix}")
        elif msda["cuda_call_ok"] is False:
            arch = ";".join(sorted(set(torch_info.get("capabilities") or []))) or "<compute capability>"
            tag = marker.get("tag") or expected_build_tag(torch_info["version"], cuda=True)
            err(f"mmcv's CUDA deformable attention fails on {', '.join(torch_info['devices'])} ({msda['error']}): "
                f"rebuild for this GPU with `rm -rf {stamp} {marker['path']} .cache/wheels/{tag} && "
                f"TORCH_CUDA_ARCH_LIST='{arch}' UNISEG_CUDA=1 {SETUP_CMD}`")

    uniseg = packages.get("uniseg")
    if uniseg is not None and not uniseg["importable"]:
        if any(p.level == "error" for p in problems):
            err(f"uniseg does not import ({uniseg['error']}); fix the errors above first")
        else:
            err(f"uniseg does not import ({uniseg['error']}): run `{SETUP_CMD}` (it installs uniseg in editable mode)")

    differ = []
    for pkg in PACKAGES:
        info = packages[pkg.label]
        if pkg.tested_as is None or not (info["importable"] or info["distribution_version"]):
            continue
        have = _public(info["distribution_version"] or info["version"])
        if have != TESTED_MATRIX[pkg.tested_as]:
            differ.append(f"{pkg.tested_as} {have} (tested {TESTED_MATRIX[pkg.tested_as]})")
    if differ:
        # The script skips all work while its stamp matches, so the stamp goes first.
        setup = _setup_command(stamp.parent)
        warn(f"versions differ from the tested matrix: {', '.join(differ)}; `rm -f {stamp} && {setup}` "
             f"installs the tested versions")
    return problems


def collect(marker_path: Optional[Path] = None) -> EnvReport:
    """Run every probe and diagnose the result."""
    packages = {pkg.label: probe_package(pkg) for pkg in PACKAGES}
    torch_info = probe_torch()
    if packages["mmcv"]["importable"]:
        ops = probe_mmcv_ops()
    else:
        ops = {"compiled": False, "extension_file_present": False, "extension": None, "compiler": None,
               "cuda_version": None, "cuda_ops": False, "error": packages["mmcv"]["error"]}
    msda = probe_deform_attn(ops, torch_info)
    marker_path = marker_path if marker_path is not None else default_marker_path()
    marker = probe_build_marker(marker_path)
    plan = probe_setup_plan(marker_path)
    report = EnvReport(
        python={"version": platform.python_version(), "implementation": platform.python_implementation(),
                "executable": sys.executable, "prefix": sys.prefix},
        platform=platform.platform(), packages=packages, torch=torch_info, mmcv_ops=ops, deform_attn=msda,
        build_marker=marker, setup_plan=plan)
    report.problems = _diagnose(packages, torch_info, ops, msda, marker, plan)
    return report


# ---------------------------------------------------------------------------------------- output
def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def format_report(report: EnvReport) -> str:
    """Human-readable report: one line per component, then the problems and a verdict."""
    rows: List[Tuple[str, str]] = [
        ("python", f"{report.python['version']} ({report.python['executable']})"),
        ("platform", report.platform),
    ]
    t = report.torch
    for pkg in PACKAGES:
        info = report.packages[pkg.label]
        if info["importable"]:
            text = str(info["version"])
            if info["distribution"] and info["distribution_version"] not in (None, info["version"]) \
                    and _public(info["distribution_version"]) != _public(info["version"]):
                text += f" ({info['distribution']} {info['distribution_version']})"
        elif info["missing"]:
            text = "not installed" + (f" ({pkg.note})" if pkg.note else "")
        else:
            text = f"does not import: {info['error']}"
        if pkg.label == "torch" and info["importable"]:
            gpus = ", ".join(t["devices"]) if t["devices"] else "none visible"
            text += f"; CUDA build: {t['cuda_build'] or 'none (CPU only)'}; GPU: {gpus}"
        if pkg.label == "mmcv" and info["importable"]:
            ops = report.mmcv_ops
            text += f"; compiled ops: {_yes(ops['compiled'])}"
            if ops["compiled"]:
                text += f" ({ops['compiler']}, CUDA {ops['cuda_version']})"
        rows.append((pkg.label, text))
    msda = report.deform_attn
    text = DEFORM_ATTN_PATHS[msda["path"]]
    if msda["cuda_call_ok"] is not None:
        text += (f"; checked against the PyTorch path: max diff {msda['max_abs_diff']}" if msda["cuda_call_ok"]
                 else f"; FAILS on this GPU ({msda['error']})")
    elif msda["path"] == "pytorch-cpu" and msda["cuda_kernel"]:
        text += "; mmcv has CUDA ops for when a GPU is visible"
    rows.append(("deform. attention", text))
    marker = report.build_marker
    rows.append(("mmcv build marker", marker["tag"] if marker["present"]
                 else f"absent ({marker['path']}: mmcv was not installed by tools/setup_env.sh)"))
    plan = report.setup_plan
    if plan["present"]:
        decided = {"cuda": "CUDA ops", "cpu": "CPU ops"}.get(plan["action"], f"unreadable ({plan['error']})")
        built = (marker.get("parsed") or {}).get("variant")
        if plan["action"] == "cpu" and built == "cuda":
            decided = f"CUDA ops kept from an earlier build (a new one is not possible now: {plan['why']})"
        elif plan["cuda_build_failed"]:
            decided += f"; the CUDA build failed, CPU ops were built instead (log: {plan['cuda_build_log']})"
        elif plan["action"] == "cpu" and plan["why"]:
            decided += f" ({plan['why']})"
        rows.append(("set-up CUDA plan", decided))

    rows.append(("tested matrix", ", ".join(f"{k} {v}" for k, v in TESTED_MATRIX.items())))

    width = max(len(k) for k, _ in rows)
    lines = ["uniseg environment check"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    for p in report.problems:
        lines.append(f"{p.level}: {p.message}")
    n_err = sum(p.level == "error" for p in report.problems)
    n_warn = len(report.problems) - n_err
    lines.append("OK" + (f" ({n_warn} warning{'s' if n_warn != 1 else ''})" if n_warn else "") if report.ok
                 else f"FAILED: {n_err} error{'s' if n_err != 1 else ''}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uniseg.env",
                                     description="Check that the environment can run uniseg.")
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
