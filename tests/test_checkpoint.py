"""uniseg.engine.checkpoint: plain weights-only content, checksums, errors that name the file, strict
loading, which checkpoint --resume picks; and that importing uniseg changes nothing in mmengine."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from uniseg.engine.checkpoint import (CheckpointError, find_resume_checkpoint, load_mmengine_checkpoint,
                                      load_model_state, load_verified_checkpoint, remove_stale_temporaries,
                                      temporary_checkpoint_name)
from uniseg.engine.hooks import SafeCheckpointHook

REPO = Path(__file__).resolve().parents[1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))


def _message_hub_state() -> dict:
    from mmengine.logging import MessageHub

    hub = MessageHub(f"probe-{os.urandom(4).hex()}")
    for i, loss in enumerate([2.5, 1.25, 0.1 + 0.2]):
        hub.update_scalar("train/loss", loss)
        hub.update_scalar("train/iters", i)  # an int history: int64 in numpy
    hub.update_info("best_score", np.float64(71.37))
    hub.update_info("keep_ckpt_ids", [2, 4])
    return hub.state_dict()


def _training_checkpoint(model: nn.Module, it: int = 4) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    return {"meta": {"iter": it, "epoch": 0, "dataset_meta": {"classes": ("a", "b"), "palette": [[0, 0, 0]]}},
            "state_dict": OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items()),
            "message_hub": _message_hub_state(), "optimizer": optimizer.state_dict(),
            "param_schedulers": [{"last_step": it, "base_values": [1e-3]}]}


def _save_as_uniseg(checkpoint: dict, path: Path) -> Path:
    """Exactly what the hook does before mmengine writes the file."""
    SafeCheckpointHook().before_save_checkpoint(None, checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def saved(tmp_path) -> Path:
    return _save_as_uniseg(_training_checkpoint(_model()), tmp_path / "iter_4.pth")


# ---------------------------------------------------------------------------------------------- import
def test_importing_uniseg_changes_nothing_in_mmengine():
    code = """
import mmengine.fileio.backends.local_backend as lb, mmengine.logging.history_buffer as hb
import mmengine.runner.checkpoint as ck
before = (lb.LocalBackend.put, hb.HistoryBuffer.__getstate__, dict(ck.CheckpointLoader._schemes))
import uniseg, uniseg.engine
after = (lb.LocalBackend.put, hb.HistoryBuffer.__getstate__, dict(ck.CheckpointLoader._schemes))
print([name for name, b, a in zip(("put", "getstate", "schemes"), before, after) if b != a])
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------- plain content
def test_uniseg_checkpoints_load_with_torchs_default_weights_only_loader(saved):
    checkpoint = torch.load(saved)  # torch >= 2.6 default: weights_only=True, no allowlist
    buffer = checkpoint["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, dict) and isinstance(buffer["log_history"], torch.Tensor)


def test_message_hub_round_trip_is_exact(saved):
    from mmengine.logging import HistoryBuffer

    original = _message_hub_state()
    checkpoint = load_verified_checkpoint(str(saved))
    SafeCheckpointHook().after_load_checkpoint(None, checkpoint)
    hub = checkpoint["message_hub"]
    for key, buffer in original["log_scalars"].items():
        restored = hub["log_scalars"][key]
        assert isinstance(restored, HistoryBuffer)
        for a, b in zip(buffer.data, restored.data):
            assert a.dtype == b.dtype and np.array_equal(a, b)  # bits and dtypes, so smoothed logs repeat
        assert restored.max_length == buffer.max_length
        assert restored.mean(10) == buffer.mean(10)
    assert hub["runtime_info"]["best_score"] == 71.37 and hub["runtime_info"]["keep_ckpt_ids"] == [2, 4]
    assert checkpoint["meta"]["dataset_meta"]["classes"] == ("a", "b")


def test_checkpoints_of_earlier_uniseg_versions_still_load(tmp_path, monkeypatch, caplog):
    """Earlier uniseg pickled HistoryBuffer objects (without their functions); the allowlist reads them."""
    from mmengine.logging import HistoryBuffer

    with monkeypatch.context() as m:  # reproduce what uniseg <= 0.x wrote, then undo it
        m.setattr(HistoryBuffer, "__getstate__",
                  lambda self: {k: v for k, v in self.__dict__.items() if k != "statistics_methods"})
        path = tmp_path / "legacy.pth"
        torch.save(_training_checkpoint(_model()), path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path)  # the default loader refuses it ...
    logger = logging.getLogger("legacy-test")
    with caplog.at_level(logging.WARNING, logger="legacy-test"):
        checkpoint = load_verified_checkpoint(str(path), logger=logger)  # ... uniseg's reads it
    assert isinstance(checkpoint["message_hub"]["log_scalars"]["train/loss"], HistoryBuffer)
    assert "could not be verified" in caplog.text and "legacy.pth" in caplog.text


def test_resume_refuses_a_checkpoint_with_foreign_objects(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}, "meta": {"hook": subprocess.Popen}}, path)
    with pytest.raises(CheckpointError, match="foreign.pth: refused by the safe"):
        load_mmengine_checkpoint(str(path))


