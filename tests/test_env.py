"""The environment check: the real report on this machine, simulated breakages, the tested matrix."""
from __future__ import annotations

import json
import platform
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from uniseg import env

REPO_ROOT = Path(__file__).resolve().parents[1]


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _py_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A build marker of our own in place of the venv's (which the test must not touch)."""
    path = tmp_path / ".uniseg-mmcv-build"
    path.write_text(f"torch{_torch_version()}-cpu-{_py_tag()}-{platform.machine()}\n")
    monkeypatch.setattr(env, "default_marker_path", lambda: path)
    return path


def _run(capsys, *argv):
    code = env.main(list(argv))
    return code, capsys.readouterr().out


def _messages(out: str, level: str):
    return [p["message"] for p in json.loads(out)["problems"] if p["level"] == level]


def _gpu_torch(monkeypatch):
    """torch as it looks on a GPU machine (this one has none)."""
    monkeypatch.setattr(env, "probe_torch", lambda: {
        "version": _torch_version(), "cuda_build": "12.8", "cuda_available": True, "devices": ["NVIDIA H100"],
        "capabilities": ["9.0"], "error": None})


def test_cli_on_this_machine_reports_compiled_mmcv_ops():
    """tools/check_env.py loads env.py without importing uniseg first; this machine's stack is complete."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools/check_env.py"), "--json"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert report["mmcv_ops"]["compiled"] is True
    assert report["mmcv_ops"]["extension"].endswith(".so")
    assert report["packages"]["mmcv"]["version"] == "2.1.0"
    assert report["packages"]["uniseg"]["importable"] is True
    assert not [p for p in report["problems"] if p["level"] == "error"]


def test_text_report_lists_the_stack(capsys, marker):
    code, out = _run(capsys)
    assert code == 0
    assert "compiled ops: yes" in out
    for name in ("torch", "torchvision", "mmengine", "mmsegmentation", "mmdet", "timm", "albumentations",
                 "numpy", "opencv", "tifffile", "openslide", "uniseg", "deform. attention", "tested matrix"):
        assert re.search(rf"^  {re.escape(name)} ", out, re.M), name
    assert marker.read_text().strip() in out
    assert out.rstrip().splitlines()[-1].startswith("OK")


def test_runs_as_module(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["uniseg.env"])
    monkeypatch.delitem(sys.modules, "uniseg.env")  # run a fresh copy as __main__, as `python -m` does
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("uniseg.env", run_name="__main__", alter_sys=True)
    assert exc.value.code == 0
    assert "uniseg environment check" in capsys.readouterr().out


def test_mmcv_lite_is_an_error_with_the_fix(capsys, marker, monkeypatch):
    monkeypatch.setitem(sys.modules, "mmcv.ops", None)  # `import mmcv.ops` now fails
    monkeypatch.setitem(sys.modules, "mmcv._ext", None)  # and there is no compiled extension
    code, out = _run(capsys, "--json")
    assert code == 1
    assert json.loads(out)["mmcv_ops"]["compiled"] is False
    errors = _messages(out, "error")
    assert any("mmcv is installed without compiled ops (mmcv-lite?)" in m and "bash tools/setup_env.sh" in m
               for m in errors), errors


def test_ops_that_do_not_load_ask_for_a_rebuild(capsys, marker, monkeypatch):
    monkeypatch.setitem(sys.modules, "mmcv.ops", None)  # the .so is there but does not load
    code, out = _run(capsys)
    assert code == 1
    assert "error: mmcv's compiled ops do not load" in out and "rebuild with `bash tools/setup_env.sh`" in out
    assert out.rstrip().splitlines()[-1].startswith("FAILED")


def test_marker_from_another_torch_is_an_error(capsys, marker):
    marker.write_text(f"torch2.8.0-cpu-{_py_tag()}-{platform.machine()}\n")
    code, out = _run(capsys, "--json")
    assert code == 1
    errors = _messages(out, "error")
    expected = f"mmcv ops were built against torch 2.8.0 but torch {_torch_version()} is installed"
    assert any(expected in m and "tools/setup_env.sh" in m for m in errors), errors


def test_unreadable_marker_is_a_warning(capsys, marker):
    marker.write_text("something else\n")
    code, out = _run(capsys, "--json")
    assert code == 0
    assert any("unrecognised build marker" in m for m in _messages(out, "warning"))


def test_gpu_without_cuda_ops_is_a_warning(capsys, marker, monkeypatch):
    _gpu_torch(monkeypatch)
    code, out = _run(capsys, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["deform_attn"]["cuda_kernel"] is False and report["deform_attn"]["cuda_call_ok"] is None
    assert any("a GPU is visible but mmcv has no CUDA ops" in m and "UNISEG_CUDA=1 bash tools/setup_env.sh" in m
               for m in _messages(out, "warning"))


def test_failing_cuda_kernel_is_an_error(capsys, marker, monkeypatch):
    _gpu_torch(monkeypatch)
    monkeypatch.setattr(env, "probe_mmcv_ops", lambda: {
        "compiled": True, "extension_file_present": True, "extension": "_ext.so", "compiler": "GCC 12.2",
        "cuda_version": "12.8", "cuda_ops": True, "error": None})
    calls = []
    monkeypatch.setattr(env, "check_deform_attn_kernel",
                        lambda device: calls.append(device) or (False, None, "no kernel image is available"))
    code, out = _run(capsys, "--json")
    assert code == 1 and calls == ["cuda"]
    assert any("deformable attention fails on NVIDIA H100" in m and "TORCH_CUDA_ARCH_LIST='9.0' UNISEG_CUDA=1" in m
               for m in _messages(out, "error"))


def test_kernel_check_reports_a_missing_kernel_instead_of_raising():
    ok, diff, error = env.check_deform_attn_kernel("cpu")  # mmcv 2.1.0 has no CPU kernel for this op
    assert ok is False and diff is None
    assert "cpu" in error


def test_missing_required_package_is_an_error_optional_is_not(capsys, marker, monkeypatch):
    optional = env.Package("somewhere", "uniseg_test_no_such_module", ("uniseg-test-no-such-dist",),
                           required=False, note="optional: only for this test")
    monkeypatch.setattr(env, "PACKAGES", env.PACKAGES + (optional,))
    code, out = _run(capsys, "--json")
    assert code == 0
    assert json.loads(out)["packages"]["somewhere"]["missing"] is True

    monkeypatch.setitem(sys.modules, "openslide", None)  # a requirement since OpenSlide came with openslide-bin
    code, out = _run(capsys, "--json")
    assert code == 1
    assert "openslide is not installed: run `bash tools/setup_env.sh`" in _messages(out, "error")

    monkeypatch.setitem(sys.modules, "tifffile", None)
    code, out = _run(capsys, "--json")
    assert code == 1
    assert "tifffile is not installed: run `bash tools/setup_env.sh`" in _messages(out, "error")


def test_version_outside_the_matrix_is_a_warning(capsys, marker, monkeypatch):
    import numpy

    monkeypatch.setitem(env.TESTED_MATRIX, "numpy", "1.0.0")
    code, out = _run(capsys, "--json")
    assert code == 0
    assert any(f"numpy {numpy.__version__} (tested 1.0.0)" in m for m in _messages(out, "warning"))


def test_tested_matrix_agrees_with_setup_env_and_stack_txt():
    script = (REPO_ROOT / "tools/setup_env.sh").read_text()
    torch_default = re.search(r"^TORCH_VERSION=\$\{UNISEG_TORCH:-([^}]+)\}$", script, re.M).group(1)
    mmcv = re.search(r"^MMCV_VERSION=(\S+)$", script, re.M).group(1)
    major_minor = ".".join(torch_default.split(".")[:2])
    torchvision = re.search(rf"{re.escape(major_minor)}\.\*\) echo (\S+) ;;", script).group(1)

    pins = {}
    for line in (REPO_ROOT / "requirements/stack.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()

    assert env.TESTED_MATRIX == {"torch": torch_default, "torchvision": torchvision, "mmcv": mmcv, **pins}
    assert {p.tested_as for p in env.PACKAGES if p.tested_as} == set(env.TESTED_MATRIX)


def test_expected_build_tag_matches_setup_env_format():
    assert env.expected_build_tag("2.9.1+cu128", cuda=False) == f"torch2.9.1-cpu-{_py_tag()}-{platform.machine()}"
    assert env.expected_build_tag("2.9.1", cuda=True).startswith("torch2.9.1-cuda-")


def test_version_drift_is_a_warning_whose_fix_names_the_venv(capsys, marker, monkeypatch):
    """Outside the repo's .venv the suggested command must set UNISEG_VENV, or it would set up another venv."""
    monkeypatch.setitem(env.TESTED_MATRIX, "timm", "0.0.1")
    code, out = _run(capsys, "--json")
    assert code == 0
    (warning,) = [m for m in _messages(out, "warning") if "versions differ" in m]
    assert "timm" in warning and "(tested 0.0.1)" in warning
    assert f"rm -f {marker.with_name('.uniseg-env-stamp')} && UNISEG_VENV={marker.parent} bash tools/setup_env.sh" \
        in warning


