"""benchmarks/bench_segmentor.py: result structure, ratios and per-case process isolation (no timing checks)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_segmentor.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_segmentor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _check_case(case, config, with_cp):
    assert "error" not in case
    assert (case["config"], case["with_cp"]) == (config, with_cp)
    params = case["params"]
    assert set(params) == {"total", "encoder", "adapter", "head"}
    assert all(v > 0 for v in params.values())
    assert params["total"] == params["encoder"] + params["adapter"] + params["head"]
    assert len(case["step_times_s"]) == case["iters"]
    assert case["time_per_image_s"] > 0
    assert case["peak_memory_bytes"] > 0
    assert case["peak_memory_per_image_bytes"] == case["peak_memory_bytes"] / case["batch_size"]
    assert math.isfinite(case["loss"])
    assert case["optimizer_step"] is False


@pytest.fixture
def one_thread():
    """Two torch threads on a CPU that other jobs share wait on each other; one keeps the test fast."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_measure_case_tiny_with_and_without_checkpointing(bench, one_thread):
    kwargs = dict(size=64, batch_size=2, warmup=0, iters=1, device="cpu", amp="none")
    off = bench.measure_case("tiny", False, **kwargs)
    on = bench.measure_case("tiny", True, **kwargs)
    _check_case(off, "tiny", False)
    _check_case(on, "tiny", True)
    assert on["params"] == off["params"]  # checkpointing changes no weights
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-5)  # ... nor the computation (same seed)
    assert off["memory_method"] in ("vmhwm", "rss_sampling")

    cases = [off, on]
    bench.add_ratios(cases, "tiny")
    assert on["time_ratio_vs_no_cp"] == pytest.approx(on["time_per_image_s"] / off["time_per_image_s"])
    assert on["memory_ratio_vs_no_cp"] == pytest.approx(
        on["peak_memory_per_image_bytes"] / off["peak_memory_per_image_bytes"])
    assert "time_ratio_vs_no_cp" not in off
    table = bench.format_table(cases, "tiny")
    assert len(table.splitlines()) == 4 and "FAILED" not in table


@pytest.mark.parametrize("config,encoder_m,head_channels", [("uni", 303.4, 1024), ("uni2-h", 681.4, 1536)])
def test_full_size_variants_build_consistently_without_weights(bench, config, encoder_m, head_channels):
    import torch
    from mmseg.registry import MODELS

    cfg = bench.variant_model_cfg(config, True, 512)
    assert cfg.backbone.encoder_weights is None and cfg.backbone.with_cp is True
    assert cfg.data_preprocessor.size == (512, 512)
    with torch.device("meta"):  # shapes only: building checks head channels against the backbone
        model = MODELS.build(cfg)
    params = bench.count_parameters(model)
    assert params["encoder"] / 1e6 == pytest.approx(encoder_m, abs=0.1)
    assert list(model.decode_head.in_channels) == [model.backbone.embed_dim] * 4 == [head_channels] * 4


def test_unknown_variant_is_named(bench):
    with pytest.raises(ValueError, match="unknown config 'uni-xl'"):
        bench.variant_model_cfg("uni-xl", False, 64)


def test_ratios_pair_matching_cases_and_skip_failed_ones(bench):
    def case(config, with_cp, t, m):
        params = dict(total=4, encoder=1, adapter=1, head=2)
        return dict(config=config, with_cp=with_cp, params=params, time_per_image_s=t, peak_memory_per_image_bytes=m)

    cases = [case("tiny", False, 1.0, 100.0), case("tiny", True, 1.5, 50.0),
             case("uni", False, 10.0, 1000.0), case("uni", True, 14.0, 400.0),
             dict(config="uni2-h", with_cp=False, error="worker killed by signal 9"),
             case("uni2-h", True, 20.0, None)]
    bench.add_ratios(cases, "tiny")
    tiny_on, uni_off, uni_on, h_fail, h_on = cases[1:]
    assert (tiny_on["time_ratio_vs_no_cp"], tiny_on["memory_ratio_vs_no_cp"]) == (1.5, 0.5)
    assert (uni_on["time_ratio_vs_no_cp"], uni_on["memory_ratio_vs_no_cp"]) == (1.4, 0.4)
    assert (uni_off["time_ratio_vs_baseline"], uni_off["memory_ratio_vs_baseline"]) == (10.0, 10.0)
    assert (uni_on["time_ratio_vs_baseline"], uni_on["memory_ratio_vs_baseline"]) == (14.0 / 1.5, 8.0)
    assert h_on["time_ratio_vs_no_cp"] is None and h_on["memory_ratio_vs_baseline"] is None
    assert "time_ratio_vs_baseline" not in h_fail
    table = bench.format_table(cases, "tiny")
    assert "FAILED: worker killed by signal 9" in table


@pytest.mark.parametrize("method", ["auto", "rss_sampling"])
def test_cpu_meter_sees_an_allocation_made_after_start(bench, method):
    meter = bench.PeakMemoryMeter("cpu", method, interval_s=0.001)
    meter.start()
    block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
    time.sleep(0.05)  # the sampler polls every millisecond
    del block
    peak = meter.stop()
    assert meter.method in (("vmhwm", "rss_sampling") if method == "auto" else ("rss_sampling",))
    assert 60 * 2 ** 20 <= peak < 1024 * 2 ** 20


def test_cli_runs_each_case_in_its_own_process_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--configs", "tiny", "--size", "64", "--iters", "1", "--warmup", "0",
         "--device", "cpu", "--with-cp", "both", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["optimizer_step"] is False and report["meta"]["baseline_config"] == "tiny"
    off, on = report["cases"]
    _check_case(off, "tiny", False)
    _check_case(on, "tiny", True)
    assert len({off["pid"], on["pid"], os.getpid()}) == 3  # a fresh process per case
    assert off["threads"] == on["threads"] == 1
    assert on["time_ratio_vs_no_cp"] > 0 and on["memory_ratio_vs_no_cp"] > 0
    assert "tiny    True" in proc.stdout and "mem x no-cp" in proc.stdout


def test_cli_rejects_unknown_config_and_bad_sizes():
    for args in (["--configs", "uni-xl"], ["--size", "8"], ["--iters", "0"], ["--threads", "0"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, args
        assert ("uni-xl" in proc.stderr) if args[0] == "--configs" else (args[0] in proc.stderr)
