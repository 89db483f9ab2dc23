"""End-to-end training through tools/train.py: kill-and-resume, 1-vs-2-process equivalence (DDP, FSDP), AMP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("background", "nuclei", "stroma")


def _write_dataset(root: Path, n: int = 4, size: int = 64) -> None:
    """Tiles in which every image contains all three classes (so loss normalisers match across ranks)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        cy, cx = rng.integers(16, size - 16, 2)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < 80] = 1
        label[:, 4 + 3 * i:12 + 3 * i] = 2
        colours = np.array([[235, 230, 240], [70, 40, 140], [230, 120, 170]], np.uint8)
        img = colours[label].astype(np.int16) + rng.integers(-12, 12, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"t{i}.png")
        Image.fromarray(label).save(root / "masks" / f"t{i}.png")
    (root / "splits" / "train.txt").write_text("".join(f"t{i}\n" for i in range(n)))


def _write_config(path: Path, data_root: Path, batch_size: int, max_iters: int, extra: str = "",
                  drop_path: float = 0.1, flip: float = 0.5,
                  checkpoint: str = "dict(interval=2, max_keep_ckpts=10, save_best=None)") -> Path:
    base = REPO / "configs" / "_base_"
    path.write_text(f"""
_base_ = ['{base}/models/mask2former_vit-adapter_uni-tiny.py', '{base}/default_runtime.py',
          '{base}/schedules/schedule_40k_layer-decay.py']
num_classes = 3
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(drop_path_rate={drop_path}),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])))
train_dataloader = dict(
    batch_size={batch_size}, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='HistologySegDataset', data_root='{data_root}', ann_file='splits/train.txt',
                 data_prefix=dict(img_path='images', seg_map_path='masks'),
                 metainfo=dict(classes={CLASSES!r}),
                 pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                           dict(type='RandomFlip', prob={flip}), dict(type='PackSegInputs')]))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters}, val_interval=10 ** 6)
default_hooks = dict(logger=dict(interval=1), checkpoint={checkpoint},
                     visualization=dict(type='SegVisualizationHook', draw=False))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(vis_backends=vis_backends)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=1))
randomness = dict(seed=7)
{extra}
""")
    return path


# Test configs that use tests/training_probes.py (hooks that observe or pause a training process).
PROBES = "custom_imports = dict(imports=['uniseg', 'training_probes'], allow_failed_imports=False)\n"


def runtime_hooks_plus(*hooks: str) -> str:
    """A ``custom_hooks`` line: the default runtime's hooks (seeding, denormal flushing, class checks: every
    uniseg run has them, so a reference run differs from a probed run by the probes alone) + ``hooks``."""
    from mmengine.config import Config

    base = [dict(hook) for hook in Config.fromfile(str(REPO / "configs/_base_/default_runtime.py")).custom_hooks]
    return f"custom_hooks = {base!r} + [{', '.join(hooks)}]\n"


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests"), env.get("PYTHONPATH")) if p)
    return env


def _train(config: Path, work_dir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(config), "--work-dir", str(work_dir), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(work_dir: Path) -> dict:
    """iteration -> total loss, from every run's scalars.json in the work dir (later runs win)."""
    out = {}
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in scalars.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["iter"]] = rec["loss"]
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu")  # uniseg's checkpoints are weights-only data