# ============================================================================ the CUDA build decision
# tools/cuda_build_plan.py decides between mmcv's CUDA and CPU ops; tools/setup_env.sh acts on it. The machines
# below are made of fake `nvidia-smi` and `nvcc` executables in tmp_path, on a PATH that holds nothing else, so
# this machine's own nvcc (13.0 in /usr/local) and GPUs (none) play no part. Nothing here builds mmcv.
import importlib.util  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402

SHARED_WHEEL = Path("/work/shared/wheels/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl")
GPU_LINE = "GPU 0: NVIDIA H200 (UUID: GPU-8d2f6c1e-3b5a-4c7d-9e0f-1a2b3c4d5e6f)"
NVCC_BUILDS = {"12.4": ("Thu_Mar_28_02:18:24_PDT_2024", "V12.4.131"), "12.8": ("Fri_Feb_21_20:23:50_PST_2025", "V12.8.93"),
               "12.9": ("Tue_May_27_02:21:03_PDT_2025", "V12.9.86"), "13.0": ("Wed_Aug_20_01:58:59_PM_PDT_2025", "V13.0.88")}
SLOW_PATH_TEXT = "falling back to mmcv's CPU ops: deformable attention runs uniseg's PyTorch path on the GPU (slower)"


def _load_plan_module():
    spec = importlib.util.spec_from_file_location("_cuda_build_plan", REPO_ROOT / "tools/cuda_build_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


plan_mod = _load_plan_module()


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class FakeMachine:
    """A PATH with fake NVIDIA tools, toolkits under tmp_path, and torch's CUDA version injected."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.prefix = root / "usr-local"  # stands in for /usr/local (UNISEG_CUDA_PREFIX)
        self.prefix.mkdir()
        self.extra_path: List[Path] = []
        self.env: Dict[str, str] = {"UNISEG_PLAN_TORCH_CUDA": "12.8", "UNISEG_PLAN_TORCH_VERSION": "2.9.1+cu128",
                                    "UNISEG_CUDA_PREFIX": str(self.prefix), "PYTHONDONTWRITEBYTECODE": "1"}

    def gpu(self) -> "FakeMachine":
        _executable(self.bin / "nvidia-smi", f"#!/bin/sh\n[ \"$1\" = -L ] && echo '{GPU_LINE}'\n")
        return self

    def driver_without_gpu(self) -> "FakeMachine":
        _executable(self.bin / "nvidia-smi", "#!/bin/sh\necho 'No devices were found'\nexit 6\n")
        return self

    def toolkit(self, root: Path, version: str, headers: bool = True, on_path: bool = False) -> Path:
        """A CUDA toolkit folder whose nvcc prints what the real one of that version prints."""
        built, build = NVCC_BUILDS[version]
        _executable(root / "bin" / "nvcc", (
            "#!/bin/sh\n[ \"$1\" = --version ] || exit 1\n"
            "echo 'nvcc: NVIDIA (R) Cuda compiler driver'\necho 'Copyright (c) 2005-2025 NVIDIA Corporation'\n"
            f"echo 'Built on {built}'\necho 'Cuda compilation tools, release {version}, {build}'\n"
            f"echo 'Build cuda_{version}.r{version}/compiler.35583870_0'\n"))
        if headers:
            (root / "include").mkdir(exist_ok=True)
            (root / "include" / "cuda_runtime_api.h").write_text("/* fake */\n")
        if on_path:
            self.extra_path.append(root / "bin")
        return root

    def environ(self, **extra: str) -> Dict[str, str]:
        env = {**self.env, "PATH": os.pathsep.join(str(p) for p in [self.bin, *self.extra_path])}
        env.update(extra)
        return env

    def plan(self, request: Optional[str] = None, **extra: str):
        return plan_mod.make_plan(request, self.environ(**extra))


@pytest.fixture
def machine(tmp_path):
    return FakeMachine(tmp_path / "machine")


def test_plan_without_gpu_builds_cpu_ops_without_looking_for_nvcc(machine):
    machine.toolkit(machine.prefix / "cuda", "12.8")
    for m in (machine, machine.driver_without_gpu()):  # no nvidia-smi at all; then a driver that lists no GPU
        plan = m.plan()
        assert (plan.action, plan.reason_code, plan.candidates) == ("cpu", "no-gpu", [])
        assert "no GPU visible" in plan.reason and "UNISEG_CUDA=1 builds the CUDA ops anyway" in plan.reason


def test_plan_gpu_without_nvcc_falls_back_and_names_the_toolkit_to_install(machine):
    plan = machine.gpu().plan()
    assert (plan.action, plan.reason_code, plan.toolkit_blocks, plan.gpus) == ("cpu", "no-nvcc", True, ["NVIDIA H200"])
    assert plan.reason.startswith("nvcc not found") and plan.reason.endswith(SLOW_PATH_TEXT)
    assert plan.fix == ("install the CUDA 12.8 toolkit (https://developer.nvidia.com/cuda-12-8-0-download-archive) "
                        "or set CUDA_HOME to one")


def test_plan_refuses_nvcc_of_another_major_version(machine):
    machine.gpu().toolkit(machine.root / "cuda-13.0", "13.0", on_path=True)
    plan = machine.plan()
    assert (plan.action, plan.reason_code, plan.cuda_home) == ("cpu", "nvcc-mismatch", "")
    assert "nvcc 13.0 is CUDA 13, torch is built for CUDA 12.8" in plan.reason and plan.reason.endswith(SLOW_PATH_TEXT)
    assert "install the CUDA 12.8 toolkit" in plan.fix and "set CUDA_HOME to it" in plan.fix


def test_plan_builds_cuda_ops_with_a_matching_nvcc(machine):
    root = machine.gpu().toolkit(machine.root / "cuda-12.8", "12.8", on_path=True)
    plan = machine.plan()
    assert (plan.action, plan.reason_code, plan.cuda_home) == ("cuda", "ok", str(root))
    assert plan.toolkit.version == "12.8" and plan.toolkit.source == "PATH"


def test_plan_accepts_another_minor_version_with_a_note(machine):
    root = machine.gpu().toolkit(machine.root / "cuda-12.4", "12.4", on_path=True)
    plan = machine.plan()
    assert (plan.action, plan.cuda_home) == ("cuda", str(root))
    assert "minor version differs from torch's CUDA 12.8" in plan.reason


def test_plan_uses_cuda_home_and_only_cuda_home(machine):
    machine.gpu().toolkit(machine.root / "cuda-13.0", "13.0", on_path=True)
    good = machine.toolkit(machine.root / "opt" / "cuda-12.8", "12.8")
    plan = machine.plan(CUDA_HOME=str(good))
    assert (plan.action, plan.cuda_home, plan.toolkit.source) == ("cuda", str(good), "CUDA_HOME")
    assert [t.root for t in plan.candidates] == [str(good)]  # the 13.0 on PATH is not considered

    empty = machine.root / "not-a-toolkit"
    empty.mkdir()
    plan = machine.plan(CUDA_HOME=str(empty))  # torch would fail on <CUDA_HOME>/bin/nvcc, not look elsewhere
    assert (plan.action, plan.reason_code) == ("cpu", "toolkit-unusable")
    assert f"no nvcc at {empty / 'bin' / 'nvcc'}" in plan.reason
    assert plan.fix.startswith("point CUDA_HOME at a CUDA 12.8 toolkit")


def test_plan_finds_a_matching_toolkit_next_to_another_one(machine):
    """/usr/local/cuda -> 13.0 on PATH, /usr/local/cuda-12.8 beside it: the build gets CUDA_HOME=.../cuda-12.8."""
    machine.gpu().toolkit(machine.prefix / "cuda-13.0", "13.0", on_path=True)
    (machine.prefix / "cuda").symlink_to(machine.prefix / "cuda-13.0")
    side = machine.toolkit(machine.prefix / "cuda-12.8", "12.8")
    machine.toolkit(machine.prefix / "cuda-12.4", "12.4")
    plan = machine.plan()
    assert (plan.action, plan.cuda_home) == ("cuda", str(side))  # the exact version beats 12.4
    assert [t.version for t in plan.candidates] == ["13.0", "12.8", "12.4"]  # cuda -> 13.0 counted once
    assert f"toolkit {side} (" in plan.message() and ": used" in plan.message()


def test_plan_skips_an_nvcc_wrapper_without_headers(machine):
    """This machine's layout: /usr/local/bin/nvcc is a wrapper script; torch would take /usr/local as CUDA_HOME."""
    real = machine.gpu().toolkit(machine.prefix / "cuda-12.8", "12.8")
    _executable(machine.prefix / "bin" / "nvcc", f"#!/bin/sh\nexec {real}/bin/nvcc \"$@\"\n")
    machine.extra_path.append(machine.prefix / "bin")
    (machine.prefix / "cuda").symlink_to(real)
    plan = machine.plan()
    assert plan.candidates[0].root == str(machine.prefix) and "no CUDA headers" in plan.candidates[0].problem
    assert (plan.action, plan.cuda_home) == ("cuda", str(machine.prefix / "cuda"))

    link_dir = machine.root / "links"  # a symlink to the toolkit's nvcc: the toolkit itself is handed to torch
    link_dir.mkdir()
    (link_dir / "nvcc").symlink_to(real / "bin" / "nvcc")
    machine.extra_path[-1] = link_dir
    (machine.prefix / "cuda").unlink()
    plan = machine.plan()
    assert (plan.action, plan.cuda_home, plan.toolkit.source) == ("cuda", str(real), "PATH")


def test_plan_overrides(machine):
    root = machine.gpu().toolkit(machine.root / "cuda-12.8", "12.8", on_path=True)
    plan = machine.plan("0")
    assert (plan.action, plan.reason_code) == ("cpu", "disabled") and "UNISEG_CUDA=0" in plan.reason
    assert machine.plan(UNISEG_CUDA="0").action == "cpu"  # the environment variable is the default request

    machine.bin.joinpath("nvidia-smi").unlink()  # no GPU: UNISEG_CUDA=1 builds for GPUs elsewhere
    assert (machine.plan("1").action, machine.plan("1").cuda_home) == ("cuda", str(root))
    machine.extra_path.clear()  # ... but not without nvcc: it stops with the reason
    plan = machine.plan("1")
    assert (plan.action, plan.reason_code) == ("fail", "no-nvcc")
    assert plan.reason.startswith("UNISEG_CUDA=1 asks for mmcv's CUDA ops, but they cannot be built: nvcc not found")
    with pytest.raises(ValueError, match="UNISEG_CUDA must be auto, 0 or 1"):
        machine.plan("yes")


def test_plan_cpu_only_torch_builds_cpu_ops(machine):
    machine.gpu().toolkit(machine.root / "cuda-12.8", "12.8", on_path=True)
    plan = machine.plan(UNISEG_PLAN_TORCH_CUDA="none", UNISEG_PLAN_TORCH_VERSION="2.9.1+cpu")
    assert (plan.action, plan.reason_code, plan.toolkit_blocks) == ("cpu", "torch-cpu", False)
    assert "torch 2.9.1+cpu is a CPU-only build" in plan.reason and "cannot use a GPU at all" in plan.reason
    assert machine.plan("1", UNISEG_PLAN_TORCH_CUDA="none").action == "fail"


def test_plan_key_follows_the_decision_inputs(machine):
    machine.gpu()
    before = machine.plan()
    assert machine.plan().key == before.key  # stable: a second set-up run takes the fast path
    machine.toolkit(machine.root / "cuda-13.0", "13.0", on_path=True)  # a toolkit appears, of the wrong version
    wrong = machine.plan()
    assert (wrong.action, before.action) == ("cpu", "cpu") and wrong.key != before.key
    root = machine.toolkit(machine.prefix / "cuda-12.8", "12.8")  # now a matching one beside it
    after = machine.plan()
    assert after.action == "cuda" and after.key != wrong.key
    machine.toolkit(root, "12.9")  # updated in place: same decision, other compiler (a failed build may now work)
    assert machine.plan().action == "cuda" and machine.plan().key != after.key
    assert machine.plan(UNISEG_PLAN_TORCH_CUDA="12.9").key != machine.plan().key


def test_plan_reads_torch_cuda_version_without_importing_torch():
    import torch

    version, cuda, error = plan_mod.torch_build({})
    assert (version, cuda, error) == (torch.__version__, torch.version.cuda, None)


@pytest.mark.parametrize("nvcc_version", ["12.8", "12.4", "12.9", "13.0", None])
def test_plan_version_rule_agrees_with_torch(nvcc_version, tmp_path, monkeypatch):
    """torch's own check (cpp_extension._check_cuda_version) on the same fake nvcc accepts exactly what the plan does."""
    import torch
    import torch.utils.cpp_extension as cpp_extension

    machine = FakeMachine(tmp_path / "m")
    root = tmp_path / "toolkit"
    if nvcc_version is None:  # an nvcc whose output has no release number: torch does not check it
        _executable(root / "bin" / "nvcc", "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n")
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime_api.h").write_text("")
    else:
        machine.toolkit(root, nvcc_version)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(root))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    try:
        cpp_extension._check_cuda_version("c++", cpp_extension.TorchVersion("12.2.0"))
        torch_accepts = True
    except RuntimeError:
        torch_accepts = False
    plan = plan_mod.make_plan("1", machine.environ(CUDA_HOME=str(root)))
    assert (plan.action == "cuda") == torch_accepts
    assert torch_accepts == (nvcc_version in ("12.8", "12.4", "12.9", None))


