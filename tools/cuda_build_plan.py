#!/usr/bin/env python
"""Decide whether tools/setup_env.sh builds mmcv's CUDA ops or its CPU ops, and say why.

A visible GPU is not enough to compile mmcv's CUDA ops: torch's extension builder also needs an
``nvcc`` whose CUDA major version equals the one torch was built with, and the toolkit's headers.
Machines with only the NVIDIA driver, or with another toolkit (nvcc 13.0 next to a ``+cu128`` torch),
are common; there a CUDA build fails after minutes of compiling. This script looks before the
build, so that the set-up can fall back to mmcv's CPU ops (uniseg then runs deformable attention
through its PyTorch path on the GPU) and tell the user what to install for the faster kernel.

The toolkit rules mirror torch 2.9.1's ``torch.utils.cpp_extension``:

* the toolkit is ``$CUDA_HOME`` (else ``$CUDA_PATH``) when set, and then only that one; torch
  compiles with ``<CUDA_HOME>/bin/nvcc`` and fails when it is missing;
* otherwise the ``nvcc`` on ``PATH`` (its grandparent folder is the toolkit), else ``/usr/local/cuda``;
* ``_check_cuda_version`` reads ``release X.Y`` from ``nvcc --version``: a different major version
  than ``torch.version.cuda`` is an error, a different minor version only a warning, and output
  without a release number is not checked at all. (Its host-compiler bounds exist only for
  CUDA 11.0-11.7, which no torch this set-up installs is built with; nvcc itself still rejects an
  unsupported gcc, which the set-up's build-failure fallback covers.)

Beyond torch, side-by-side toolkits (``/usr/local/cuda-12.8`` next to ``/usr/local/cuda`` -> 13.0)
are searched when ``CUDA_HOME`` is unset, and the chosen one is handed to the build as
``CUDA_HOME``; a toolkit folder without ``include/cuda_runtime_api.h`` (an ``nvcc`` wrapper in
``/usr/local/bin``, a driver-only install) is not used, because torch compiles the C++ sources
against ``<CUDA_HOME>/include``.

Only the standard library is used, and torch is not imported: its CUDA version is read from
``torch/version.py``. For tests, ``UNISEG_PLAN_TORCH_CUDA`` (``12.8``, or ``none`` for a CPU-only
torch) replaces what torch says, and ``UNISEG_CUDA_PREFIX`` (default ``/usr/local``) is where
``cuda`` and ``cuda-X.Y`` toolkits are looked for.

Usage: ``python tools/cuda_build_plan.py [--request auto|0|1] [--json | --shell]``; the request
defaults to ``$UNISEG_CUDA`` (``auto``). Text for people by default, one JSON object with
``--json``, and ``PLAN_*=...`` assignments for ``setup_env.sh`` with ``--shell``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

REQUESTS = ("auto", "0", "1")
TOOLKIT_PAGE = "https://developer.nvidia.com/cuda-{major}-{minor}-0-download-archive"
HEADER = Path("include") / "cuda_runtime_api.h"
SLOW_PATH = "deformable attention runs uniseg's PyTorch path on the GPU (slower)"
_RELEASE_RE = re.compile(r"release (\d+)\.(\d+)")  # what torch's _check_cuda_version matches
_TIMEOUT_S = 60


@dataclass(frozen=True)
class Toolkit:
    """One CUDA toolkit candidate, and why it cannot build mmcv's CUDA ops for this torch (if so)."""

    source: str  # where it was found: "CUDA_HOME", "PATH", "/usr/local/cuda", ...
    nvcc: str
    root: str  # what the build gets as CUDA_HOME
    version: Optional[str] = None  # "12.8"; None when nvcc does not print one
    problem: Optional[str] = None
    note: Optional[str] = None  # accepted, but worth saying (e.g. a minor-version mismatch)

    @property
    def usable(self) -> bool:
        return self.problem is None


