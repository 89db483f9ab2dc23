"""The cohort table: one CSV row per slide of a run, merged from the per-slide summaries on disk.

Built from the output folder alone (summaries and error records, see :mod:`uniseg.inference.resume`),
so a rerun after a killed run writes a complete table; the current run only adds whether a complete
slide was segmented now (``done``) or found complete (``skipped-complete``). Statuses: ``done``,
``skipped-complete``, ``failed`` (with the error), ``missing`` (not reached, or interrupted).

Columns: name, path, status, error, width, height (of the segmented region, in output pixels), mpp
(of the output), tissue_area_mm2 (when the summary has it), windows, windows_skipped, seconds, then
per class: ``<class>_area_mm2`` (masks) or ``cells`` and ``<class>_cells`` (cell models).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..utils.atomic import atomic_output
from .cohort import SlideJob
from .resume import slide_state

__all__ = ["COHORT_TABLE", "STATUSES", "cohort_rows", "write_cohort_table"]

COHORT_TABLE = "cohort.csv"
STATUSES = ("done", "skipped-complete", "failed", "missing")
_COMMON = ("name", "path", "status", "error", "width", "height", "mpp", "tissue_area_mm2", "windows",
           "windows_skipped", "seconds")


def _columns(task: str, classes: Sequence[str]) -> List[str]:
    if task == "cells":
        return [*_COMMON, "cells", *(f"{c}_cells" for c in classes)]
    return [*_COMMON, *(f"{c}_area_mm2" for c in classes)]


def _summary_fields(summary: Mapping, task: str) -> Dict[str, object]:
    size = summary.get("size") or [None, None]
    row = dict(width=size[0], height=size[1], mpp=summary.get("mpp"), tissue_area_mm2=summary.get("tissue_area_mm2"),
               windows=summary.get("windows", summary.get("tiles")),
               windows_skipped=summary.get("windows_skipped", summary.get("tiles_skipped")),
               seconds=summary.get("seconds"))
    classes = summary.get("classes") or {}
    if task == "cells":
        row["cells"] = summary.get("cells")
        row.update({f"{c}_cells": (v or {}).get("cells") for c, v in classes.items()})
    else:
        row.update({f"{c}_area_mm2": (v or {}).get("area_mm2") for c, v in classes.items()})
    return row


def cohort_rows(jobs: Sequence[SlideJob], out_dir, task: str, fingerprints: Mapping[str, str],
                run_status: Optional[Mapping[str, str]] = None,
                run_errors: Optional[Mapping[str, str]] = None) -> List[Dict[str, object]]:
    """One row per job, in the cohort's order. ``fingerprints``: each job's expected fingerprint (by name);
    ``run_status`` / ``run_errors``: what this run did to the slides it reached (by name)."""
    run_status, run_errors = run_status or {}, run_errors or {}
    rows = []
    for job in jobs:
        state = slide_state(out_dir, job.name, task, job.path, fingerprints[job.name])
        row: Dict[str, object] = dict(name=job.name, path=job.path)
        if run_status.get(job.name) == "failed":
            row.update(status="failed", error=run_errors.get(job.name) or state.error)
        elif state.status == "complete":
            row["status"] = "done" if run_status.get(job.name) == "done" else "skipped-complete"
            row.update(_summary_fields(state.summary, task))
        elif state.status == "failed":
            row.update(status="failed", error=state.error)
        else:
            row["status"] = "missing"
        rows.append(row)
    return rows


def write_cohort_table(out_dir, rows: Sequence[Mapping], task: str, classes: Sequence[str]) -> Path:
    """Write ``cohort.csv`` in ``out_dir`` atomically (a reader never sees half a table)."""
    path = Path(out_dir) / COHORT_TABLE
    columns = _columns(task, classes)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path
