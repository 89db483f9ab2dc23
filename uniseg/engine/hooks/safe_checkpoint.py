"""mmengine's CheckpointHook, reordered so that a crash never leaves the work dir without a checkpoint.

mmengine 0.10.7 deletes the oldest checkpoint (``max_keep_ckpts``) and the previous best checkpoint
*before* writing the new one, and writes it in place. With ``max_keep_ckpts=1``, a job killed while
saving (pre-emption, time limit, OOM killer) or a disk that fills up leaves a partial file and a
``last_checkpoint`` that names a deleted one: ``--resume`` has nothing to continue from.

This hook keeps mmengine's options and bookkeeping and changes the order:

1. the new checkpoint is written completely under a temporary name, flushed to disk, renamed into place;
2. ``last_checkpoint`` is replaced in one step (temporary file + rename);
3. only then are the checkpoints it supersedes removed (the oldest one, the previous best; the
   previous best only after the resumable checkpoint that records the new best is written). The new
   checkpoint lists the one it supersedes among those kept, so a job killed between 2 and 3 leaves it
   behind only until the run resumes: resuming trims the list to ``max_keep_ckpts`` and removes it.

Every rank calls the save under FlexibleRunner (sharded state is gathered collectively), so the
temporary name is the same on all ranks; only the main process renames and removes. Temporaries left
by killed runs are removed when training starts. It also stores the checkpoint in the plain form that
torch's weights-only loader reads (``plain_state``) with a checksum of its tensors (``checksum``), and
rebuilds mmengine's objects after loading. Object stores (``backend_args`` for remote storage) have no
atomic rename; for them the hook behaves as mmengine's.
"""
from __future__ import annotations

import os.path as osp
from typing import List, Optional

from mmdet.registry import HOOKS as MMDET_HOOKS
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmseg.registry import HOOKS

from ..checkpoint import (CheckpointError, add_checksum, from_weights_only, remove_stale_temporaries,
                          replace_durably, temporary_checkpoint_name, to_weights_only, write_text_durably)

__all__ = ["SafeCheckpointHook"]


