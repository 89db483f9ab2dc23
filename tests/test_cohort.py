"""Cohorts of slides: manifests and patterns, sharding across ranks, resume fingerprints, the cohort table, and
tools/infer.py under torchrun with gloo (2 CPU processes): every slide once, the same outputs as one
process, a killed rank resumed, bad inputs recorded per slide."""
from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from uniseg.inference.api import segment_file
from uniseg.inference.cohort import ManifestError, SlideJob, expand_inputs, read_manifest, shard, slide_weight
from uniseg.inference.cohort_table import cohort_rows, write_cohort_table
from uniseg.inference.resume import (NOT_IN_FINGERPRINT, clear_failure, config_digest, failure_name, fingerprint,
                                     record_failure, slide_state)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_infer_api import _blobs, _segmentor, _write_png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs/uni/mask2former_uni-tiny-adapter_1xb4-1k_ihc-demo-128x128.py"


# ---------------------------------------------------------------------------- manifests and patterns
def test_text_manifest_skips_comments_and_blank_lines_and_resolves_paths_against_its_folder(tmp_path):
    manifest = tmp_path / "cohort" / "list.txt"
    manifest.parent.mkdir()
    manifest.write_text("# slides of study 7\n\na.svs\n  sub/b.tif  \n/abs/c.svs\n")
    jobs = read_manifest(str(manifest))
    assert [j.path for j in jobs] == [str(manifest.parent / "a.svs"), str(manifest.parent / "sub/b.tif"), "/abs/c.svs"]
    assert [j.name for j in jobs] == ["a", "b", "c"]
    assert [j.source for j in jobs] == [f"{manifest}:3", f"{manifest}:4", f"{manifest}:5"]


