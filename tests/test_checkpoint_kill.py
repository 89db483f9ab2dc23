"""Real tools/train.py and tools/test.py processes under faults: SIGKILL in the middle of a checkpoint
save (one kept checkpoint; best-checkpoint rotation), an emptied last_checkpoint, a full disk, and
checkpoints that must not be evaluated (another class count, another model, flipped bytes, truncated,
empty). The kills are placed deterministically with tests/training_probes.py, not by timing."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_training import (CLASSES, PROBES, _assert_same_training_state, _env, _losses, _state, _train,
                           _write_config, _write_dataset, runtime_hooks_plus)
from uniseg.engine.checkpoint import load_verified_checkpoint, temporary_checkpoint_name

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    _write_dataset(root)
    (root / "splits" / "val.txt").write_text("t0\n")
    return root


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data) -> Path:
    """An uninterrupted run to iteration 6 (checkpoints at 2, 4, 6): the reference for resumed runs."""
    root = tmp_path_factory.mktemp("straight")
    _train(_write_config(root / "cfg.py", data, batch_size=2, max_iters=6), root / "work")
    return root / "work"


def _start(config: Path, work_dir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(config), "--work-dir", str(work_dir), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended (status {proc.returncode}) before {path.name} appeared"
        assert time.time() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _hooks(*probes: str) -> str:
    return PROBES + runtime_hooks_plus(*probes)


def _temporaries(work: Path) -> list:
    return sorted(p.name for p in work.iterdir() if ".partial" in p.name)


def _one_kept(tmp_path: Path, data: Path, probe: str) -> Path:
    return _write_config(tmp_path / "cfg.py", data, batch_size=2, max_iters=6,
                         checkpoint="dict(interval=2, max_keep_ckpts=1, save_best=None)", extra=_hooks(probe))


def _resume_and_compare(config: Path, work: Path, straight: Path) -> None:
    """``--resume`` finishes the run, bit-identical to the uninterrupted one, and leaves a clean work dir."""
    _train(config, work, "--resume")
    assert _temporaries(work) == []  # the interrupted save's temporary is removed at the start
    assert (work / "last_checkpoint").read_text() == str(work / "iter_6.pth")
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_6.pth"]
    _assert_same_training_state(_state(straight / "iter_6.pth"), _state(work / "iter_6.pth"))
    assert _losses(straight)[6] == _losses(work)[6]


def test_kill_as_the_only_kept_checkpoint_is_being_replaced(tmp_path, data, straight):
    """max_keep_ckpts=1, SIGKILL inside the save of iteration 4. mmengine's hook had already deleted
    iter_2.pth by then, and last_checkpoint named it: --resume had nothing to continue from."""
    marker = tmp_path / "saving"
    config = _one_kept(tmp_path, data, f"dict(type='PauseAtSaveHook', kind='periodic', occurrence=2, "
                                       f"marker='{marker}')")
    work = tmp_path / "work"
    proc = _start(config, work)
    _wait_for(marker, proc)  # paused inside the save of iteration 4
    assert marker.read_text() == "4"
    _kill(proc)
    latest = Path((work / "last_checkpoint").read_text())
    assert latest.is_file(), f"last_checkpoint names {latest.name}, which is gone"
    assert load_verified_checkpoint(str(latest))["meta"]["iter"] == 2
    _resume_and_compare(config, work, straight)  # (the probe pauses once: its marker exists now)


def test_kill_in_the_middle_of_writing_a_checkpoint(tmp_path, data, straight):
    """SIGKILL while the bytes of iter_4.pth are being written (max_keep_ckpts=1): the previous
    checkpoint is intact, the partial file is a temporary that --resume removes."""
    marker, release = tmp_path / "saving", tmp_path / "release"
    config = _one_kept(tmp_path, data, f"dict(type='PauseAtSaveHook', kind='periodic', occurrence=2, "
                                       f"marker='{marker}', release='{release}')")
    work = tmp_path / "work"
    proc = _start(config, work)
    _wait_for(marker, proc)  # paused inside the save of iteration 4, before any byte is written
    # The name the save writes to is a FIFO: the writer blocks after 64 KiB, and is killed mid-file.
    partial = work / temporary_checkpoint_name("iter_4.pth")
    os.mkfifo(partial)
    reader = os.open(partial, os.O_RDONLY | os.O_NONBLOCK)
    release.touch()
    head, deadline = b"", time.time() + 300
    while not head and time.time() < deadline:
        try:
            head = os.read(reader, 1 << 16)
        except BlockingIOError:
            pass
        time.sleep(0.01)
    assert head, "the checkpoint write did not start"
    assert proc.poll() is None
    _kill(proc)
    os.close(reader)
    partial.unlink()
    partial.write_bytes(head)  # what a killed write leaves: the file's first bytes
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_2.pth"]
    assert Path((work / "last_checkpoint").read_text()) == work / "iter_2.pth"
    _resume_and_compare(config, work, straight)  # (the probe pauses once: its marker exists now)


def test_a_checkpoint_left_by_a_kill_before_its_removal_is_removed_on_resume(tmp_path, data, straight):
    """SIGKILL after iter_4.pth is in place but before iter_2.pth (max_keep_ckpts=1) is removed: the
    state that kill leaves is made here directly (an iter_2.pth next to a complete iter_4.pth). iter_4.pth
    records iter_2 as still kept, so --resume removes it; it never accumulates over pre-emptions."""
    config = _write_config(tmp_path / "cfg.py", data, batch_size=2, max_iters=4,
                           checkpoint="dict(interval=2, max_keep_ckpts=1, save_best=None)")
    work = tmp_path / "work"
    _train(config, work)
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_4.pth"]
    runtime = load_verified_checkpoint(str(work / "iter_4.pth"))["message_hub"]["runtime_info"]
    assert list(runtime["keep_ckpt_ids"]) == [2, 4]  # the superseded step is recorded with the new checkpoint
    shutil.copy(straight / "iter_2.pth", work / "iter_2.pth")  # what the kill leaves behind
    config = _write_config(tmp_path / "cfg.py", data, batch_size=2, max_iters=6,
                           checkpoint="dict(interval=2, max_keep_ckpts=1, save_best=None)")
    _train(config, work, "--resume")
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_6.pth"]
    assert list(load_verified_checkpoint(str(work / "iter_6.pth"))["message_hub"]["runtime_info"]
                ["keep_ckpt_ids"]) == [4, 6]


def test_kill_while_saving_a_new_best_checkpoint(tmp_path, data):
    """save_best: SIGKILL when the second best checkpoint is about to be written. mmengine's hook had
    already deleted the previous best one, so the run had no best checkpoint at all."""
    marker = tmp_path / "saving"
    config = _write_config(
        tmp_path / "cfg.py", data, batch_size=2, max_iters=6,
        checkpoint="dict(interval=2, max_keep_ckpts=1, save_best='step', rule='greater')",
        extra=_hooks(f"dict(type='PauseAtSaveHook', kind='best', occurrence=2, marker='{marker}')") + f"""
