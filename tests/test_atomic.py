"""Crash-safe output: temporaries named by owner, sets of files published together, recovery after kill -9."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from uniseg.utils import atomic
from uniseg.utils.atomic import (PendingFile, atomic_output, atomic_output_dir, publish_together, recover_folder,
                                 remove_stale_temporaries)

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_named(folder: Path, stem: str, pid: int, host: str = None, suffix: str = ".png") -> Path:
    path = folder / f".{stem}.partial-{host or atomic._host()}-{pid}-0123abcd{suffix}"
    path.write_bytes(b"leftover")
    return path


def test_temporary_names_carry_host_and_pid_and_keep_the_suffix(tmp_path):
    with atomic_output(tmp_path / "case 1.mask.tif") as tmp:
        assert tmp.name.startswith(f".case 1.mask.partial-{atomic._host()}-{os.getpid()}-")
        assert tmp.suffix == ".tif" and tmp.exists()
        assert atomic._owner(tmp.name, atomic._TEMP_RE) == (atomic._host(), os.getpid())
        tmp.write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["case 1.mask.tif"]


def test_only_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "sub_probs").mkdir()
        dead = [_temp_named(tmp_path, "a_mask", _dead_pid()),
                _temp_named(tmp_path / "sub_probs", "tumor", _dead_pid(), suffix=".tif")]
        dead_dir = tmp_path / f".conv.partial-{atomic._host()}-{_dead_pid()}-00ff00ff"
        dead_dir.mkdir()
        (dead_dir / "inside.png").write_bytes(b"x")
        kept = [_temp_named(tmp_path, "b_mask", live.pid),                       # a run still writing
                _temp_named(tmp_path, "c_mask", os.getpid()),                    # this process
                _temp_named(tmp_path, "d_mask", _dead_pid(), host="otherhost"),  # cannot be checked
                tmp_path / ".e_mask.partial-abc123.png",                         # not uniseg's naming
                tmp_path / "f_mask.png"]
        kept[3].write_bytes(b"x")
        kept[4].write_bytes(b"x")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted(dead + [dead_dir])
        assert all(p.exists() for p in kept) and not any(p.exists() for p in dead + [dead_dir])
    finally:
        live.kill()
        live.wait()


def test_atomic_output_dir_message_names_the_flag_and_the_argument(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(FileExistsError, match=r"--overwrite.*overwrite=True"):
        with atomic_output_dir(tmp_path / "out"):
            pass
    with atomic_output_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "y").write_text("y")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no backup or temporary left


def _staged(folder: Path, name: str, text: str) -> PendingFile:
    pending = PendingFile(folder / name)
    pending.tmp.write_text(text)
    return pending


def test_publish_together_replaces_a_set_and_removes_the_old_leftovers(tmp_path):
    (tmp_path / "s_mask.png").write_text("old png")
    (tmp_path / "s.geojson").write_text("old geojson")
    (tmp_path / "s_summary.json").write_text("old summary")
    (tmp_path / "s_probs").mkdir()
    (tmp_path / "s_probs" / "tumor.tif").write_text("old tumor")
    files = [_staged(tmp_path, "s_mask.png", "new png"), _staged(tmp_path, "s_mask.tif", "new tif")]
    marker = _staged(tmp_path, "s_summary.json", "new summary")
    published = publish_together(files, marker, remove=[tmp_path / "s.geojson", tmp_path / "s_probs" / "tumor.tif"])
    assert published == [tmp_path / n for n in ("s_mask.png", "s_mask.tif", "s_summary.json")]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "s_mask.png": "new png", "s_mask.tif": "new tif", "s_summary.json": "new summary"}


def test_a_failure_before_the_journal_changes_nothing(tmp_path, monkeypatch):
    (tmp_path / "s_mask.png").write_text("old png")
    (tmp_path / "s_summary.json").write_text("old summary")
    files = [_staged(tmp_path, "s_mask.png", "new png")]
    marker = _staged(tmp_path, "s_summary.json", "new summary")

    @contextlib.contextmanager
    def full_disk(path):  # the journal cannot be written
        raise OSError(28, "No space left on device")
        yield

    monkeypatch.setattr(atomic, "atomic_output", full_disk)
    with pytest.raises(OSError, match="No space left"):
        publish_together(files, marker)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "s_mask.png": "old png", "s_summary.json": "old summary"}


_CHILD = """
import importlib.util, os, signal, sys
from pathlib import Path
# uniseg.utils without uniseg/__init__.py, which would load torch and the OpenMMLab stack in every child
import types
package = types.ModuleType("uniseg")
package.__path__ = [{package!r}]
sys.modules["uniseg"] = package
import uniseg.utils.atomic as atomic
PendingFile, publish_together = atomic.PendingFile, atomic.publish_together