def test_plan_cli_shell_output_survives_eval(machine, tmp_path):
    """setup_env.sh evals `--shell`; a CUDA_HOME with a space and a quote must come through intact."""
    root = machine.gpu().toolkit(tmp_path / "it's a toolkit", "12.8")
    env = machine.environ(CUDA_HOME=str(root))
    script = f'eval "$("{sys.executable}" "{REPO_ROOT}/tools/cuda_build_plan.py" --shell)"; ' \
             'printf "%s\\n%s\\n%s\\n" "$PLAN_ACTION" "$PLAN_CUDA_HOME" "$PLAN_JSON"'
    proc = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    action, cuda_home, plan_json = proc.stdout.rstrip("\n").split("\n")
    assert (action, cuda_home) == ("cuda", str(root))
    assert json.loads(plan_json)["toolkit"]["version"] == "12.8"

    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools/cuda_build_plan.py"), "--json"],
                          capture_output=True, text=True, env=machine.environ(UNISEG_CUDA="0"), timeout=60)
    assert json.loads(proc.stdout)["reason_code"] == "disabled"


# ------------------------------------------------------------------------------- tools/setup_env.sh
# The script runs for real on a fake venv: its python answers `-m pip` with tests' fake pip (which logs each call
# with the build environment, "downloads" a stub sdist and "builds" stub wheels, failing the CUDA build on request)
# and `import mmcv...` from a state file; everything else goes to this interpreter. The PATH holds only the
# utilities the script uses and the fake NVIDIA tools, so no real nvcc, GPU, pip or mmcv build is involved.
SCRIPT_TOOLS = ("bash", "cat", "cut", "dirname", "env", "grep", "gzip", "head", "ls", "mkdir", "mktemp", "mv", "nproc", "rm",
                "sed", "sha256sum", "tail", "tar", "uname")