train_cfg = dict(type='IterBasedTrainLoop', max_iters=6, val_interval=2)
val_cfg = dict(type='ValLoop')
val_evaluator = dict(type='StepMetric')
val_dataloader = dict(batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type='HistologySegDataset', data_root='{data}', ann_file='splits/val.txt',
                                   data_prefix=dict(img_path='images', seg_map_path='masks'),
                                   metainfo=dict(classes={CLASSES!r}),
                                   pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                                             dict(type='PackSegInputs')]))
""")
    work = tmp_path / "work"
    proc = _start(config, work)
    _wait_for(marker, proc)
    assert marker.read_text() == "4"
    _kill(proc)

    latest = Path((work / "last_checkpoint").read_text())
    assert latest == work / "iter_4.pth"
    hub = load_verified_checkpoint(str(latest))["message_hub"]["runtime_info"]
    best, best_score = Path(hub["best_ckpt"]), hub["best_score"]
    assert best.is_file(), f"the best checkpoint {best.name} recorded in {latest.name} is gone"
    assert load_verified_checkpoint(str(best))["meta"]["iter"] == 2

    _train(config, work, "--resume")  # (the probe pauses once: its marker exists now)
    final = load_verified_checkpoint(str(work / "iter_6.pth"))
    hub = final["message_hub"]["runtime_info"]
    assert hub["best_score"] > best_score and hub["best_ckpt"] == str(work / "best_step_iter_6.pth")
    assert sorted(p.name for p in work.glob("*.pth")) == ["best_step_iter_6.pth", "iter_6.pth"]
    assert _temporaries(work) == []


def _copy_run(source: Path, dest: Path, steps, pointer: str) -> Path:
    dest.mkdir(parents=True)
    for step in steps:
        shutil.copy(source / f"iter_{step}.pth", dest / f"iter_{step}.pth")
    (dest / "last_checkpoint").write_text(pointer)
    return dest


def test_resume_with_an_emptied_last_checkpoint(tmp_path, data, straight):
    """mmengine: 'checkpoint not found' with an empty name although iter_6.pth is there."""
    config = _write_config(tmp_path / "cfg.py", data, batch_size=2, max_iters=6)
    work = _copy_run(straight, tmp_path / "work", (2, 4, 6), pointer="")
    proc = _train(config, work, "--resume", "--cfg-options", "train_cfg.max_iters=8")
    log = proc.stdout + proc.stderr
    assert f"last_checkpoint is empty: resuming from {work / 'iter_6.pth'}" in log
    assert sorted(_losses(work)) == [7, 8] and (work / "iter_8.pth").is_file()


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, data, straight):
    """A file-size limit (as `ulimit -f`) below the checkpoint size: the save of iter_4 fails."""
    config = _write_config(tmp_path / "cfg.py", data, batch_size=2, max_iters=4,
                           checkpoint="dict(interval=2, max_keep_ckpts=1, save_best=None)")
    work = _copy_run(straight, tmp_path / "work", (2,), pointer=str(tmp_path / "work" / "iter_2.pth"))
    before = (work / "iter_2.pth").read_bytes()
    limit = 2 << 20  # bytes; a checkpoint of the tiny model is about 10 MiB

    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(config), "--work-dir", str(work), "--resume"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {work / 'iter_4.pth'}: writing the checkpoint failed ("), last_line
    assert "File too large" in last_line and f"{work / 'iter_2.pth'} is still the latest" in last_line
    assert (work / "iter_2.pth").read_bytes() == before
    assert (work / "last_checkpoint").read_text() == str(work / "iter_2.pth")
    assert _temporaries(work) == [] and not (work / "iter_4.pth").exists()


# ---------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def test_config(tmp_path_factory, data) -> Path:
    path = tmp_path_factory.mktemp("eval") / "eval.py"
    _write_config(path, data, batch_size=2, max_iters=6, extra=f"""