folder, kill_at = Path({folder!r}), {kill_at!r}
real_replace, real_unlink, renames = os.replace, os.unlink, []

def replace(src, dst, *args, **kwargs):
    # count the renames of the commit (those made while a journal exists), die at the chosen one
    if any(".journal-" in name for name in os.listdir(folder)) and ".journal-" not in str(dst):
        renames.append(dst)
        if kill_at == len(renames):
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

def unlink(path, *args, **kwargs):
    if kill_at == 0 and str(path).endswith("s_summary.json"):  # just before the old set stops being complete
        os.kill(os.getpid(), signal.SIGKILL)
    return real_unlink(path, *args, **kwargs)

os.replace, os.unlink = replace, unlink
files = []
for name in ("s_mask.png", "s_mask.tif", "s_probs/tumor.tif"):
    pending = PendingFile(folder / name)
    pending.tmp.write_text("new " + name)
    files.append(pending)
marker = PendingFile(folder / "s_summary.json")
marker.tmp.write_text("new summary")
publish_together(files, marker, remove=[folder / "s.geojson"])
print("finished")
"""

OLD = {"s_mask.png": "old s_mask.png", "s_mask.tif": "old s_mask.tif", "s.geojson": "old geojson",
       "s_summary.json": "old summary"}
NEW = {"s_mask.png": "new s_mask.png", "s_mask.tif": "new s_mask.tif", "s_probs/tumor.tif": "new s_probs/tumor.tif",
       "s_summary.json": "new summary"}


def _visible(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


@pytest.mark.parametrize("kill_at", [0, 1, 2, 3, 4, None])
def test_kill_9_during_the_commit_never_leaves_a_mixed_set_that_looks_complete(tmp_path, kill_at):
    """Killed before the old summary goes (0), at each data rename (1..3), at the summary rename (4), or not."""
    folder = tmp_path / "out"
    folder.mkdir()
    for name, text in OLD.items():
        (folder / name).write_text(text)
    code = _CHILD.format(package=str(REPO / "uniseg"), folder=str(folder), kill_at=kill_at)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if kill_at is None:
        assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr
        assert _visible(folder) == NEW
        assert not any(p.name.startswith(".") for p in folder.rglob("*"))
        return
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    after_kill = _visible(folder)
    if "s_summary.json" in after_kill:  # a summary means: a whole set, of one run
        assert after_kill == OLD, after_kill
    else:
        assert kill_at >= 1  # the old summary went first, so the renames that followed did not look complete
    journals = [p for p in folder.iterdir() if ".journal-" in p.name]
    assert len(journals) == 1

    notes = recover_folder(folder)  # the next start: the killed process is dead, its journal is rolled forward
    assert any("completed the commit" in note for note in notes), notes
    assert _visible(folder) == NEW
    assert not any(p.name.startswith(".") for p in folder.rglob("*")), sorted(folder.rglob("*"))
    assert recover_folder(folder) == []  # nothing left to do


def test_a_live_processs_journal_is_left_alone(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp = _temp_named(folder, "s_summary", live.pid, suffix=".json")
        journal = folder / f".s_summary.json.journal-{atomic._host()}-{live.pid}"
        journal.write_text(json.dumps({"publish": [[tmp.name, "s_summary.json", [0, 0]]], "remove": []}))
        assert recover_folder(folder) == []
        assert journal.exists() and tmp.exists() and not (folder / "s_summary.json").exists()
    finally:
        live.kill()
        live.wait()


def test_a_journal_whose_files_were_lost_never_publishes_its_marker(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    pid = _dead_pid()
    marker_tmp = _temp_named(folder, "s_summary", pid, suffix=".json")
    data_tmp = folder / f".s_mask.partial-{atomic._host()}-{pid}-00000000.png"  # listed, but gone
    (folder / "s_mask.png").write_text("a file of another run, not the renamed temporary")
    journal = folder / f".s_summary.json.journal-{atomic._host()}-{pid}"
    journal.write_text(json.dumps({"publish": [[data_tmp.name, "s_mask.png", [0, 0]],
                                               [marker_tmp.name, "s_summary.json", [0, 0]]], "remove": []}))
    notes = recover_folder(folder)
    assert any("could not be completed" in note and "s_mask.png" in note for note in notes), notes
    assert not (folder / "s_summary.json").exists() and not journal.exists() and not marker_tmp.exists()


def test_recovery_skips_an_unreadable_journal_and_keeps_working(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    journal = folder / f".s_summary.json.journal-{atomic._host()}-{_dead_pid()}"
    journal.write_text("{not json")
    notes = recover_folder(folder)
    assert any("unreadable commit journal" in note for note in notes)
    assert journal.exists()
