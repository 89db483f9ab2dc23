"""mmengine's runners with checkpoint loading that can be trusted (``runner_type`` in a config).

mmengine reads checkpoints with whatever ``torch.load`` defaults to, loads ``load_from`` and even
``resume`` with ``strict=False`` (a checkpoint of another class count, or of another model entirely,
is evaluated as a partly random model and its metrics are printed with exit status 0), and resumes
from ``last_checkpoint`` even when it is empty or stale. These subclasses change only that:

* every checkpoint is read through :func:`~uniseg.engine.checkpoint.load_verified_checkpoint`
  (weights-only, checksum verified, errors naming the file);
* weights load strictly, with the missing / unexpected / differently shaped keys listed. Resuming is
  always strict; ``load_from`` is strict unless the config sets ``load_from_strict = False`` (to
  initialise a fine-tuning run from weights of another task);
* ``resume=True`` without a file continues from the newest complete checkpoint when
  ``last_checkpoint`` is unusable (:func:`~uniseg.engine.checkpoint.find_resume_checkpoint`).

``UnisegRunner`` is mmengine's ``Runner`` (single process, DDP); ``UnisegFlexibleRunner`` is its
``FlexibleRunner`` for sharded training with :class:`~uniseg.engine.strategies.FSDP2Strategy`, whose
``load_checkpoint`` reads files the same way.
"""
from __future__ import annotations

import os.path as osp
from typing import List, Optional, Tuple

from mmdet.registry import RUNNERS as MMDET_RUNNERS
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.runner import FlexibleRunner, Runner
from mmseg.registry import RUNNERS

from .checkpoint import find_resume_checkpoint, load_model_state, load_verified_checkpoint
from .checkpoint.model_state import DEFAULT_REVISE_KEYS

__all__ = ["UnisegFlexibleRunner", "UnisegRunner"]


class _TrustedLoading:
    """What both runners share: which checkpoint to load, and how strictly."""

    def _checkpoint_folders(self) -> Tuple[List[str], List[str]]:
        """Output folders and file-name templates of the configured checkpoint hooks."""
        folders, templates = [], []
        for hook in self.hooks:
            if isinstance(hook, CheckpointHook):
                out_dir = hook.out_dir
                if out_dir is not None and out_dir != self.work_dir:  # as CheckpointHook.before_train joins it
                    out_dir = osp.join(out_dir, osp.basename(self.work_dir.rstrip(osp.sep)))
                folders.append(out_dir or self.work_dir)
                templates.append(hook.filename_tmpl)
        return folders, templates or ["iter_{}.pth", "epoch_{}.pth"]

    def _resume_source(self) -> Optional[str]:
        if isinstance(self._resume, str):  # FlexibleRunner accepts resume=<file>
            return self._resume
        if not self._resume:
            return None
        if self._load_from is not None:
            return self._load_from
        folders, templates = self._checkpoint_folders()
        return find_resume_checkpoint(self.work_dir, folders, templates, logger=self.logger)

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        resume_from = self._resume_source()
        if resume_from is not None:
            self.logger.info(f"Resuming from {resume_from}")
            self.resume(resume_from)
            self._has_loaded = True
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from, strict=self.cfg.get("load_from_strict", True))
            self._has_loaded = True


@MMDET_RUNNERS.register_module()
@RUNNERS.register_module()
class UnisegRunner(_TrustedLoading, Runner):
    """``runner_type = 'UnisegRunner'``."""

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = True,
                        revise_keys: list = list(DEFAULT_REVISE_KEYS)) -> dict:
        checkpoint = load_verified_checkpoint(filename, map_location=map_location, logger=self.logger)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        load_model_state(model, checkpoint, filename, strict=strict, revise_keys=revise_keys, logger=self.logger)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint


@MMDET_RUNNERS.register_module()
@RUNNERS.register_module()
class UnisegFlexibleRunner(_TrustedLoading, FlexibleRunner):
    """``runner_type = 'UnisegFlexibleRunner'`` with ``strategy = dict(type='FSDP2Strategy')``."""

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = True,
                        revise_keys: list = list(DEFAULT_REVISE_KEYS)):
        return super().load_checkpoint(filename, map_location=map_location, strict=strict, revise_keys=revise_keys)