@MMDET_HOOKS.register_module()
@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``default_hooks.checkpoint = dict(type='SafeCheckpointHook', ...)``; arguments as mmengine's CheckpointHook."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._local = isinstance(self.file_backend, LocalBackend)
        if not self._local:
            runner.logger.warning(f"SafeCheckpointHook: {self.out_dir} is not a local folder; checkpoints are "
                                  f"written as by mmengine's CheckpointHook (in place, old ones removed first)")
        elif is_main_process():
            for path in remove_stale_temporaries(self.out_dir):
                runner.logger.info(f"removed {path}, left by an interrupted save")

    # ------------------------------------------------------------------ plain, verified content
    # (priority VERY_LOW, as mmengine's: hooks that change the saved tensors must run before this one)
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        to_weights_only(checkpoint)
        add_checksum(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from_weights_only(checkpoint)

    # ------------------------------------------------------------------ writing
    def _write(self, runner, filename: str, **save_kwargs) -> str:
        """Save ``filename`` in the output folder through a temporary; return its path."""
        final = osp.join(self.out_dir, filename)
        partial = temporary_checkpoint_name(filename)
        partial_path = osp.join(self.out_dir, partial)
        try:
            runner.save_checkpoint(self.out_dir, partial, self.file_client_args, backend_args=self.backend_args,
                                   **save_kwargs)
            if is_main_process():
                replace_durably(partial_path, final)
        except BaseException as exc:
            if is_main_process() and osp.lexists(partial_path):
                self.file_backend.remove(partial_path)
            if isinstance(exc, OSError):
                raise CheckpointError(
                    f"{final}: writing the checkpoint failed ({exc}); nothing was replaced or removed, "
                    f"{self._previous(runner) or 'no earlier checkpoint'} is still the latest") from exc
            raise
        return final

    def _previous(self, runner) -> Optional[str]:
        pointer = osp.join(runner.work_dir, "last_checkpoint")
        if osp.isfile(pointer):
            with open(pointer) as f:
                return f.read().strip() or None
        return None

    def _remove(self, runner, path: str, what: str = "") -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints of DeepSpeed are folders
            self.file_backend.rmtree(path)
        else:
            return
        if what:
            runner.logger.info(f"The previous {what} {path} is removed")

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not getattr(self, "_local", False):  # (set in before_train; without it, as mmengine does)
            return super()._save_checkpoint_with_step(runner, step, meta)
        superseded: List[str] = []
        superseded_steps: List[int] = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            # (the best-checkpoint path saves the same step again to record the new best: nothing rotates)
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                superseded_steps.append(self.keep_ckpt_ids.popleft())
                superseded.append(osp.join(self.out_dir, self.filename_tmpl.format(superseded_steps[0])))
            self.keep_ckpt_ids.append(step)
            # The new checkpoint records the step it supersedes as still kept: if the job dies after the new file
            # is in place but before the old one is removed, the resumed run's before_train (mmengine's: it trims
            # keep_ckpt_ids to max_keep_ckpts, removing their files) removes the leftover.
            runner.message_hub.update_info("keep_ckpt_ids", superseded_steps + list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        self._write(runner, filename, save_optimizer=self.save_optimizer,
                    save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch, **self.args)
        if not is_main_process():
            return
        pointer = osp.join(runner.work_dir, "last_checkpoint")
        try:
            write_text_durably(pointer, self.last_ckpt)
        except OSError as exc:
            raise CheckpointError(f"{pointer}: could not record {self.last_ckpt} as the latest checkpoint ({exc}); "
                                  f"the checkpoint itself is complete and --resume finds it") from exc
        for path in superseded:
            if path != self.last_ckpt:
                self._remove(runner, path)
        if superseded_steps:
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not self.save_best:
            return
        if not getattr(self, "_local", False):
            return super()._save_best_checkpoint(runner, metrics)
        if self.by_epoch:
            step_name, unit, step = self.filename_tmpl.format(runner.epoch), "epoch", runner.epoch
        else:
            step_name, unit, step = self.filename_tmpl.format(runner.iter), "iter", runner.iter
        meta = dict(epoch=runner.epoch, iter=runner.iter)
        if "auto" in self.key_indicators:
            self._init_rule(self.rules, [list(metrics.keys())[0]])

        single = len(self.key_indicators) == 1
        updated = False
        superseded: List[str] = []
        for key, rule in zip(self.key_indicators, self.rules):
            score = metrics[key]
            score_key, path_key = ("best_score", "best_ckpt") if single else (f"best_score_{key}", f"best_ckpt_{key}")
            best = runner.message_hub.get_info(score_key, self.init_value_map[rule])
            if score is None or not self.is_better_than[key](score, best):
                continue
            updated = True
            previous = self.best_ckpt_path if single else self.best_ckpt_path_dict[key]
            name = f"best_{key}_{step_name}".replace("/", "_")
            path = osp.join(self.out_dir, name)
            runner.message_hub.update_info(score_key, score)
            runner.message_hub.update_info(path_key, path)
            if single:
                self.best_ckpt_path = path
            else:
                self.best_ckpt_path_dict[key] = path
            self._write(runner, name, save_optimizer=False, save_param_scheduler=False, meta=meta, by_epoch=False)
            runner.logger.info(f"The best checkpoint with {score:0.4f} {key} at {step} {unit} is saved to {name}.")
            if previous and previous != path:
                superseded.append(previous)

        if updated and self.last_ckpt is not None:
            # The resumable checkpoint records which file is the best one: rewrite it before the old best goes.
            self._save_checkpoint_with_step(runner, step, meta)
        if is_main_process():
            for path in superseded:
                self._remove(runner, path, "best checkpoint")