def test_csv_manifest_columns_override_the_command_line_where_given(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('\ufeffPath,region,mpp,name\nx.svs,"10,20,300,400",0.25,first\ny.svs,,,\nz.svs,,,zed\n')
    jobs = read_manifest(str(manifest), region="0,0,64,64", mpp=0.5)
    assert jobs[0] == SlideJob(str(tmp_path / "x.svs"), "first", "10,20,300,400", 0.25, f"{manifest}:2")
    assert jobs[1] == SlideJob(str(tmp_path / "y.svs"), "y_0_0_64_64", "0,0,64,64", 0.5, f"{manifest}:3")
    assert (jobs[2].name, jobs[2].region) == ("zed", "0,0,64,64")
    only_paths = tmp_path / "p.csv"
    only_paths.write_text("path\nq.png\n")
    assert read_manifest(str(only_paths)) == [SlideJob(str(tmp_path / "q.png"), "q", None, None, f"{only_paths}:2")]


@pytest.mark.parametrize("text, line, message", [
    ("region,mpp\n\"0,0,8,8\",0.5\n", 1, r"no 'path' column"),
    ("path,regoin\na.svs,\n", 1, r"unknown column\(s\) \['regoin'\]"),
    ("path,path\na.svs,b.svs\n", 1, r"repeated column"),
    ('path,region\na.svs,"0,0,10,10"\nb.svs,"1,2,3"\n', 3, r"invalid region '1,2,3'"),
    ('path,region\na.svs,"0,0,0,10"\n', 2, r"non-positive size"),
    ("path,mpp\na.svs,0.5\nb.svs,-1\n", 3, r"mpp '-1' is not a number > 0"),
    ("path,mpp\na.svs,fast\n", 2, r"mpp 'fast'"),
    ("path,name\na.svs,../up\n", 2, r"name '../up' is not a plain file name"),
    ("path,region\na.svs,0,0,8,8\n", 2, r"5 fields but the header names 2 columns"),
    ("path,mpp\n,0.5\n", 2, r"no path"),
])
def test_a_bad_manifest_line_names_the_file_and_the_line(tmp_path, text, line, message):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(text)
    with pytest.raises(ManifestError, match=rf"{re.escape(str(manifest))}:{line}: .*{message}"):
        read_manifest(str(manifest))


def test_empty_or_missing_manifests_are_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    with pytest.raises(ManifestError, match="empty.txt: the manifest lists no slides"):
        read_manifest(str(tmp_path / "empty.txt"))
    with pytest.raises(ManifestError, match="gone.csv: manifest file not found"):
        expand_inputs([str(tmp_path / "gone.csv")])


def test_patterns_expand_sorted_and_a_pattern_matching_nothing_is_an_error(tmp_path):
    for name in ("b.png", "a.png", "c.tif"):
        (tmp_path / name).write_bytes(b"")
    jobs = expand_inputs([str(tmp_path / "*.png"), str(tmp_path / "c.tif")])
    assert [Path(j.path).name for j in jobs] == ["a.png", "b.png", "c.tif"]
    with pytest.raises(ManifestError, match=r"\*.svs: this INPUT pattern matches no file"):
        expand_inputs([str(tmp_path / "*.svs")])


def test_output_names_must_differ_ignoring_case_across_manifests_and_the_command_line(tmp_path):
    (tmp_path / "m.txt").write_text("one/Slide.svs\n")
    with pytest.raises(ValueError, match=r"would both write outputs named slide_\*"):
        expand_inputs([str(tmp_path / "m.txt"), str(tmp_path / "two" / "slide.svs")])
    (tmp_path / "n.csv").write_text("path,name\none/Slide.svs,first\n")
    assert [j.name for j in expand_inputs([str(tmp_path / "n.csv"), str(tmp_path / "two" / "slide.svs")])] == [
        "first", "slide"]


def test_a_manifests_tissue_masks_resolve_against_its_folder_and_empty_cells_keep_the_command_lines(tmp_path):
    manifest = tmp_path / "cohort" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,tissue_mask\na.svs,masks/a.geojson\nb.svs,\nc.svs,/abs/c.png\n")
    assert [j.tissue_mask for j in read_manifest(str(manifest))] == [
        str(manifest.parent / "masks/a.geojson"), None, "/abs/c.png"]
    assert [j.tissue_mask for j in expand_inputs([str(manifest)], tissue_mask="all.png")] == [
        str(manifest.parent / "masks/a.geojson"), "all.png", "/abs/c.png"]
    (tmp_path / "list.txt").write_text("d.svs\n")
    assert [j.tissue_mask for j in expand_inputs([str(tmp_path / "list.txt"), "e.svs"], tissue_mask="all.png")] == [
        "all.png", "all.png"]


def test_a_slides_own_mask_applies_under_no_tissue_detection_and_the_others_run_every_window(tmp_path):
    cli = _cli()
    (tmp_path / "m.csv").write_text("path,tissue_mask\na.svs,a.geojson\nb.svs,\n")
    args = cli.parse_args(["config.py", "model.pth", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"),
                           "--no-tissue-detection"])
    given = [cli._slide_options(cli._segment_options(args), job) for job in args.jobs]
    assert [(o["tissue_mask"], o["tissue_detection"]) for o in given] == [(str(tmp_path / "a.geojson"), True),
                                                                          (None, False)]


def _cli():
    spec = importlib.util.spec_from_file_location("uniseg_infer_cli", REPO / "tools/infer.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def _square_geojson(path: Path, side: int) -> Path:
    """A GeoJSON tissue mask: one square at the slide's top-left corner, in level-0 pixels."""
    square = [[0, 0], [side, 0], [side, side], [0, side], [0, 0]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [square]}}]}))
    return path


