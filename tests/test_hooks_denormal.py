"""FlushDenormalHook: subnormal floats are flushed during a run and the previous setting comes back after it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from torch import nn

from uniseg.engine.hooks import FlushDenormalHook, flush_denormal, flush_denormal_enabled

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_flush():
    before = flush_denormal_enabled()
    yield
    torch.set_flush_denormal(before)


def _subnormal_survives() -> bool:
    """Computed another way than flush_denormal_enabled: halve the smallest normal float32."""
    tiny = torch.tensor(torch.finfo(torch.float32).tiny)
    return bool((tiny / 2).item() > 0)


@pytest.mark.parametrize("on", [True, False])
def test_state_detection_follows_torch_switch(restore_flush, on):
    torch.set_flush_denormal(on)
    assert flush_denormal_enabled() is on
    assert _subnormal_survives() is not on


@pytest.mark.parametrize("previous", [False, True])
def test_hook_flushes_during_the_run_and_restores_the_previous_state(restore_flush, previous):
    torch.set_flush_denormal(previous)
    hook = FlushDenormalHook()
    hook.before_run(runner=None)
    assert flush_denormal_enabled() and not _subnormal_survives()
    hook.before_run(runner=None)  # a second run of the same runner (val after train) keeps the first state
    hook.after_run(runner=None)
    assert flush_denormal_enabled() is previous
    hook.after_run(runner=None)  # idempotent
    assert flush_denormal_enabled() is previous


def test_context_manager_restores_after_an_error(restore_flush):
    torch.set_flush_denormal(False)
    with pytest.raises(RuntimeError, match="boom"):
        with flush_denormal():
            assert flush_denormal_enabled()
            raise RuntimeError("boom")
    assert not flush_denormal_enabled()


class _RecordingModel(nn.Module):
    """A model whose train step notes whether subnormal floats are flushed while the runner trains it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.seen = []

    def train_step(self, data, optim_wrapper):
        self.seen.append(flush_denormal_enabled())
        loss = self.linear(torch.ones(1, 2)).sum()
        optim_wrapper.update_params(loss)
        return dict(loss=loss)


def test_runner_selects_the_hook_from_the_config(restore_flush, tmp_path):
    from mmengine.runner import Runner

    torch.set_flush_denormal(False)
    runtime = Config.fromfile(str(REPO / "configs/_base_/default_runtime.py"))
    assert dict(type="FlushDenormalHook") in runtime.custom_hooks
    model = _RecordingModel()
    runner = Runner(
        model=model, work_dir=str(tmp_path), default_scope="mmseg",
        train_dataloader=dict(dataset=list(range(4)), sampler=dict(type="DefaultSampler", shuffle=False),
                              batch_size=1, collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=3),
        custom_hooks=[h for h in runtime.custom_hooks if h["type"] == "FlushDenormalHook"],
        default_hooks=dict(checkpoint=None, logger=None), env_cfg=dict(dist_cfg=dict(backend="gloo")))
    runner.train()
    assert model.seen == [True, True, True]
    assert not flush_denormal_enabled()