def _assert_same_training_state(a: dict, b: dict) -> None:
    """Bit-identical weights, optimizer state, learning rates and schedulers."""
    assert a["meta"]["iter"] == b["meta"]["iter"]
    assert list(a["state_dict"]) == list(b["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert list(state_a) == list(state_b)
    for key in state_a:
        for name, value in state_a[key].items():
            assert torch.equal(value, state_b[key][name]), (key, name)
    for group_a, group_b in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]):
        assert group_a["lr"] == group_b["lr"]
    assert a["param_schedulers"] == b["param_schedulers"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _write_dataset(root)
    return root


@pytest.mark.slow
def test_killed_training_resumes_exactly(tmp_path, dataset):
    config = _write_config(tmp_path / "cfg.py", dataset, batch_size=2, max_iters=6)
    straight = tmp_path / "straight"
    _train(config, straight)

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(config), "--work-dir", str(killed)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "last_checkpoint"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and pointer.read_text().strip().endswith("iter_4.pth"):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "iter_6.pth").exists()

    _train(config, killed, "--resume")
    a, b = _state(straight / "iter_6.pth"), _state(killed / "iter_6.pth")
    assert a["meta"]["iter"] == b["meta"]["iter"] == 6
    _assert_same_training_state(a, b)
    losses_a, losses_b = _losses(straight), _losses(killed)
    assert losses_a[5] == losses_b[5] and losses_a[6] == losses_b[6]


def _loss_on_full_batch(checkpoint: Path, config: Path) -> float:
    from mmengine.config import Config

    from uniseg.engine.launch import build_runner

    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(checkpoint.parent / "eval")
    cfg.train_dataloader.sampler = dict(type="DefaultSampler", shuffle=False)
    cfg.train_dataloader.batch_size = 4
    runner = build_runner(cfg)  # UnisegRunner: verified, strict
    runner.load_checkpoint(str(checkpoint))
    model = runner.model.train()
    batch = next(iter(runner.build_dataloader(cfg.train_dataloader)))
    torch.manual_seed(0)
    with torch.no_grad():
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode="loss")
    return float(sum(v for k, v in losses.items() if "loss" in k))


def _dist_train(config: Path, work_dir: Path, *args: str) -> None:
    cmd = ["bash", str(REPO / "tools" / "dist_train.sh"), str(config), "2", "--work-dir", str(work_dir), *args]
    env = dict(_env(), PYTHON=sys.executable, PORT=str(_free_port()))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, dataset):
    """1 process x batch 2, 4 steps; no stochastic depth or random flips, whose draws differ between layouts."""
    root = tmp_path_factory.mktemp("one")
    config = _write_config(root / "one.py", dataset, batch_size=2, max_iters=4, drop_path=0.0, flip=0.0)
    _train(config, root / "work")
    start = _loss_on_full_batch(root / "work" / "iter_2.pth", config)
    final = _loss_on_full_batch(root / "work" / "iter_4.pth", config)
    return config, start, final


def _assert_matches(name: str, loss: float, start: float, reference: float) -> None:
    print(f"loss on the 4 tiles: after 2 steps {start:.4f}; after 4 steps 1 process x 2 = {reference:.4f}, "
          f"{name} = {loss:.4f}")
    # Mask2Former samples random points for its mask losses, so the runs differ by sampling noise only:
    # the losses agree far more closely than either differs from where training was two steps earlier.
    assert abs(reference - loss) <= 0.02 * reference
    assert abs(reference - loss) < 0.5 * abs(start - reference)


@pytest.mark.slow
def test_two_processes_of_batch_one_match_one_process_of_batch_two(tmp_path, dataset, one_process_run):
    one, start, loss_one = one_process_run
    two = _write_config(tmp_path / "two.py", dataset, batch_size=1, max_iters=4, drop_path=0.0, flip=0.0)
    _dist_train(two, tmp_path / "two")
    _assert_matches("DDP 2 processes x 1", _loss_on_full_batch(tmp_path / "two" / "iter_4.pth", one), start, loss_one)


