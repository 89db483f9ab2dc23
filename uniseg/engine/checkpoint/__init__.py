"""Checkpoints that survive kills and full disks, load without unsafe unpickling and prove their integrity.

Nothing here changes mmengine or torch: the pieces are used by uniseg's registered extension points,
which the configs select (``default_hooks.checkpoint.type='SafeCheckpointHook'``,
``runner_type='UnisegRunner'`` / ``'UnisegFlexibleRunner'``, ``strategy=dict(type='FSDP2Strategy')``):

* ``files``: write under a temporary name, fsync, rename; clean up what killed runs left;
* ``plain_state``: store mmengine's message hub as plain data, so torch's default weights-only
  loader reads uniseg checkpoints with no allowlist;
* ``checksum``: SHA-256 of the weights and optimizer state, recorded at writing, verified at reading;
* ``reading``: safe reading with errors that name the file (empty, truncated, corrupted, foreign);
* ``model_state``: strict loading into a model with the mismatching keys listed;
* ``resume``: which checkpoint ``--resume`` continues from when ``last_checkpoint`` is empty or stale.
"""
from ...models.backbones.weights import CheckpointError
from .checksum import CHECKSUM_KEY, add_checksum, digest, verify_checksum
from .files import remove_stale_temporaries, replace_durably, temporary_checkpoint_name, write_text_durably
from .model_state import compare_state_dict, extract_state_dict, load_model_state
from .plain_state import from_weights_only, to_weights_only
from .reading import MMENGINE_CHECKPOINT_GLOBALS, load_mmengine_checkpoint, load_verified_checkpoint
from .resume import find_resume_checkpoint, list_checkpoints

__all__ = [
    "CHECKSUM_KEY", "CheckpointError", "MMENGINE_CHECKPOINT_GLOBALS", "add_checksum", "compare_state_dict", "digest",
    "extract_state_dict", "find_resume_checkpoint", "from_weights_only", "list_checkpoints", "load_mmengine_checkpoint",
    "load_model_state", "load_verified_checkpoint", "remove_stale_temporaries", "replace_durably",
    "temporary_checkpoint_name", "to_weights_only", "verify_checksum", "write_text_durably",
]
