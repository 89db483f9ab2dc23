"""The environment check: the real report on this machine, simulated breakages, the tested matrix."""
from __future__ import annotations

import json
import platform
import re
import runpy
import subprocess
import sys
from pathlib import Path

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
    monkeypatch.setattr(env, "probe_torch", lambda: {
        "version": _torch_version(), "cuda_build": "12.8", "cuda_available": True, "devices": ["NVIDIA H100"],
        "capabilities": ["9.0"], "error": None})
    code, out = _run(capsys, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["deform_attn"]["cuda_kernel"] is False and report["deform_attn"]["cuda_call_ok"] is None
    assert any("a GPU is visible but mmcv has no CUDA ops" in m and "UNISEG_CUDA=1 bash tools/setup_env.sh" in m
               for m in _messages(out, "warning"))


def test_failing_cuda_kernel_is_an_error(capsys, marker, monkeypatch):
    monkeypatch.setattr(env, "probe_torch", lambda: {
        "version": _torch_version(), "cuda_build": "12.8", "cuda_available": True, "devices": ["NVIDIA H100"],
        "capabilities": ["9.0"], "error": None})
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
    monkeypatch.setitem(sys.modules, "openslide", None)
    code, out = _run(capsys, "--json")
    assert code == 0
    assert json.loads(out)["packages"]["openslide"]["missing"] is True

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