def test_the_cli_refuses_a_bad_manifest_before_loading_anything(tmp_path, capsys):
    cli = _cli()
    (tmp_path / "m.csv").write_text('path,region\na.svs,"0,0,8"\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["config.py", "model.pth", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'm.csv'}:2: invalid region" in capsys.readouterr().err


# ---------------------------------------------------------------------------- sharding
def _optimum(weights, world):
    """The smallest possible largest load, by trying every assignment (small cases only)."""
    return min(max(sum(w for w, r in zip(weights, assign) if r == rank) for rank in range(world))
               for assign in itertools.product(range(world), repeat=len(weights)))


@pytest.mark.parametrize("seed", range(6))
def test_sharding_gives_each_slide_to_one_rank_largest_first_and_balances_the_ranks(seed):
    rng = np.random.default_rng(seed)
    weights = [int(w) for w in rng.integers(1, 1000, size=7)]
    jobs = [SlideJob(f"s{i}.svs", f"s{i}") for i in range(len(weights))]
    for world in (1, 2, 3):
        assignment = shard(jobs, world, weights)
        assert sorted(i for part in assignment for i in part) == list(range(len(jobs)))  # each slide exactly once
        for part in assignment:
            assert [weights[i] for i in part] == sorted((weights[i] for i in part), reverse=True)  # largest first
        largest = max(sum(weights[i] for i in part) for part in assignment)
        assert largest <= 4 / 3 * _optimum(weights, world)  # the longest-processing-time bound
        assert shard(jobs, world, weights) == assignment  # every rank computes the same
    assert shard(jobs, 2, [5, 5, 5, 5, 5, 5, 5]) == [[0, 2, 4, 6], [1, 3, 5]]  # ties keep the manifest's order


def test_slide_weight_is_the_file_size_or_a_regions_pixels(tmp_path):
    (tmp_path / "s.svs").write_bytes(b"x" * 5000)
    assert slide_weight(SlideJob(str(tmp_path / "s.svs"), "s")) == 5000
    assert slide_weight(SlideJob(str(tmp_path / "s.svs"), "s", "0,0,10,20")) == 200
    assert slide_weight(SlideJob(str(tmp_path / "s.svs"), "s", "0,0,1000,1000")) == 5000
    assert slide_weight(SlideJob(str(tmp_path / "missing.svs"), "m")) == 0


# ---------------------------------------------------------------------------- fingerprints
_OPTIONS = dict(formats=["png", "overlay"], region=None, level=None, target_mpp=None, slide_mpp=None, tile=None,
                stride=None, batch_size=4, window=None, tissue_threshold=None, export_options={}, amp=False,
                allow_partial=False)


def test_the_fingerprint_follows_what_changes_outputs_and_ignores_what_does_not():
    from mmengine.config import Config

    cfg = Config.fromfile(str(DEMO_CONFIG))
    base = fingerprint(config_digest(cfg), "w" * 64, _OPTIONS)
    assert fingerprint(config_digest(Config.fromfile(str(DEMO_CONFIG))), "w" * 64, dict(_OPTIONS)) == base
    changed = [dict(_OPTIONS, formats=["png"]), dict(_OPTIONS, region="0,0,8,8"), dict(_OPTIONS, amp=True),
               dict(_OPTIONS, tile=(64, 64)), dict(_OPTIONS, target_mpp=1.0), dict(_OPTIONS, slide_mpp=0.25),
               dict(_OPTIONS, window="uniform"), dict(_OPTIONS, tissue_threshold=0.1),
               dict(_OPTIONS, export_options={"geojson": {"simplify_tolerance": 1.0}}), dict(_OPTIONS, score_thr=0.3)]
    prints = {fingerprint(config_digest(cfg), "w" * 64, options) for options in changed}
    assert len(prints) == len(changed) and base not in prints
    assert fingerprint(config_digest(cfg), "v" * 64, _OPTIONS) != base  # other weights
    other = Config.fromfile(str(DEMO_CONFIG))
    other.merge_from_dict({"model.test_cfg.stride": (32, 32)})
    assert fingerprint(config_digest(other), "w" * 64, _OPTIONS) != base  # another config
    for name, value in dict(batch_size=1, num_workers=4, progress=False, device="cuda:1", name="other").items():
        assert name in NOT_IN_FINGERPRINT
        assert fingerprint(config_digest(cfg), "w" * 64, dict(_OPTIONS, **{name: value})) == base


def test_the_fingerprint_of_a_command_line_tissue_mask_follows_its_content_not_only_its_path(tmp_path):
    cli = _cli()
    mask = _square_geojson(tmp_path / "mask.geojson", 40)
    args = cli.parse_args(["config.py", "model.pth", "a.svs", "--out", str(tmp_path / "out"),
                           "--tissue-mask", str(mask)])

    def print_of_a():
        return fingerprint("c" * 64, "w" * 64, cli._job_options(args, cli._segment_options(args), args.jobs[0]))

    first = print_of_a()
    assert print_of_a() == first
    _square_geojson(mask, 41)  # the same path, redrawn
    assert print_of_a() != first
    mask.unlink()  # gone: matches no earlier run (the run fails on it and says why)
    assert print_of_a() != first


def test_the_weights_digest_is_the_checkpoints_recorded_checksum_else_computed():
    from uniseg.engine.checkpoint import add_checksum, digest
    from uniseg.inference.api import _weights_digest

    state = {"w": torch.arange(6.0)}
    plain = {"state_dict": state, "meta": {}}
    assert _weights_digest(plain) == digest(state)
    recorded = {"state_dict": state, "meta": {}}
    add_checksum(recorded)
    assert _weights_digest(recorded) == digest(state)
    recorded["meta"]["uniseg_checksum"]["state_dict"] = "f" * 64  # the recorded one is used, not recomputed
    assert _weights_digest(recorded) == "f" * 64
    assert _weights_digest({"state_dict": {"w": torch.arange(6.0) + 1}, "meta": {}}) != digest(state)


# ---------------------------------------------------------------------------- what a folder holds for a slide
def test_slide_state_complete_only_with_the_same_fingerprint_input_and_outputs(tmp_path):
    image = _write_png(tmp_path / "in" / "case.png", _blobs())
    out = tmp_path / "out"
    assert slide_state(out, "case", "semantic", str(image), "f1").status == "absent"
    segment_file(_segmentor(), str(image), str(out), formats=["png", "probs"], progress=False, fingerprint="f1")
    assert json.loads((out / "case_summary.json").read_text())["fingerprint"] == "f1"
    assert slide_state(out, "case", "semantic", str(image), "f1").status == "complete"
    assert slide_state(out, "case", "semantic", str(image), "f2").status == "absent"  # other settings
    other = _write_png(tmp_path / "in2" / "case.png", _blobs())
    assert slide_state(out, "case", "semantic", str(other), "f1").status == "absent"  # another slide
    (out / "case_probs" / "dark.tif").unlink()  # an output of the set lost
    assert slide_state(out, "case", "semantic", str(image), "f1").status == "absent"
    record_failure(out, "case", "semantic", str(image), "case.png: something broke", "f1")
    state = slide_state(out, "case", "semantic", str(image), "f1")
    assert (state.status, state.error) == ("failed", "case.png: something broke")
    clear_failure(out, "case", "semantic")
    assert not (out / failure_name("case")).exists()
    assert failure_name("case", "cells") == "case_cells_error.json"


def test_segment_file_writes_under_the_name_given(tmp_path):
    image = _write_png(tmp_path / "case.png", _blobs())
    summary = segment_file(_segmentor(), str(image), str(tmp_path / "out"), formats=["png"], progress=False,
                           name="patient7")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["patient7_mask.png", "patient7_summary.json",
                                                                      "patient7_tissue.png"]
    assert summary["input"] == str(image)


def test_the_cohort_table_is_rebuilt_from_the_folder(tmp_path):
    images = [_write_png(tmp_path / "in" / f"c{i}.png", _blobs(seed=i)) for i in range(4)]
    out = tmp_path / "out"
    jobs = [SlideJob(str(p), p.stem) for p in images]
    prints = {job.name: "fp" for job in jobs}
    summaries = [segment_file(_segmentor(), str(images[i]), str(out), formats=["png"], progress=False,
                              fingerprint="fp") for i in (0, 1)]
    record_failure(out, "c2", "semantic", str(images[2]), "c2.png: unreadable", "fp")
    rows = cohort_rows(jobs, out, "semantic", prints, run_status={"c0": "done"})
    assert [(r["name"], r["status"], r.get("error")) for r in rows] == [
        ("c0", "done", None), ("c1", "skipped-complete", None), ("c2", "failed", "c2.png: unreadable"),
        ("c3", "missing", None)]
    path = write_cohort_table(out, rows, "semantic", ("background", "dark"))
    table = list(csv.DictReader(path.open()))
    assert list(table[0]) == ["name", "path", "status", "error", "width", "height", "mpp", "tissue_area_mm2",
                              "windows", "windows_skipped", "seconds", "background_area_mm2", "dark_area_mm2"]
    for row, summary in zip(table, summaries):
        assert (int(row["width"]), int(row["height"])) == tuple(summary["size"])
        assert int(row["windows"]) == summary["tiles"] and float(row["seconds"]) == summary["seconds"]
        assert row["dark_area_mm2"] == "" and summary["classes"]["dark"]["area_mm2"] is None  # a PNG has no mpp
    assert table[2]["error"] == "c2.png: unreadable" and table[3]["width"] == ""


def test_the_cohort_table_of_a_cell_model_counts_cells_per_class_and_tissue(tmp_path):
    from test_infer_api import _pyramid
    from test_infer_cells import _stand_in

    image = np.full((160, 200, 3), 40, np.uint8)
    for x, y in ((30, 40), (100, 90), (160, 120)):
        cv2.circle(image, (x, y), 9, (235, 235, 235), -1)
    slide = _pyramid(tmp_path / "cells.tif", image, mpp=0.5)
    out = tmp_path / "out"
    summary = segment_file(_stand_in(), str(slide), str(out), formats=["csv"], progress=False, fingerprint="fp")
    job = SlideJob(str(slide), "cells")
    rows = cohort_rows([job], out, "cells", {"cells": "fp"}, run_status={"cells": "done"})
    table = list(csv.DictReader(write_cohort_table(out, rows, "cells", ("nucleus",)).open()))
    assert list(table[0])[-2:] == ["cells", "nucleus_cells"]
    row = table[0]
    assert row["status"] == "done" and int(row["cells"]) == summary["cells"] == 3
    assert int(row["nucleus_cells"]) == summary["classes"]["nucleus"]["cells"] == 3
    assert float(row["tissue_area_mm2"]) == summary["tissue_area_mm2"] > 0
    assert int(row["windows"]) == summary["windows"] and float(row["mpp"]) == 0.5


# ---------------------------------------------------------------------------- tools/infer.py under torchrun
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny checkpoint of the demo config and a manifest of five small slides of different sizes."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    root = tmp_path_factory.mktemp("cohort")
    cfg = Config.fromfile(str(DEMO_CONFIG))
    torch.manual_seed(0)
    torch.save({"state_dict": MODELS.build(cfg.model).state_dict(), "meta": {}}, root / "model.pth")
    rng = np.random.default_rng(0)
    slides = root / "slides"
    slides.mkdir()
    for i, (h, w) in enumerate([(200, 256), (128, 160), (96, 128), (256, 300), (140, 140)]):
        image = np.full((h, w, 3), 225, np.uint8)
        for _ in range(5):
            cv2.circle(image, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(5, 25)),
                       tuple(int(v) for v in rng.integers(20, 150, 3)), -1)
        _write_png(slides / f"s{i}.png", image)
    manifest = slides / "manifest.csv"
    manifest.write_text('path,region,mpp,name\ns0.png,,0.5,\ns1.png,"0,0,64,64",,s1roi\ns2.png,,,\n'
                        's3.png,,0.5,big\ns4.png,,,\n')
    return dict(root=root, checkpoint=root / "model.pth", manifest=manifest,
                names=["s0", "s1roi", "s2", "big", "s4"])


