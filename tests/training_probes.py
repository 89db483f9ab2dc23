"""Test-only hooks and a metric that make a real ``tools/train.py`` process observable and killable at
exact points. Test configs load them with ``custom_imports`` (the tests put this folder on PYTHONPATH).

* :class:`PauseAtSaveHook` stops the trainer inside a checkpoint save (after the checkpoint dict is
  assembled, before the file is written) and tells the test so through a marker file, so that a test
  can SIGKILL it there, or prepare the destination and let it continue, instead of relying on timing.
* :class:`StepMetric` reports the current iteration as its score, so every validation is a new best
  (``save_best='step', rule='greater'``), also across a resume.
* :class:`TrainingProbeHook` records, per training iteration, whether the forward pass ran under
  autocast and in which dtype, how many optimizer steps were taken, and a digest of the parameters.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Optional

import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS, METRICS


def _touch(path: str, text: str = "") -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@HOOKS.register_module()
class PauseAtSaveHook(Hook):
    """Pause in the ``occurrence``-th save of ``kind`` ('periodic': with optimizer state, 'best': without).

    Writes ``marker`` (containing the checkpoint's iteration), then waits until ``release`` exists
    (or forever when it is None: the test kills the process). Once the marker exists it never pauses
    again, so the same config serves the resumed run.
    """

    priority = "LOWEST"

    def __init__(self, kind: str, occurrence: int, marker: str, release: Optional[str] = None):
        assert kind in ("periodic", "best")
        self.kind, self.occurrence, self.marker, self.release = kind, occurrence, marker, release
        self._seen = 0

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        kind = "periodic" if "optimizer" in checkpoint else "best"
        if kind != self.kind:
            return
        self._seen += 1
        if self._seen != self.occurrence or os.path.exists(self.marker):
            return
        _touch(self.marker, str(checkpoint["meta"]["iter"]))
        while self.release is None or not os.path.exists(self.release):
            time.sleep(0.01)


@METRICS.register_module()
class StepMetric(BaseMetric):
    """``{'step': current iteration}``: a score that grows with training, whatever the model predicts."""

    def process(self, data_batch, data_samples) -> None:
        self.results.append(1)

    def compute_metrics(self, results: list) -> dict:
        return {"step": float(MessageHub.get_current_instance().get_info("iter"))}


def _parameter_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@HOOKS.register_module()
class TrainingProbeHook(Hook):
    """Append one JSON line per training iteration to ``<work_dir>/probe.jsonl``."""

    priority = "LOWEST"

    def before_train(self, runner) -> None:
        self._model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._steps = 0
        self._autocast = None

        def count_step(optimizer, args, kwargs):
            self._steps += 1

        def record_autocast(module, args):
            device = next(module.parameters()).device.type
            self._autocast = dict(enabled=torch.is_autocast_enabled(device),
                                  dtype=str(torch.get_autocast_dtype(device)))

        runner.optim_wrapper.optimizer.register_step_post_hook(count_step)
        self._model.backbone.register_forward_pre_hook(record_autocast)
        self._path = os.path.join(runner.work_dir, "probe.jsonl")
        self._write(dict(iter=0, params=_parameter_digest(self._model), steps=0))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._write(dict(iter=runner.iter + 1, params=_parameter_digest(self._model), steps=self._steps,
                         autocast=self._autocast))

    def _write(self, record: dict) -> None:
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")
