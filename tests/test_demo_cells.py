"""tools/demo_cells.py end to end on a few iterations: both models trained and scored by the real tools, the
side-by-side table, and the whole-slide cell export of the held-out image (counts agree with tools/test.py)."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_cells_trains_scores_and_exports(tmp_path):
    work = tmp_path / "demo_cells"
    proc = subprocess.run([sys.executable, str(REPO / "tools/demo_cells.py"), "--iters", "4", "--work-dir", str(work)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    # 4 iterations cannot train a detector: the demo either reports its numbers or says training failed
    assert proc.returncode == 0 or "the instance model detected no nucleus" in proc.stderr, out[-3000:]
    rows = re.findall(r"^\| (instance|semantic) .*\| +(\d+) \| +(\d+) \|$", proc.stdout, re.MULTILINE)
    assert [r[0] for r in rows] == ["instance", "semantic"], out[-3000:]
    assert all(int(gt) == 35 for _, gt, _ in rows)  # the held-out quadrant's annotated nuclei
    predicted_by_test = int(rows[0][2])

    cells = work / "cells"
    summary = json.loads((cells / "nuclei_tl_cells_summary.json").read_text())
    assert sorted(Path(p).name for p in summary["outputs"]) == sorted(
        ["nuclei_tl_cells.geojson", "nuclei_tl_cells.csv", "nuclei_tl_cells.tif", "nuclei_tl_cells_tissue.png"])
    with open(cells / "nuclei_tl_cells.csv", newline="") as f:
        table = list(csv.DictReader(f))
    features = json.loads((cells / "nuclei_tl_cells.geojson").read_text())["features"]
    # one window covers the 256 px quadrant, so the export paints exactly what tools/test.py scored
    assert summary["cells"] == len(table) == len(features) == predicted_by_test
    assert f"tools/infer.py exported {summary['cells']} nuclei" in proc.stdout
    assert (work / "demo_cells_results.md").read_text().startswith("held-out quadrant nuclei_tl")