@dataclass
class Plan:
    """What to build and why; ``key`` changes whenever any input of the decision does."""

    action: str  # "cuda" | "cpu" | "fail"
    reason_code: str  # "ok", "disabled", "no-gpu", "no-torch", "torch-cpu", "no-nvcc", "nvcc-mismatch", ...
    why: str = ""  # what stands in the way of a CUDA build ("" when nothing does)
    fix: str = ""  # what to install or set so that it can happen
    request: str = "auto"
    gpus: List[str] = field(default_factory=list)
    torch_version: Optional[str] = None
    torch_cuda: Optional[str] = None
    toolkit: Optional[Toolkit] = None  # the one the build would use
    candidates: List[Toolkit] = field(default_factory=list)
    # True when only the CUDA toolkit stands between this machine and a CUDA build.
    toolkit_blocks: bool = False

    @property
    def reason(self) -> str:
        """The decision in one sentence, as the set-up prints it."""
        if self.action == "cuda":
            tk = self.toolkit
            return (f"building mmcv's CUDA ops with nvcc {tk.version or '?'} (CUDA_HOME={tk.root})"
                    + (f"; {tk.note}" if tk.note else ""))
        if self.action == "fail":
            if self.reason_code == "no-torch":
                return self.why
            return (f"UNISEG_CUDA=1 asks for mmcv's CUDA ops, but they cannot be built: {self.why}. "
                    f"Unset UNISEG_CUDA to fall back to the CPU ops instead")
        if self.reason_code == "no-gpu":
            return (f"{self.why}: building mmcv's CPU ops (UNISEG_CUDA=1 builds the CUDA ops anyway, e.g. on a "
                    f"login node for GPU nodes)")
        if self.reason_code == "torch-cpu":
            return f"{self.why}; building mmcv's CPU ops (this torch cannot use a GPU at all)"
        if self.reason_code == "disabled":
            return f"{self.why}: building mmcv's CPU ops" + (f" ({SLOW_PATH})" if self.gpus else "")
        effect = f"falling back to mmcv's CPU ops: {SLOW_PATH}" if self.gpus else "building mmcv's CPU ops"
        return f"{self.why}; {effect}"

    @property
    def key(self) -> str:
        inputs = {"request": self.request, "gpu": bool(self.gpus), "torch_version": self.torch_version,
                  "torch_cuda": self.torch_cuda, "action": self.action,
                  "candidates": [dataclasses.asdict(t) for t in self.candidates]}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def cuda_home(self) -> str:
        return self.toolkit.root if self.action == "cuda" and self.toolkit else ""

    def message(self) -> str:
        """What the set-up prints: the decision, the reason, what to do about it."""
        gpu = f"GPU: {', '.join(self.gpus)}" if self.gpus else "GPU: none visible"
        torch = (f"torch {self.torch_version} (CUDA {self.torch_cuda or 'none'})" if self.torch_version
                 else "torch: not found")
        lines = [f"mmcv ops: {self.action.upper() if self.action != 'fail' else 'cannot build'} "
                 f"[{gpu}; {torch}; UNISEG_CUDA={self.request}]", self.reason]
        if self.fix:
            lines.append(f"fix: {self.fix}")
        if self.action == "cuda" and len(self.candidates) > 1:  # say why this toolkit and not another
            for tk in self.candidates:
                state = "used" if tk is self.toolkit else (tk.problem or "usable, not used")
                lines.append(f"  toolkit {tk.root} ({tk.source}, nvcc {tk.version or '?'}): {state}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, object]:
        data = dataclasses.asdict(self)
        data.update(key=self.key, cuda_home=self.cuda_home, reason=self.reason, message=self.message())
        return data


# ------------------------------------------------------------------------------------------ probes
def _run(cmd: Sequence[str], env: Mapping[str, str]) -> Tuple[int, str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=dict(env), timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, f"{type(exc).__name__}: {exc}"
    return proc.returncode, proc.stdout + proc.stderr


def visible_gpus(env: Mapping[str, str]) -> List[str]:
    """GPU names from ``nvidia-smi -L``; none when it is missing or lists none (driver without GPU)."""
    smi = shutil.which("nvidia-smi", path=env.get("PATH", ""))
    if smi is None:
        return []
    code, out = _run([smi, "-L"], env)
    if code != 0:
        return []
    return [m.group(1).strip() for m in re.finditer(r"^GPU \d+: ([^(\n]+)", out, re.M)]


def torch_build(env: Mapping[str, str]) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """``(torch.__version__, torch.version.cuda, error)`` without importing torch (seconds, and no CUDA init)."""
    injected = env.get("UNISEG_PLAN_TORCH_CUDA")
    if injected is not None:
        return env.get("UNISEG_PLAN_TORCH_VERSION", "injected"), \
            None if injected.lower() in ("", "none") else injected, None
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None, None, f"torch is not installed for {sys.executable}"
        path = Path(list(spec.submodule_search_locations)[0]) / "version.py"
        vspec = importlib.util.spec_from_file_location("_uniseg_torch_version", path)
        module = importlib.util.module_from_spec(vspec)
        vspec.loader.exec_module(module)
        return str(module.__version__), getattr(module, "cuda", None), None
    except Exception as exc:  # noqa: BLE001 - a broken torch is reported, not raised
        return None, None, f"cannot read torch's version ({type(exc).__name__}: {exc})"


def _nvcc_release(nvcc: str, env: Mapping[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """``(version, error)`` from ``nvcc --version``."""
    code, out = _run([nvcc, "--version"], env)
    if code != 0:
        return None, f"`{nvcc} --version` failed ({out.strip().splitlines()[-1] if out.strip() else code})"
    match = _RELEASE_RE.search(out)
    return (f"{match.group(1)}.{match.group(2)}" if match else None), None


def _major(version: str) -> str:
    return version.split(".")[0]


def _has_headers(root: Path, env: Mapping[str, str]) -> bool:
    inc = env.get("CUDA_INC_PATH")  # torch adds it to the include path too
    return (root / HEADER).is_file() or bool(inc and (Path(inc) / HEADER.name).is_file())


def _versions_match(nvcc_version: Optional[str], torch_cuda: str) -> Tuple[Optional[str], Optional[str]]:
    """``(problem, note)`` by torch's rule: another major is refused, another minor is warned about."""
    if nvcc_version is None:
        return None, "nvcc prints no release number; torch does not check it either"
    if nvcc_version == torch_cuda:
        return None, None
    if _major(nvcc_version) != _major(torch_cuda):
        return (f"nvcc {nvcc_version} is CUDA {_major(nvcc_version)}, torch is built for CUDA {torch_cuda} "
                f"and refuses another major version"), None
    return None, f"minor version differs from torch's CUDA {torch_cuda} (torch warns; it usually works)"


def _examine(source: str, nvcc: Path, root: Path, torch_cuda: str, env: Mapping[str, str]) -> Toolkit:
    if not nvcc.is_file():
        return Toolkit(source, str(nvcc), str(root), problem=f"no nvcc at {nvcc}")
    version, error = _nvcc_release(str(nvcc), env)
    if error:
        return Toolkit(source, str(nvcc), str(root), problem=error)
    problem, note = _versions_match(version, torch_cuda)
    if problem is None and not _has_headers(root, env):
        problem = f"no CUDA headers ({root / HEADER} is missing)"
    return Toolkit(source, str(nvcc), str(root), version, problem, note)


def find_toolkits(torch_cuda: str, env: Mapping[str, str]) -> List[Toolkit]:
    """Every toolkit torch could be pointed at, in the order torch itself would look."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):  # set explicitly: torch uses this one and nothing else
            root = Path(env[var])
            return [_examine(var, root / "bin" / "nvcc", root, torch_cuda, env)]
    found: List[Toolkit] = []
    seen = set()

    def add(source: str, nvcc: Path, root: Path) -> None:
        ident = os.path.realpath(root)
        if ident not in seen:
            seen.add(ident)
            found.append(_examine(source, nvcc, root, torch_cuda, env))

    on_path = shutil.which("nvcc", path=env.get("PATH", ""))
    if on_path:
        root = Path(on_path).parent.parent  # what torch takes as CUDA_HOME
        real = Path(os.path.realpath(on_path)).parent.parent
        if not _has_headers(root, env) and _has_headers(real, env):
            root = real  # a symlink into a toolkit: hand torch the toolkit itself
        add("PATH", root / "bin" / "nvcc", root)
    prefix = Path(env.get("UNISEG_CUDA_PREFIX") or "/usr/local")
    side_by_side = sorted(prefix.glob(f"cuda-{_major(torch_cuda)}.*"), key=_version_order, reverse=True)
    for root in [prefix / "cuda", prefix / f"cuda-{torch_cuda}", *side_by_side]:
        if (root / "bin" / "nvcc").is_file():
            add(str(root), root / "bin" / "nvcc", root)
    return found


def _version_order(path: Path) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.name))


# ---------------------------------------------------------------------------------------- decision
def _toolkit_page(torch_cuda: str) -> str:
    major, minor = (torch_cuda.split(".") + ["0"])[:2]
    return TOOLKIT_PAGE.format(major=major, minor=minor)


def make_plan(request: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Plan:
    """The build decision for this machine; ``env`` defaults to the process environment."""
    env = dict(os.environ if env is None else env)
    request = request or env.get("UNISEG_CUDA") or "auto"
    if request not in REQUESTS:
        raise ValueError(f"UNISEG_CUDA must be auto, 0 or 1 (got {request!r})")
    gpus = visible_gpus(env)
    torch_version, torch_cuda, torch_error = torch_build(env)
    plan = Plan("cpu", "", request=request, gpus=gpus, torch_version=torch_version, torch_cuda=torch_cuda)

    def cannot(code: str, why: str, fix: str = "", toolkit_blocks: bool = False) -> Plan:
        plan.action = "fail" if request == "1" else "cpu"
        plan.reason_code, plan.why, plan.fix, plan.toolkit_blocks = code, why, fix, toolkit_blocks
        return plan

    if request == "0":
        plan.reason_code, plan.why = "disabled", "UNISEG_CUDA=0"
        return plan
    if request == "auto" and not gpus:
        plan.reason_code, plan.why = "no-gpu", "no GPU visible (`nvidia-smi -L` lists none)"
        return plan
    if torch_error:
        plan.action, plan.reason_code, plan.why = "fail", "no-torch", torch_error
        return plan
    if torch_cuda is None:
        return cannot("torch-cpu", f"torch {torch_version} is a CPU-only build (torch.version.cuda is None)",
                      "install a CUDA build of torch (the default Linux x86_64 wheel from PyPI is one)")
    plan.candidates = find_toolkits(torch_cuda, env)
    usable = [t for t in plan.candidates if t.usable]
    exact = [t for t in usable if t.version == torch_cuda]
    if usable:
        plan.toolkit = (exact or usable)[0]
        plan.action, plan.reason_code = "cuda", "ok"
        return plan
    install = f"install the CUDA {torch_cuda} toolkit ({_toolkit_page(torch_cuda)})"
    if not plan.candidates:
        where = Path(env.get("UNISEG_CUDA_PREFIX") or "/usr/local")
        return cannot("no-nvcc", f"nvcc not found (CUDA_HOME unset, no nvcc on PATH or in {where}/cuda*)",
                      f"{install} or set CUDA_HOME to one", toolkit_blocks=True)
    problems = "; ".join(f"{t.root} ({t.source}): {t.problem}" for t in plan.candidates)
    mismatch = any(t.version is not None and _major(t.version) != _major(torch_cuda) for t in plan.candidates)
    explicit = plan.candidates[0].source if plan.candidates[0].source in ("CUDA_HOME", "CUDA_PATH") else None
    fix = (f"point {explicit} at a CUDA {torch_cuda} toolkit, or {install}" if explicit
           else f"{install} and set CUDA_HOME to it")
    return cannot("nvcc-mismatch" if mismatch else "toolkit-unusable",
                  f"no CUDA toolkit that torch (CUDA {torch_cuda}) can build with: {problems}", fix,
                  toolkit_blocks=True)


# -------------------------------------------------------------------------------------------- CLI
def shell_assignments(plan: Plan) -> str:
    """``PLAN_*=...`` lines that bash can ``eval``; every value is quoted."""
    values = {"PLAN_ACTION": plan.action, "PLAN_REASON_CODE": plan.reason_code, "PLAN_KEY": plan.key,
              "PLAN_CUDA_HOME": plan.cuda_home, "PLAN_GPU": "1" if plan.gpus else "0",
              "PLAN_TOOLKIT_BLOCKS": "1" if plan.toolkit_blocks else "0", "PLAN_REASON": plan.reason,
              "PLAN_FIX": plan.fix, "PLAN_MESSAGE": plan.message(),
              "PLAN_JSON": json.dumps(plan.to_dict(), sort_keys=True)}
    return "\n".join(f"{k}={shlex.quote(v)}" for k, v in values.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--request", choices=REQUESTS, help="override $UNISEG_CUDA (default: auto)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object")
    out.add_argument("--shell", action="store_true", help="PLAN_*=... assignments for tools/setup_env.sh")
    args = parser.parse_args(argv)
    try:
        plan = make_plan(args.request)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(plan.to_dict(), sort_keys=True))
    elif args.shell:
        print(shell_assignments(plan))
    else:
        print(plan.message())
    return 0


if __name__ == "__main__":
    sys.exit(main())