def _free_port() -> int:
    """A port nobody listens on now (other test runs on this machine may use torchrun too)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _infer(checkpoint, manifest, out, nproc=None, env=None, force=False):
    command = [str(REPO / "tools/infer.py"), str(DEMO_CONFIG), str(checkpoint), str(manifest), "--out", str(out),
               "--no-progress"] + (["--force"] if force else [])
    if nproc:
        command = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(_free_port()),
                   *command, "--launcher", "pytorch"]
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=environment)


def _written(stdout: str) -> list:
    """Names whose summary a run wrote (each slide's summary is published once, last of its set)."""
    return sorted(re.findall(r"wrote .*/(\w+)_summary\.json", stdout))


def _table(out: Path) -> dict:
    return {row["name"]: row for row in csv.DictReader((out / "cohort.csv").open())}


def _comparable(summary_path: Path) -> dict:
    """A summary without what differs between identical runs: timings and the folder it was written to."""
    summary = json.loads(summary_path.read_text())
    for key in ("seconds", "tiles_per_second", "finished"):
        summary.pop(key)
    summary["outputs"] = [Path(p).name for p in summary["outputs"]]
    return summary


def test_a_manifests_tissue_mask_column_restricts_its_slide_and_its_content_is_in_the_fingerprint(
        cohort, tmp_path, capsys, monkeypatch):
    """One process, in this one (fast): a slide with its own GeoJSON, one whose mask is missing (fails alone,
    naming the mask), one detected; a rerun skips what is unchanged and redoes the slide whose mask was redrawn."""
    monkeypatch.setenv("LOCAL_RANK", "0")  # main() sets it when unset
    slides = cohort["manifest"].parent
    _square_geojson(tmp_path / "masks" / "s3.geojson", 40)  # the top-left window of s3's 3 x 3 only
    manifest = tmp_path / "masked.csv"
    manifest.write_text(f"path,tissue_mask\n{slides / 's3.png'},masks/s3.geojson\n{slides / 's4.png'},\n"
                        f"{slides / 's2.png'},masks/gone.geojson\n")
    out = tmp_path / "out"
    cli = _cli()
    argv = [str(DEMO_CONFIG), str(cohort["checkpoint"]), str(manifest), "--out", str(out), "--no-progress",
            "--formats", "png", "--device", "cpu", "--workers", "0"]

    assert cli.main(argv) == 1
    std = capsys.readouterr()
    assert _written(std.out) == ["s3", "s4"]
    masked = json.loads((out / "s3_summary.json").read_text())
    assert masked["tissue_mask"]["source"] == f"geojson: {tmp_path / 'masks' / 's3.geojson'}"
    assert masked["windows_outside_tissue"] == 8 and masked["tiles"] == 9  # of s3's 3 x 3 windows
    detected = json.loads((out / "s4_summary.json").read_text())
    assert detected["tissue_mask"]["source"].startswith("detected")
    table = _table(out)
    assert {n: row["status"] for n, row in table.items()} == {"s3": "done", "s4": "done", "s2": "failed"}
    error = table["s2"]["error"]
    assert str(tmp_path / "masks" / "gone.geojson") in error and "no such file" in error and "s2.png" in error
    assert json.loads((out / failure_name("s2")).read_text())["error"] == error

    assert cli.main(argv) == 1  # unchanged: the complete slides are skipped, the failed one fails again
    std = capsys.readouterr()
    assert _written(std.out) == [] and sorted(re.findall(r"skipped: complete \((\w+),", std.out)) == ["s3", "s4"]

    _square_geojson(tmp_path / "masks" / "s3.geojson", 100)  # redrawn under the same name: now 2 x 2 windows
    _square_geojson(tmp_path / "masks" / "gone.geojson", 40)  # drawn at last
    assert cli.main(argv) == 0
    std = capsys.readouterr()
    assert _written(std.out) == ["s2", "s3"] and re.findall(r"skipped: complete \((\w+),", std.out) == ["s4"]
    assert json.loads((out / "s3_summary.json").read_text())["windows_outside_tissue"] == 9 - 4
    assert {n: row["status"] for n, row in _table(out).items()} == {
        "s3": "done", "s4": "skipped-complete", "s2": "done"}
    assert not (out / failure_name("s2")).exists()


@pytest.mark.slow
def test_two_gloo_ranks_segment_each_slide_once_as_one_process_does_and_a_killed_rank_is_resumed(cohort, tmp_path):
    from uniseg.utils.atomic import recover_folder

    names = cohort["names"]
    single = tmp_path / "single"
    proc = _infer(cohort["checkpoint"], cohort["manifest"], single)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _written(proc.stdout) == sorted(names)

    dist = tmp_path / "dist"
    proc = _infer(cohort["checkpoint"], cohort["manifest"], dist, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _written(proc.stdout) == sorted(names)  # every slide exactly once, over both ranks
    assert {row["status"] for row in _table(dist).values()} == {"done"} and list(_table(dist)) == names
    files = sorted(p.name for p in single.iterdir() if p.name != "cohort.csv")
    assert sorted(p.name for p in dist.iterdir() if p.name != "cohort.csv") == files
    for name in files:  # masks and overlays byte-identical; summaries identical but for timings
        if name.endswith("_summary.json"):
            assert _comparable(dist / name) == _comparable(single / name), name
        else:
            assert (dist / name).read_bytes() == (single / name).read_bytes(), name

    # rank 0 kills itself (SIGKILL) after its first slide; torchrun then stops rank 1 wherever it is
    jobs = expand_inputs([str(cohort["manifest"])])
    assert len(shard(jobs, 2)[0]) >= 2  # so rank 0 leaves at least one slide unfinished
    resumed = tmp_path / "resumed"
    proc = _infer(cohort["checkpoint"], cohort["manifest"], resumed, nproc=2,
                  env={"UNISEG_INFER_TEST_KILL_AFTER": "0:1"})
    assert proc.returncode != 0
    recover_folder(resumed)  # an interrupted commit of rank 1 counts as finished (the rerun completes it too)
    finished = sorted(p.name[:-len("_summary.json")] for p in resumed.glob("*_summary.json"))
    assert 1 <= len(finished) < len(names), finished
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in resumed.iterdir()
              if any(p.name.startswith(f"{n}_") for n in finished)}

    proc = _infer(cohort["checkpoint"], cohort["manifest"], resumed, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _written(proc.stdout) == sorted(set(names) - set(finished))  # only the unfinished slides redone
    assert sorted(re.findall(r"skipped: complete \((\w+),", proc.stdout)) == finished
    assert {name: (resumed / name).stat().st_ino for name in before} == {n: v[0] for n, v in before.items()}
    assert {name: (resumed / name).stat().st_mtime_ns for name in before} == {n: v[1] for n, v in before.items()}
    table = _table(resumed)
    assert list(table) == names
    assert {n: row["status"] for n, row in table.items()} == {
        n: "skipped-complete" if n in finished else "done" for n in names}
    for name in files:
        if not name.endswith("_summary.json"):
            assert (resumed / name).read_bytes() == (single / name).read_bytes(), name


@pytest.mark.slow
def test_bad_slides_fail_on_their_own_and_the_others_complete(cohort, tmp_path):
    slides = cohort["manifest"].parent
    (slides / "corrupt.tif").write_bytes(b"II*\x00garbage")
    manifest = slides / "bad.csv"
    manifest.write_text('path,region\ns0.png,\nmissing.png,\ncorrupt.tif,\ns2.png,"1000,1000,64,64"\ns4.png,\n')
    out = tmp_path / "out"
    proc = _infer(cohort["checkpoint"], manifest, out, nproc=2)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "3 of 5 input(s) failed" in proc.stderr
    table = _table(out)
    assert {n: row["status"] for n, row in table.items()} == {
        "s0": "done", "missing": "failed", "corrupt": "failed", "s2_1000_1000_64_64": "failed", "s4": "done"}
    assert "missing.png" in table["missing"]["error"] and "no such file" in table["missing"]["error"]
    assert "corrupt.tif" in table["corrupt"]["error"]
    outside = table["s2_1000_1000_64_64"]["error"]
    assert "s2.png" in outside and "outside the slide" in outside
    for name in ("missing", "corrupt", "s2_1000_1000_64_64"):
        assert json.loads((out / failure_name(name)).read_text())["error"] == table[name]["error"]
    assert (out / "s0_summary.json").is_file() and (out / "s4_summary.json").is_file()

    proc = _infer(cohort["checkpoint"], manifest, out, nproc=2)  # a rerun retries the failed only
    assert proc.returncode == 1 and _written(proc.stdout) == []
    assert sorted(re.findall(r"skipped: complete \((\w+),", proc.stdout)) == ["s0", "s4"]
    assert proc.stderr.count("error: ") == 3 and "3 of 5 input(s) failed" in proc.stderr
    proc = _infer(cohort["checkpoint"], manifest, out, nproc=2, force=True)  # --force: all again
    assert proc.returncode == 1 and _written(proc.stdout) == ["s0", "s4"]
    assert {n: row["status"] for n, row in _table(out).items()} == {
        "s0": "done", "missing": "failed", "corrupt": "failed", "s2_1000_1000_64_64": "failed", "s4": "done"}
