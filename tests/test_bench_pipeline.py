"""benchmarks/bench_pipeline.py end to end on a small resampled region: every run reports and agrees (no timing checks)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


def test_pipelined_and_synchronous_runs_agree_and_report(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--mpp", "4", "--tile", "128", "128", "--stride", "96", "96",
         "--batch-size", "4", "--workers", "0", "2", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    results = summary["results"]
    assert list(results) == ["synchronous", "workers=0", "workers=2"]
    # the CMU region at 4 um/px is 277 x 370 px: 3 x 4 windows of 128 px at stride 96
    assert summary["size"] == [277, 370]
    assert {r["windows"] for r in results.values()} == {12}
    assert all(r["identical"] for r in results.values())
    assert results["synchronous"]["ratio"] == 1.0 and all(r["ratio"] > 0 for r in results.values())
    for r in results.values():
        assert r["read"] > 0 and r["model"] > 0 and r["write"] > 0
    assert "windows" in proc.stdout and "identical" in proc.stdout