FAKE_PIP = r'''
import io, json, os, sys, tarfile
from pathlib import Path

venv = Path(__file__).resolve().parent
args = [a for a in sys.argv[1:] if a != "--disable-pip-version-check"]
keys = ("FORCE_CUDA", "CUDA_HOME", "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST", "MMCV_WITH_OPS")
with open(venv / "pip-calls.jsonl", "a") as log:
    log.write(json.dumps({"args": args, "env": {k: os.environ.get(k) for k in keys}}) + "\n")
if args[0] == "download":
    data = b"extra_compile_args['cxx'] = ['-std=c++17']\n"
    with tarfile.open(Path(args[args.index("-d") + 1]) / "mmcv-2.1.0.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("mmcv-2.1.0/setup.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
elif args[0] == "wheel":
    cuda = os.environ.get("FORCE_CUDA") == "1"
    if cuda and os.environ.get("FAKE_CUDA_BUILD") == "fail":
        print("[12/77] nvcc -c mmcv/ops/csrc/pytorch/cuda/ms_deform_attn_cuda.cu")
        print("FAILED: build/temp.linux-x86_64-cpython-311/ms_deform_attn_cuda.o")
        print("ms_deform_attn_cuda.cu(42): error: identifier \"fake_symbol\" is undefined")
        print("error: subprocess-exited-with-error")
        sys.exit(1)
    out = Path(args[args.index("-w") + 1])
    (out / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl").write_text("cuda" if cuda else "cpu")
elif args[0] == "install" and "--force-reinstall" in args:
    (venv / "fake-mmcv-installed").write_text(args[-1])
'''


