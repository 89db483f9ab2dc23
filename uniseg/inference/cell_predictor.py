"""An mmdet Mask2Former in instance mode as a window-level cell predictor for :class:`CellStitcher`.

The stitcher hands over uint8 RGB windows; this adapter does what mmdet's data pipeline would do
for them at test time (normalise with the model's own mean/std, pad to its size divisor, describe
each window in a ``DetDataSample``) and turns the scored, overlapping masks that
``Mask2Former.predict`` returns into non-overlapping cells with
:func:`~uniseg.structures.instances.paint_instances`. Coordinates stay in the window's pixels:
no resizing (``scale_factor`` 1, ``rescale=False``), and the padding is cropped off by mmdet's
fusion head using ``img_shape``.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..structures.instances import InstanceMap, paint_instances

__all__ = ["Mask2FormerCellPredictor"]


class Mask2FormerCellPredictor:
    """Predict the cells of RGB windows with an mmdet ``Mask2Former`` whose ``test_cfg.instance_on`` is set.

    Args:
        model: the detector (``mmdet.models.Mask2Former``) with a ``DetDataPreprocessor``; it is put
            in eval mode. Windows arrive in RGB; they are reversed to BGR for a model whose
            preprocessor does not convert (``bgr_to_rgb=False``: it was trained on OpenCV's BGR).
        score_thr: masks scoring below it are ignored (mmdet's score: class probability times mean
            mask probability).
        min_visible: a mask left with less than this fraction of its pixels after more confident
            masks are painted is a duplicate and dropped (see ``paint_instances``).
        max_per_image: keep at most this many cells per window (after ``test_cfg.max_per_image``,
            which bounds the masks mmdet returns).
        amp: run the model under bf16 autocast.
    """

    def __init__(self, model: nn.Module, score_thr: float = 0.5, min_visible: float = 0.5,
                 max_per_image: Optional[int] = None, amp: bool = False):
        test_cfg = getattr(model, "test_cfg", None) or {}
        if not hasattr(model, "panoptic_fusion_head") or not test_cfg.get("instance_on", False):
            raise ValueError(f"{type(model).__name__}: the cell predictor needs an mmdet Mask2Former/MaskFormer with "
                             f"model.test_cfg.instance_on=True (got test_cfg={dict(test_cfg)})")
        pre = getattr(model, "data_preprocessor", None)
        if pre is None or not hasattr(pre, "mean") or not hasattr(pre, "std") or pre.mean is None:
            raise ValueError(f"{type(model).__name__}: no data_preprocessor with mean/std to normalise windows with")
        self.model = model.eval()
        self.score_thr = float(score_thr)
        self.min_visible = float(min_visible)
        self.max_per_image = max_per_image
        self.amp = amp
        self.device = next(model.parameters()).device
        self.mean = pre.mean.to(self.device).view(1, 3, 1, 1)
        self.std = pre.std.to(self.device).view(1, 3, 1, 1)
        self.to_bgr = not getattr(pre, "_channel_conversion", True)
        self.size_divisor = max(1, int(getattr(pre, "pad_size_divisor", 1) or 1))
        self.pad_value = float(getattr(pre, "pad_value", 0) or 0)

    @torch.no_grad()
    def predict(self, tiles: np.ndarray) -> List[InstanceMap]:
        """Cells of each window of ``tiles`` (uint8, (B, h, w, 3) RGB), in window pixel coordinates."""
        from mmdet.structures import DetDataSample

        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB windows (B, h, w, 3), got {tiles.dtype} {tiles.shape}")
        b, h, w = tiles.shape[:3]
        if self.to_bgr:
            tiles = tiles[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        ph, pw = -(-h // self.size_divisor) * self.size_divisor, -(-w // self.size_divisor) * self.size_divisor
        if (ph, pw) != (h, w):  # as DetDataPreprocessor: pad bottom/right after normalisation
            x = F.pad(x, (0, pw - w, 0, ph - h), value=self.pad_value)
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(ph, pw), batch_input_shape=(ph, pw),
                    scale_factor=(1.0, 1.0))
        samples = [DetDataSample(metainfo=meta) for _ in range(b)]
        # each window whole, also for a detector whose own test mode slides (UniMask2Former)
        predict = getattr(self.model, "predict_whole", self.model.predict)
        if self.amp:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                results = predict(x, samples, rescale=False)
        else:
            results = predict(x, samples, rescale=False)
        return [self._paint(result.pred_instances, (h, w)) for result in results]

    def _paint(self, instances, shape) -> InstanceMap:
        scores = instances.scores.float()
        keep = scores >= self.score_thr  # filter on the device: only candidate masks cross to the host
        masks = instances.masks[keep]
        if masks.shape[-2:] != shape:
            raise RuntimeError(f"the model returned masks of size {tuple(masks.shape[-2:])} for {shape} windows")
        return paint_instances(masks.bool().cpu().numpy(), scores[keep].cpu().numpy(),
                               instances.labels[keep].cpu().numpy(), score_thr=self.score_thr,
                               min_visible=self.min_visible, max_instances=self.max_per_image)