test_dataloader = dict(batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                       dataset=dict(type='HistologySegDataset', data_root='{data}', ann_file='splits/val.txt',
                                    data_prefix=dict(img_path='images', seg_map_path='masks'),
                                    metainfo=dict(classes={CLASSES!r}),
                                    pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                                              dict(type='PackSegInputs')]))
test_cfg = dict(type='TestLoop')
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
""")
    return path


def _resave(checkpoint: dict, path: Path) -> None:
    from uniseg.engine.hooks import SafeCheckpointHook

    SafeCheckpointHook().before_save_checkpoint(None, checkpoint)  # plain content + checksum, as training writes
    torch.save(checkpoint, path)


def _other_class_count(source: Path, path: Path) -> str:
    checkpoint = _state(source)
    for key in ("decode_head.cls_embed.weight", "decode_head.cls_embed.bias"):
        value = checkpoint["state_dict"][key]
        checkpoint["state_dict"][key] = torch.zeros((6,) + tuple(value.shape[1:]))  # 5 classes + no-object
    _resave(checkpoint, path)
    return r"does not fit this .*: 2 of other shape \(decode_head.cls_embed.weight \(6, "


def _unrelated(source: Path, path: Path) -> str:
    torch.save({"state_dict": {"features.0.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}}, path)
    return r"does not fit this .*missing from the checkpoint .* 2 unexpected \(features.0.weight, fc.bias\)"


def _flipped(source: Path, path: Path) -> str:
    from test_checkpoint import _data_entry_offset, _flip

    shutil.copy(source, path)
    _flip(path, _data_entry_offset(path))
    return r"corrupted: the '(state_dict|optimizer)' tensors do not match the checksum"


def _truncated(source: Path, path: Path) -> str:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return r"cannot be read as a checkpoint \(truncated or corrupted\?"


def _empty(source: Path, path: Path) -> str:
    path.write_bytes(b"")
    return r"empty file \(0 bytes\)"


@pytest.mark.parametrize("make", [_other_class_count, _unrelated, _flipped, _truncated, _empty],
                         ids=lambda f: f.__name__.strip("_"))
def test_test_tool_refuses_checkpoints_it_cannot_trust(tmp_path, straight, test_config, make):
    import re

    path = tmp_path / "model.pth"
    expected = make(straight / "iter_6.pth", path)
    cmd = [sys.executable, str(REPO / "tools" / "test.py"), str(test_config), str(path), "--work-dir",
           str(tmp_path / "eval")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "summary: mIoU" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {path}: "), last_line
    assert re.search(expected, last_line), last_line