class FakeSetup:
    """tools/setup_env.sh on a fake venv of a FakeMachine."""

    def __init__(self, machine: FakeMachine):
        self.machine = machine
        self.venv = machine.root / "venv"
        self.cache = machine.root / "wheel-cache"
        self.wheels = machine.root / "no-shared-wheels"
        self.tools = machine.root / "tools"
        self.tools.mkdir()
        for name in SCRIPT_TOOLS:
            (self.tools / name).symlink_to(shutil.which(name))
        machine.extra_path.append(self.tools)

    def make_venv(self) -> "FakeSetup":
        (self.venv / "fake_pip.py").parent.mkdir(parents=True, exist_ok=True)
        (self.venv / "fake_pip.py").write_text(FAKE_PIP)
        _executable(self.venv / "bin" / "python", f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then shift 2; exec "{sys.executable}" "{self.venv}/fake_pip.py" "$@"; fi
if [ "$1" = -c ]; then
  case "$2" in
    *"import mmcv"*) [ -f "{self.venv}/fake-mmcv-installed" ]; exit $? ;;
    *"import torch"*) echo c++17; exit 0 ;;
  esac
fi
exec "{sys.executable}" "$@"
""")
        return self

    def run(self, **extra: str) -> subprocess.CompletedProcess:
        env = self.machine.environ(UNISEG_VENV=str(self.venv), UNISEG_WHEEL_CACHE=str(self.cache),
                                   UNISEG_WHEEL_DIRS=str(self.wheels), PYTHON=sys.executable, MAX_JOBS="2", **extra)
        return subprocess.run([shutil.which("bash"), str(REPO_ROOT / "tools/setup_env.sh")], capture_output=True,
                              text=True, env=env, timeout=120, cwd=self.machine.root)

    def pip_calls(self, command: str) -> List[Dict]:
        path = self.venv / "pip-calls.jsonl"
        calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [c for c in calls if c["args"][0] == command]

    def marker(self) -> str:
        return (self.venv / ".uniseg-mmcv-build").read_text().strip()


def _tag(variant: str) -> str:
    return f"torch2.9.1-{variant}-{_py_tag()}-{platform.machine()}"


@pytest.fixture
def setup(machine):
    return FakeSetup(machine)


def test_setup_plan_only_prints_the_decision_and_creates_nothing(setup, tmp_path):
    machine = setup.machine.gpu()
    machine.toolkit(machine.root / "cuda-13.0", "13.0", on_path=True)
    bad = setup.wheels / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"
    bad.parent.mkdir()
    bad.write_text("not the documented wheel")
    proc = setup.run(UNISEG_SETUP_PLAN_ONLY="1")
    assert proc.returncode == 0, proc.stderr
    assert "mmcv ops: CPU [GPU: NVIDIA H200; torch 2.9.1+cu128 (CUDA 12.8); UNISEG_CUDA=auto]" in proc.stderr
    assert "nvcc 13.0 is CUDA 13, torch is built for CUDA 12.8" in proc.stderr and SLOW_PATH_TEXT in proc.stderr
    assert "fix: install the CUDA 12.8 toolkit (https://developer.nvidia.com/cuda-12-8-0-download-archive)" in proc.stderr
    if _py_tag() == "cp311" and platform.machine() == "x86_64":
        assert f"ignoring {bad}: checksum differs" in proc.stderr
    assert f"plan: build mmcv 2.1.0 with cpu ops from source for {_tag('cpu')}" in proc.stderr
    assert not setup.venv.exists() and not setup.cache.exists()

    machine.toolkit(machine.prefix / "cuda-12.8", "12.8")  # a matching toolkit beside the other one
    proc = setup.run(UNISEG_SETUP_PLAN_ONLY="1")
    assert proc.returncode == 0, proc.stderr
    assert (f"plan: build mmcv 2.1.0 with cuda ops from source for {_tag('cuda')} "
            f"(CUDA_HOME={machine.prefix / 'cuda-12.8'})") in proc.stderr
    assert f"if the CUDA build fails: fall back to the CPU ops ({_tag('cpu')})" in proc.stderr
    proc = setup.run(UNISEG_SETUP_PLAN_ONLY="1", UNISEG_CUDA="1")
    assert "if the CUDA build fails: stop (UNISEG_CUDA=1)" in proc.stderr
    assert not setup.venv.exists()


def test_setup_plan_only_stops_when_cuda_is_forced_but_impossible(setup):
    setup.machine.gpu()
    proc = setup.run(UNISEG_SETUP_PLAN_ONLY="1", UNISEG_CUDA="1")
    assert proc.returncode == 1
    assert "UNISEG_CUDA=1 asks for mmcv's CUDA ops, but they cannot be built: nvcc not found" in proc.stderr
    assert "error: mmcv's ops cannot be built as asked" in proc.stderr
    proc = setup.run(UNISEG_SETUP_PLAN_ONLY="1", UNISEG_CUDA="yes")
    assert proc.returncode == 1 and "UNISEG_CUDA must be auto, 0 or 1 (got 'yes')" in proc.stderr


@pytest.mark.skipif(not SHARED_WHEEL.is_file() or (_py_tag(), platform.machine()) != ("cp311", "x86_64"),
                    reason="the shared prebuilt wheel (cp311, x86_64) is not on this machine")
def test_setup_on_a_cpu_machine_installs_the_shared_wheel_then_takes_the_fast_path(setup):
    setup.wheels = SHARED_WHEEL.parent
    proc = setup.run(UNISEG_SETUP_PLAN_ONLY="1")
    assert f"plan: install the prebuilt mmcv wheel {SHARED_WHEEL} for {_tag('cpu')}" in proc.stderr

    setup.make_venv()
    proc = setup.run()
    assert proc.returncode == 0, proc.stderr
    assert f"using prebuilt mmcv wheel {SHARED_WHEEL}" in proc.stderr
    assert setup.pip_calls("wheel") == [] and setup.marker() == _tag("cpu")
    assert json.loads((setup.venv / ".uniseg-cuda-plan.json").read_text())["reason_code"] == "no-gpu"
    calls = len(setup.pip_calls("install"))
    proc = setup.run()
    assert proc.returncode == 0 and "is up to date" in proc.stderr
    assert len(setup.pip_calls("install")) == calls


def test_setup_cuda_build_failure_falls_back_to_cpu_ops_until_the_toolkit_changes(setup):
    machine = setup.machine.gpu()
    toolkit = machine.toolkit(machine.root / "cuda-12.8", "12.8", on_path=True)
    setup.make_venv()
    proc = setup.run(FAKE_CUDA_BUILD="fail")
    assert proc.returncode == 0, proc.stderr
    cuda_build, cpu_build = setup.pip_calls("wheel")
    assert cuda_build["env"] == {"FORCE_CUDA": "1", "CUDA_HOME": str(toolkit), "CUDA_VISIBLE_DEVICES": None,
                                 "TORCH_CUDA_ARCH_LIST": "8.0;8.6;8.9;9.0", "MMCV_WITH_OPS": "1"}
    # mmcv's setup.py compiles CUDA ops whenever torch sees a GPU: the CPU build hides them
    assert cpu_build["env"]["FORCE_CUDA"] == "0" and cpu_build["env"]["CUDA_VISIBLE_DEVICES"] == ""
    log = setup.venv / "uniseg-mmcv-build-cuda.log"
    assert "the cuda build of mmcv failed" in proc.stderr
    assert 'error: identifier "fake_symbol" is undefined' in proc.stderr and str(log) in proc.stderr
    assert SLOW_PATH_TEXT.replace("falling back to mmcv's CPU ops: ", "") in proc.stderr
    assert setup.marker() == _tag("cpu")
    plan = json.loads((setup.venv / ".uniseg-cuda-plan.json").read_text())
    assert (setup.venv / ".uniseg-mmcv-cuda-failed").read_text().split("\n")[:2] == [plan["key"], str(log)]

    # check_env reads the records: the PyTorch path on the GPU, because the CUDA build failed, and where the log is
    info = env.probe_setup_plan(setup.venv / ".uniseg-mmcv-build")
    assert info["cuda_build_failed"] is True and info["cuda_build_log"] == str(log)
    why, fix = env._why_no_cuda_ops(info, setup.venv)
    assert str(log) in why and "UNISEG_CUDA=1 bash tools/setup_env.sh" in fix

    assert "is up to date" in setup.run(FAKE_CUDA_BUILD="fail").stderr  # second run: the fast path
    (setup.venv / ".uniseg-env-stamp").unlink()  # any other change: still no second 20-minute failure
    proc = setup.run(FAKE_CUDA_BUILD="fail")
    assert proc.returncode == 0 and "failed before with this toolkit" in proc.stderr
    assert len(setup.pip_calls("wheel")) == 2

    machine.toolkit(toolkit, "12.9")  # the toolkit changes (an update): the CUDA build is tried again
    proc = setup.run()
    assert proc.returncode == 0, proc.stderr
    assert setup.pip_calls("wheel")[-1]["env"]["FORCE_CUDA"] == "1"
    assert setup.marker() == _tag("cuda") and not (setup.venv / ".uniseg-mmcv-cuda-failed").exists()


def test_setup_forced_cuda_build_failure_stops(setup):
    machine = setup.machine.gpu()
    machine.toolkit(machine.root / "cuda-12.8", "12.8", on_path=True)
    setup.make_venv()
    proc = setup.run(FAKE_CUDA_BUILD="fail", UNISEG_CUDA="1")
    assert proc.returncode == 1
    assert "error: UNISEG_CUDA=1: the CUDA build of mmcv failed" in proc.stderr
    assert len(setup.pip_calls("wheel")) == 1 and not (setup.venv / ".uniseg-mmcv-build").exists()
    assert not (setup.venv / ".uniseg-env-stamp").exists()


def test_setup_keeps_an_installed_cuda_build_when_only_the_toolkit_is_missing(setup):
    """A new shell without `module load cuda`: the CUDA ops built before still run; no rebuild to CPU ops."""
    setup.machine.gpu()
    setup.make_venv()
    (setup.venv / ".uniseg-mmcv-build").write_text(_tag("cuda") + "\n")
    (setup.venv / "fake-mmcv-installed").write_text("cuda")
    proc = setup.run()
    assert proc.returncode == 0, proc.stderr
    assert "nvcc not found" in proc.stderr and f"keeping the installed mmcv with CUDA ops ({_tag('cuda')})" in proc.stderr
    assert setup.pip_calls("wheel") == [] and setup.marker() == _tag("cuda")

    (setup.venv / ".uniseg-env-stamp").unlink()
    proc = setup.run(UNISEG_CUDA="0")  # asked for CPU ops: they are built
    assert proc.returncode == 0, proc.stderr
    assert [c["env"]["FORCE_CUDA"] for c in setup.pip_calls("wheel")] == ["0"] and setup.marker() == _tag("cpu")


# ------------------------------------------------------------------- what check_env says about the path taken
def test_report_names_the_deform_attn_path_on_this_machine(capsys, marker):
    _, out = _run(capsys, "--json")
    report = json.loads(out)
    expected = "pytorch-gpu" if report["torch"]["cuda_available"] else "pytorch-cpu"  # mmcv here has CPU ops
    assert report["deform_attn"]["path"] == expected
    _, text = _run(capsys)
    assert re.search(rf"^  deform\. attention +{re.escape(env.DEFORM_ATTN_PATHS[expected])}", text, re.M)


def test_gpu_without_cuda_ops_says_why_from_the_recorded_plan(capsys, marker, machine, monkeypatch):
    """The set-up recorded its decision (no nvcc on a GPU machine); check_env repeats the why and the fix."""
    _gpu_torch(monkeypatch)
    plan = machine.gpu().plan()
    marker.with_name(".uniseg-cuda-plan.json").write_text(json.dumps(plan.to_dict()))
    code, out = _run(capsys, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["deform_attn"]["path"] == "pytorch-gpu" and report["setup_plan"]["reason_code"] == "no-nvcc"
    (warning,) = [m for m in _messages(out, "warning") if "mmcv has no CUDA ops" in m]
    assert "deformable attention runs uniseg's PyTorch path on the GPU (slower)" in warning
    assert "the set-up could not build them: nvcc not found" in warning
    assert ("fix: install the CUDA 12.8 toolkit (https://developer.nvidia.com/cuda-12-8-0-download-archive) or set "
            f"CUDA_HOME to one, then run `UNISEG_VENV={marker.parent} bash tools/setup_env.sh`") in warning

    _, text = _run(capsys)
    assert "  deform. attention  uniseg's PyTorch path on the GPU (mmcv has no CUDA ops; slower)" in text
    assert re.search(r"^  set-up CUDA plan +CPU ops \(nvcc not found", text, re.M)


def test_gpu_without_cuda_ops_after_a_failed_cuda_build(capsys, marker, machine, monkeypatch):
    _gpu_torch(monkeypatch)
    machine.gpu().toolkit(machine.root / "cuda-12.8", "12.8", on_path=True)
    plan = machine.plan()
    marker.with_name(".uniseg-cuda-plan.json").write_text(json.dumps(plan.to_dict()))
    log = marker.with_name("uniseg-mmcv-build-cuda.log")
    marker.with_name(".uniseg-mmcv-cuda-failed").write_text(f"{plan.key}\n{log}\n")
    code, out = _run(capsys, "--json")
    (warning,) = [m for m in _messages(out, "warning") if "mmcv has no CUDA ops" in m]
    assert f"its CUDA build failed during set-up (log: {log})" in warning
    assert f"`UNISEG_VENV={marker.parent} UNISEG_CUDA=1 bash tools/setup_env.sh` retries the CUDA build" in warning

    marker.with_name(".uniseg-mmcv-cuda-failed").write_text(f"0123456789abcdef\n{log}\n")  # from another decision
    code, out = _run(capsys, "--json")
    assert json.loads(out)["setup_plan"]["cuda_build_failed"] is False


def test_gpu_with_cuda_ops_reports_the_compiled_kernel(capsys, marker, monkeypatch):
    _gpu_torch(monkeypatch)
    monkeypatch.setattr(env, "probe_mmcv_ops", lambda: {
        "compiled": True, "extension_file_present": True, "extension": "_ext.so", "compiler": "GCC 12.2",
        "cuda_version": "12.8", "cuda_ops": True, "error": None})
    monkeypatch.setattr(env, "check_deform_attn_kernel", lambda device: (True, 2.4e-7, None))
    code, out = _run(capsys)
    assert code == 0
    assert "  deform. attention  mmcv's compiled CUDA kernel; checked against the PyTorch path: max diff 2.4e-07" in out