@pytest.mark.slow
def test_fsdp_two_processes_match_and_resume(tmp_path, dataset, one_process_run):
    one, start, loss_one = one_process_run
    two = _write_config(tmp_path / "fsdp.py", dataset, batch_size=1, max_iters=4, drop_path=0.0, flip=0.0)
    _dist_train(two, tmp_path / "fsdp", "--strategy", "fsdp")
    # the checkpoint holds the full, unsharded state dict: a plain (non-FSDP) model loads it
    _assert_matches("FSDP 2 processes x 1", _loss_on_full_batch(tmp_path / "fsdp" / "iter_4.pth", one), start,
                    loss_one)
    # Resumed (4 -> 6) against uninterrupted (0 -> 6): the full state dicts scatter back into the same
    # shards, the optimizer state likewise, the data loader replays and IterationSeedHook re-seeds, so
    # FSDP resumes bit-exactly too.
    _dist_train(two, tmp_path / "fsdp", "--strategy", "fsdp", "--resume", "--cfg-options", "train_cfg.max_iters=6")
    _dist_train(two, tmp_path / "fsdp_straight", "--strategy", "fsdp", "--cfg-options", "train_cfg.max_iters=6")
    resumed, straight = _state(tmp_path / "fsdp" / "iter_6.pth"), _state(tmp_path / "fsdp_straight" / "iter_6.pth")
    assert resumed["meta"]["iter"] == straight["meta"]["iter"] == 6
    _assert_same_training_state(straight, resumed)
    losses_resumed, losses_straight = _losses(tmp_path / "fsdp"), _losses(tmp_path / "fsdp_straight")
    assert [losses_resumed[i] for i in (5, 6)] == [losses_straight[i] for i in (5, 6)]


@pytest.mark.slow
def test_bf16_amp_and_gradient_accumulation_train(tmp_path, dataset):
    """The forward runs under bf16 autocast, and with accumulative_counts=2 the optimizer steps once
    per two iterations: parameters unchanged after iterations 1 and 3, changed after 2 and 4."""
    config = _write_config(tmp_path / "amp.py", dataset, batch_size=2, max_iters=4, extra=PROBES + """
optim_wrapper = dict(accumulative_counts=2)
""" + runtime_hooks_plus("dict(type='TrainingProbeHook')"))
    proc = _train(config, tmp_path / "amp", "--amp", "bf16")
    records = [json.loads(line) for line in (tmp_path / "amp" / "probe.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [0, 1, 2, 3, 4]
    for r in records[1:]:
        assert r["autocast"] == {"enabled": True, "dtype": "torch.bfloat16"}, r
    params = [r["params"] for r in records]
    assert [r["steps"] for r in records] == [0, 0, 1, 1, 2]
    assert params[1] == params[0] and params[2] != params[1] and params[3] == params[2] and params[4] != params[3]
    losses = _losses(tmp_path / "amp")
    assert set(losses) == {1, 2, 3, 4} and all(np.isfinite(v) for v in losses.values()), proc.stdout[-2000:]


@pytest.mark.slow
def test_test_tool_reports_iou_and_dice_with_overlays_and_masks(tmp_path, dataset, one_process_run):
    config, _, _ = one_process_run
    test_config = tmp_path / "eval.py"
    test_config.write_text(config.read_text() + f"""
test_dataloader = dict(batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                       dataset=dict(type='HistologySegDataset', data_root='{dataset}', ann_file='splits/train.txt',
                                    data_prefix=dict(img_path='images', seg_map_path='masks'),
                                    metainfo=dict(classes={CLASSES!r}),
                                    pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                                              dict(type='PackSegInputs')]))
test_cfg = dict(type='TestLoop')
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
""")
    checkpoint = config.parent / "work" / "iter_4.pth"
    cmd = [sys.executable, str(REPO / "tools" / "test.py"), str(test_config), str(checkpoint), "--work-dir",
           str(tmp_path / "eval"), "--show-dir", str(tmp_path / "vis"), "--out", str(tmp_path / "masks"), "--amp"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for name in CLASSES:
        assert name in log  # the per-class table
    assert "Dice" in log and "summary: mIoU" in log and "mDice" in log
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == [f"t{i}.png" for i in range(4)]
    assert len(list((tmp_path / "vis").rglob("*.png"))) == 4