# ---------------------------------------------------------------------------------------------- integrity
def _data_entry_offset(path: Path, min_size: int = 256) -> int:
    """File offset of the middle of the largest tensor storage in a torch zip checkpoint."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.file_size >= min_size and info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2


def _flip(path: Path, offset: int, count: int = 4) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(count))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_flipped_bytes_in_a_tensor_are_detected(saved):
    clean = torch.load(saved)
    _flip(saved, _data_entry_offset(saved))
    corrupted = torch.load(saved)  # torch reads it without complaint (no CRC check) ...
    changed = [k for k, v in clean["state_dict"].items() if not torch.equal(v, corrupted["state_dict"][k])]
    changed += [f"optimizer {k}" for k, s in clean["optimizer"]["state"].items()
                for n, v in s.items() if not torch.equal(v, corrupted["optimizer"]["state"][k][n])]
    assert len(changed) == 1  # ... with one tensor silently different
    with pytest.raises(CheckpointError, match=r"iter_4\.pth: corrupted: the '(state_dict|optimizer)' tensors"):
        load_verified_checkpoint(str(saved))


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path, caplog):
    path = tmp_path / "third_party.pth"
    torch.save({"state_dict": _model().state_dict()}, path)
    logger = logging.getLogger("unverified-test")
    with caplog.at_level(logging.WARNING, logger="unverified-test"):
        checkpoint = load_verified_checkpoint(str(path), logger=logger)
    assert set(checkpoint) == {"state_dict"}
    assert "third_party.pth: has no uniseg checksum" in caplog.text


@pytest.mark.parametrize("keep", [0, 100, 0.5, 0.999])
def test_empty_and_truncated_files_are_errors_naming_the_file(saved, keep):
    size = saved.stat().st_size
    keep_bytes = int(keep * size) if isinstance(keep, float) else keep
    with open(saved, "r+b") as f:
        f.truncate(keep_bytes)
    with pytest.raises(CheckpointError, match=str(saved).replace(".", r"\.") + ": (empty file|cannot be read)"):
        load_verified_checkpoint(str(saved))


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint not found"):
        load_verified_checkpoint(str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match="is a folder"):
        load_verified_checkpoint(str(tmp_path))


# ---------------------------------------------------------------------------------------------- strictness
def test_strict_loading_lists_the_keys_and_copies_nothing():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other_classes = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1))
    with pytest.raises(CheckpointError, match=r"other.pth: does not fit this Sequential: 2 of other shape "
                                              r"\(2.weight \(6, 8, 1, 1\) in the checkpoint vs \(4, 8, 1, 1\)"):
        load_model_state(model, {"state_dict": other_classes.state_dict()}, "other.pth")
    unrelated = {"encoder.weight": torch.zeros(3), "head.bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"9 missing from the checkpoint \(0.weight, .*2 unexpected "
                                              r"\(encoder.weight, head.bias\)"):
        load_model_state(model, unrelated, "unrelated.pth")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_non_strict_loading_takes_what_fits_and_says_what_did_not(caplog):
    model = _model()
    source = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1))
    logger = logging.getLogger("non-strict-test")
    with caplog.at_level(logging.WARNING, logger="non-strict-test"):
        mismatch = load_model_state(model, {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}},
                                    "other.pth", strict=False, logger=logger)
    assert [k for k, _, _ in mismatch.mismatched] == ["2.weight", "2.bias"]
    assert torch.equal(model[0].weight, source[0].weight) and not torch.equal(model[2].bias[:4], source[2].bias[:4])
    assert "other.pth: loaded non-strictly" in caplog.text


# ---------------------------------------------------------------------------------------------- resume choice
def _work_dir(tmp_path: Path, steps=(2, 4, 6), pointer="iter_6.pth") -> Path:
    work = tmp_path / "work"
    work.mkdir(parents=True)
    for step in steps:
        _save_as_uniseg({"meta": {"iter": step}, "state_dict": {"w": torch.full((4,), float(step))}},
                        work / f"iter_{step}.pth")
    if pointer is not None:
        (work / "last_checkpoint").write_bytes(pointer if isinstance(pointer, bytes) else
                                               (str(work / pointer) if pointer else "").encode())
    return work


def _resume(work: Path, caplog) -> str:
    logger = logging.getLogger("resume-test")
    with caplog.at_level(logging.INFO, logger="resume-test"):
        return find_resume_checkpoint(str(work), logger=logger)


def test_resume_uses_last_checkpoint_when_it_is_the_newest(tmp_path, caplog):
    work = _work_dir(tmp_path)
    assert _resume(work, caplog) == str(work / "iter_6.pth") and "WARNING" not in caplog.text


@pytest.mark.parametrize("pointer, reason", [
    ("", "is empty"), (b"\x00\xff garbage \x00", "which does not exist"), ("iter_8.pth", "which does not exist"),
    ("iter_2.pth", "names .*iter_2.pth, but .*iter_6.pth is newer"), (None, "last_checkpoint does not exist"),
])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog, pointer, reason):
    work = _work_dir(tmp_path, pointer=pointer)
    (work / temporary_checkpoint_name("iter_8.pth")).write_bytes(b"partial")  # a killed save: never a candidate
    assert _resume(work, caplog) == str(work / "iter_6.pth")
    assert any(r.levelno == logging.WARNING and "resuming from" in r.message for r in caplog.records)
    assert re.search(reason, caplog.text), caplog.text


def test_resume_skips_checkpoints_that_do_not_verify(tmp_path, caplog):
    work = _work_dir(tmp_path, pointer="")
    with open(work / "iter_6.pth", "r+b") as f:
        f.truncate(1000)
    assert _resume(work, caplog) == str(work / "iter_4.pth")
    assert "not resuming from" in caplog.text and "iter_6.pth: cannot be read" in caplog.text


def test_resume_without_a_usable_checkpoint_names_the_work_dir(tmp_path, caplog):
    work = _work_dir(tmp_path, steps=(2,), pointer="")
    (work / "iter_2.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{work}: nothing to resume from: .*last_checkpoint is empty"):
        _resume(work, caplog)
    assert _resume(_work_dir(tmp_path / "fresh", steps=(), pointer=None), caplog) is None  # nothing ever saved


def test_stale_temporaries_are_recognised_by_name(tmp_path):
    names = [temporary_checkpoint_name("iter_4.pth"), temporary_checkpoint_name("best_mDice_iter_4.pth"),
             ".last_checkpoint.partial-ab12_x", "iter_4.pth", "last_checkpoint", "notes.partial", ".hidden"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = sorted(p.name for p in remove_stale_temporaries(tmp_path))
    assert removed == sorted(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


# ---------------------------------------------------------------------------------------------- inference
def test_load_segmentor_verifies_the_checkpoint(tmp_path, tiny_model_cfg):
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from uniseg.inference.api import load_segmentor

    base = REPO / "configs" / "_base_"
    config = tmp_path / "cfg.py"
    config.write_text(f"_base_ = ['{base}/models/mask2former_vit-adapter_uni-tiny.py']\n"
                      "model = dict(decode_head=dict(num_classes=3, loss_cls=dict(class_weight=[1.0] * 3 + [0.1])))\n"
                      "test_dataloader = dict(dataset=dict(metainfo=dict(classes=('a', 'b', 'c'))))\n")
    model = MODELS.build(Config.fromfile(str(config)).model)
    path = _save_as_uniseg({"meta": {}, "state_dict": model.state_dict()}, tmp_path / "model.pth")
    segmentor = load_segmentor(str(config), str(path))
    assert all(torch.equal(v, segmentor.model.state_dict()[k]) for k, v in model.state_dict().items())
    _flip(path, _data_entry_offset(path))
    with pytest.raises(CheckpointError, match="model.pth: corrupted"):
        load_segmentor(str(config), str(path))


# ---------------------------------------------------------------------------------------------- hook order
class _Runner:
    """What SafeCheckpointHook uses of a runner; ``save_checkpoint`` records what existed while it wrote."""

    def __init__(self, work_dir: Path, fail_after: int = -1):
        from mmengine.logging import MessageHub, MMLogger

        self.work_dir, self.iter, self.epoch = str(work_dir), 0, 0
        self.logger = MMLogger.get_instance(f"hook-test-{os.urandom(4).hex()}")
        self.message_hub = MessageHub(f"hook-test-{os.urandom(4).hex()}")
        self.fail_after, self.events = fail_after, []

    def save_checkpoint(self, out_dir, filename, file_client_args=None, save_optimizer=True, **kwargs):
        existing = sorted(p.name for p in Path(out_dir).iterdir())
        self.events.append((filename, existing))
        step = kwargs["meta"]["iter"]
        data = {"meta": {"iter": step}, "state_dict": {"w": torch.full((1000,), float(step))},
                "message_hub": self.message_hub.state_dict()}
        SafeCheckpointHook().before_save_checkpoint(self, data)
        with open(Path(out_dir) / filename, "wb") as f:
            if self.fail_after >= 0:  # a full disk: part of the file, then the error `ulimit -f` gives
                f.write(b"\0" * self.fail_after)
                raise OSError(27, "File too large")
            torch.save(data, f)


def _hook(runner: _Runner, **kwargs) -> SafeCheckpointHook:
    hook = SafeCheckpointHook(interval=2, by_epoch=False, **kwargs)
    hook.before_train(runner)
    return hook


def _save_at(hook, runner, step: int) -> None:
    runner.iter = step - 1
    hook._save_checkpoint(runner)
    runner.iter = step


def test_hook_writes_new_checkpoint_before_removing_the_old_one(tmp_path):
    runner = _Runner(tmp_path)
    hook = _hook(runner, max_keep_ckpts=1)
    _save_at(hook, runner, 2)
    _save_at(hook, runner, 4)
    # the save of iter 4 went to a temporary while iter_2.pth was still there
    assert runner.events[1] == (".iter_4.pth.partial", ["iter_2.pth", "last_checkpoint"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_4.pth", "last_checkpoint"]
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_4.pth")
    assert load_verified_checkpoint(str(tmp_path / "iter_4.pth"))["meta"]["iter"] == 4


def test_hook_keeps_the_previous_best_until_the_new_one_is_recorded(tmp_path):
    runner = _Runner(tmp_path)
    hook = _hook(runner, max_keep_ckpts=1, save_best="acc", rule="greater")
    _save_at(hook, runner, 2)
    hook._save_best_checkpoint(runner, {"acc": 0.5})
    _save_at(hook, runner, 4)
    runner.events.clear()
    hook._save_best_checkpoint(runner, {"acc": 0.7})
    assert [name for name, _ in runner.events] == [".best_acc_iter_4.pth.partial", ".iter_4.pth.partial"]
    assert all("best_acc_iter_2.pth" in existing for _, existing in runner.events)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_acc_iter_4.pth", "iter_4.pth", "last_checkpoint"]
    hub = load_verified_checkpoint(str(tmp_path / "iter_4.pth"))["message_hub"]
    assert hub["runtime_info"]["best_ckpt"] == str(tmp_path / "best_acc_iter_4.pth")


def test_a_failed_save_replaces_and_removes_nothing(tmp_path):
    runner = _Runner(tmp_path)
    hook = _hook(runner, max_keep_ckpts=1)
    _save_at(hook, runner, 2)
    before = (tmp_path / "iter_2.pth").read_bytes()
    runner.fail_after = 4096
    with pytest.raises(CheckpointError, match=r"iter_4.pth: writing the checkpoint failed \(\[Errno 27\] File too "
                                              r"large\); nothing was replaced or removed, .*iter_2.pth is still"):
        _save_at(hook, runner, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_2.pth", "last_checkpoint"]
    assert (tmp_path / "iter_2.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_2.pth")
