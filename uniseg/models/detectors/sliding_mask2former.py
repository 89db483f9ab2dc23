"""mmdet's Mask2Former with a sliding-window test mode, for images that hold more cells than queries.

Mask2Former returns at most one object per query. A test image larger than the training window (a
CoNSeP tile at 0.5 um/px is 500 px and holds about 590 nuclei; the configs have 300 queries) is
under-detected by construction when it is predicted whole. ``test_cfg.mode='slide'`` predicts it
the way ``tools/infer.py`` predicts a slide: overlapping windows of the training size, each cell
kept by exactly one window (:class:`~uniseg.inference.cell_stitching.CellStitcher`), so that
``tools/test.py`` scores what users get from whole-slide inference.

A slide prediction is not a stack of masks (that would be the (n, H, W) tensor the window avoids)
but a painted id map, ``data_sample.pred_instance_map`` (``ids`` (1, H, W); ``k`` is
``pred_instances[k - 1]``, whose ``labels`` and ``scores`` it carries), which
:class:`~uniseg.evaluation.CellInstanceMetric` reads. The windows see the image the data pipeline
made (resampled to the working resolution); with ``rescale`` the id map is resized (nearest) to
the original size, where the ground truth is.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.models.detectors import Mask2Former
from mmdet.registry import MODELS
from mmengine.structures import InstanceData, PixelData

__all__ = ["UniMask2Former"]

TEST_MODES = ("whole", "slide")


class _CellCollector:
    """A cell sink that keeps the stitched cells and their id image in memory (one test image).

    The stitcher numbers cells ``1, 2, ...`` in the order it hands them on, so cell ``k`` of the id
    image is entry ``k - 1`` of the collected labels and scores.
    """

    def __init__(self, height: int, width: int) -> None:
        self.ids = np.zeros((height, width), np.int32)
        self.labels: List[np.ndarray] = [np.zeros(0, np.int64)]
        self.scores: List[np.ndarray] = [np.zeros(0, np.float32)]
        self.count = 0

    def write_cells(self, cells) -> None:
        expected = np.arange(self.count + 1, self.count + len(cells) + 1)
        if not np.array_equal(cells.ids, expected):
            raise RuntimeError(f"cell stitching handed on ids {cells.ids[:3].tolist()}..., expected them to count "
                               f"up from {self.count + 1}")
        self.labels.append(cells.labels)
        self.scores.append(cells.scores)
        self.count += len(cells)

    def write_band(self, y0: int, ids: np.ndarray) -> None:
        self.ids[y0:y0 + len(ids)] = ids


@MODELS.register_module()
class UniMask2Former(Mask2Former):
    """mmdet's ``Mask2Former`` whose ``test_cfg.mode`` may be ``'slide'`` (see the module docstring).

    ``test_cfg`` keys besides mmdet's: ``mode`` (``'whole'``, the default: exactly mmdet's
    ``predict``), and for ``'slide'``: ``crop_size`` and ``stride`` (h, w) of the windows in
    working-resolution pixels (the overlap should exceed the largest cell), ``score_thr`` (0.5) and
    ``min_visible`` (0.5) of the cells taken from each window, ``batch_size`` (windows per forward
    pass, 4). Parameters are mmdet's, so checkpoints of ``Mask2Former`` load unchanged.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mode = self.test_cfg.get("mode", "whole") if self.test_cfg else "whole"
        if mode not in TEST_MODES:
            raise ValueError(f"UniMask2Former: test_cfg.mode must be one of {TEST_MODES}, got {mode!r}")
        if mode == "slide":
            for key in ("crop_size", "stride"):
                value = self.test_cfg.get(key)
                if value is None or len(value) != 2 or min(value) < 1:
                    raise ValueError(f"UniMask2Former: test_cfg.mode='slide' needs test_cfg.{key} as two positive "
                                     f"ints (h, w), got {value!r}")

    def predict_whole(self, batch_inputs: torch.Tensor, batch_data_samples, rescale: bool = True):
        """mmdet's prediction of each image as one window (what the cell predictor calls per window)."""
        return super().predict(batch_inputs, batch_data_samples, rescale=rescale)

    def predict(self, batch_inputs: torch.Tensor, batch_data_samples, rescale: bool = True):
        if self.test_cfg.get("mode", "whole") == "whole":
            return self.predict_whole(batch_inputs, batch_data_samples, rescale=rescale)
        for inputs, sample in zip(batch_inputs, batch_data_samples):
            self._predict_slide(inputs, sample, rescale)
        return batch_data_samples

    @torch.no_grad()
    def _predict_slide(self, inputs: torch.Tensor, sample, rescale: bool) -> None:
        from uniseg.inference.cell_predictor import Mask2FormerCellPredictor
        from uniseg.inference.cell_stitching import CellStitcher
        from uniseg.inference.inferencer import ArraySource

        cfg = self.test_cfg
        predictor = Mask2FormerCellPredictor(self, score_thr=cfg.get("score_thr", 0.5),
                                             min_visible=cfg.get("min_visible", 0.5))
        height, width = sample.img_shape[:2]
        image = self._unnormalise(inputs[:, :height, :width])  # the pipeline's image, in the model's channel order
        rgb = image[..., ::-1] if predictor.to_bgr else image  # what the predictor converts back to that order
        stitcher = CellStitcher(predictor, tile=tuple(cfg.crop_size), stride=tuple(cfg.stride),
                                batch_size=cfg.get("batch_size", 4))
        collector = _CellCollector(height, width)
        stitcher.run(ArraySource(np.ascontiguousarray(rgb)), sinks=[collector])
        labels, scores = np.concatenate(collector.labels), np.concatenate(collector.scores)
        ids_t = torch.from_numpy(collector.ids)
        if rescale and tuple(sample.ori_shape[:2]) != (height, width):
            ids_t = F.interpolate(ids_t[None, None].float(), size=tuple(sample.ori_shape[:2]),
                                  mode="nearest")[0, 0].to(torch.int32)
        device = inputs.device
        sample.pred_instance_map = PixelData(ids=ids_t[None].to(device))
        sample.pred_instances = InstanceData(labels=torch.from_numpy(labels).to(device),
                                             scores=torch.from_numpy(scores).to(device))

    def _unnormalise(self, inputs: torch.Tensor) -> np.ndarray:
        """(C, h, w) normalised input -> (h, w, 3) uint8, exactly the image before normalisation."""
        pre = self.data_preprocessor
        mean = pre.mean.to(inputs.device).view(-1, 1, 1)
        std = pre.std.to(inputs.device).view(-1, 1, 1)
        pixels = (inputs.float() * std + mean).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(1, 2, 0).cpu().numpy()
