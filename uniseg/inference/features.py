"""Whole-image embeddings from a pathology encoder, the way UNI's model card computes them.

The card resizes the shorter side of each image to 224 px (aspect ratio kept, no crop), converts it
to ``[0, 1]``, normalises with ImageNet's mean/std and takes ``model(image)``: the final-normed class
token, ``[1, 1024]`` for UNI. Two things the card leaves open are settled here:

* A ViT only takes sides that are multiples of its patch size, and the card's resize of a non-square
  image usually produces a longer side that is not one (e.g. 224 x 373). That side is snapped to the
  nearest multiple of the patch size, which changes the aspect ratio by less than half a patch and
  keeps the whole field of view (no crop, no padding tokens that would leak into the class token).
* Images whose resized shapes differ cannot share a batch. Decoded images are grouped by shape and a
  group is run as soon as it holds ``batch_size`` images; rows of the result follow the input order.

Resizing runs on float tensors (bilinear with antialiasing), which differs from the card's PIL resize
of ``uint8`` images only by rounding.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_encoder, get_encoder_spec
from ..utils.imageio import ImageReadError, read_rgb
from ..utils.typing_utils import PathLike

__all__ = ["extract_features", "embed_batch", "preprocess_image", "resized_shape", "AMP_DTYPES"]

AMP_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resized_shape(height: int, width: int, short_side: int, patch_size: int) -> Tuple[int, int]:
    """Output ``(H, W)`` of the card's ``Resize(short_side)``, with both sides snapped to the patch grid.

    The shorter side becomes ``short_side``; the longer one ``int(short_side * long / short)`` as in
    torchvision's ``Resize``, then the nearest multiple of ``patch_size`` (at least one patch).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    short, long = min(height, width), max(height, width)
    new_short, new_long = short_side, int(short_side * long / short)

    def snap(n: int) -> int:
        return max(patch_size, int(n / patch_size + 0.5) * patch_size)

    new_short, new_long = snap(new_short), snap(new_long)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def preprocess_image(image: np.ndarray, short_side: int, patch_size: int,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``uint8`` RGB ``(H, W, 3)`` -> normalised float ``(3, H', W')`` at the encoder's working size."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    # Converting to float copies, which also makes read-only decoder buffers safe to hand to torch.
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).div_(255.0)
    size = resized_shape(image.shape[0], image.shape[1], short_side, patch_size)
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    mean_t = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(3, 1, 1)
    return (x - mean_t) / std_t


class _ImageFolderDataset(Dataset):
    """Decodes and preprocesses one image per item; runs inside DataLoader workers when there are any.

    A read error is returned rather than raised so the main process can re-raise it with its own
    message (an exception raised in a worker comes back wrapped in the worker's traceback).
    """

    def __init__(self, paths: Sequence[Path], short_side: int, patch_size: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.paths = list(paths)
        self.short_side, self.patch_size = short_side, patch_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[int, Union[torch.Tensor, ImageReadError]]:
        try:
            image = read_rgb(self.paths[index])
        except ImageReadError as exc:
            return index, exc
        return index, preprocess_image(image, self.short_side, self.patch_size, self.mean, self.std)


def _as_list(items: list) -> list:
    """Collate that keeps items separate: images of different shapes travel in one loader batch."""
    return items


def embed_batch(model: nn.Module, images: torch.Tensor, amp: Optional[str] = None) -> torch.Tensor:
    """``model(images)`` under inference mode (and autocast when ``amp`` is set); checks for ``[B, D]``.

    The encoders of :mod:`uniseg.models.backbones` are built with ``num_classes=0``, so their output
    is the normalised class token, the embedding UNI's card uses.
    """
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)} or None, got {amp!r}")
    autocast = (torch.autocast(device_type=images.device.type, dtype=AMP_DTYPES[amp]) if amp
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        out = model(images)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the encoder returned {shape} for {images.shape[0]} images; expected one embedding per "
                         f"image [B, D] (build timm models with num_classes=0)")
    return out


def _preprocessing_of(encoder: nn.Module, name: Optional[str]) -> Tuple[int, int, Tuple[float, ...], Tuple[float, ...]]:
    """Working size, patch size and normalisation: from the table for a name, else from the module.

    A module passed directly is taken to be a timm ViT fed ImageNet-normalised images at its
    ``patch_embed.img_size``, like every encoder in the table.
    """
    if name is not None:
        spec = get_encoder_spec(name)
        return spec.pretrain_img_size, spec.patch_size, spec.mean, spec.std
    patch_embed = getattr(encoder, "patch_embed", None)
    if patch_embed is None:
        raise TypeError(f"{type(encoder).__name__} has no patch_embed: pass an encoder name or a timm ViT")
    img_size, patch = patch_embed.img_size, patch_embed.patch_size
    if img_size[0] != img_size[1] or patch[0] != patch[1]:
        raise ValueError(f"non-square working size {tuple(img_size)} or patch {tuple(patch)} is not supported")
    return img_size[0], patch[0], IMAGENET_MEAN, IMAGENET_STD


def _shape_groups(loader: DataLoader, batch_size: int,
                  max_pending: Optional[int] = None) -> Iterator[Tuple[List[int], torch.Tensor]]:
    """Yield ``(indices, stacked images)`` with one shape per batch, full batches as soon as possible.

    Images wait in per-shape groups until a group is full. So that a folder where nearly every image
    has its own shape does not keep everything in memory, the largest group is run early (as a partial
    batch) whenever ``max_pending`` images (default: 4 batches) are waiting.
    """
    max_pending = max_pending or 4 * batch_size
    pending: Dict[Tuple[int, ...], List[Tuple[int, torch.Tensor]]] = {}

    def take(shape: Tuple[int, ...]) -> Tuple[List[int], torch.Tensor]:
        group = pending.pop(shape)
        return [i for i, _ in group], torch.stack([x for _, x in group])

    for items in loader:
        for index, item in items:
            if isinstance(item, ImageReadError):
                raise item
            shape = tuple(item.shape)
            pending.setdefault(shape, []).append((index, item))
            if len(pending[shape]) == batch_size:
                yield take(shape)
            elif sum(len(g) for g in pending.values()) >= max_pending:
                yield take(max(pending, key=lambda k: len(pending[k])))
    while pending:
        yield take(next(iter(pending)))


def extract_features(encoder: Union[str, nn.Module], paths: Sequence[PathLike], weights: Optional[str] = None,
                     batch_size: int = 32, device: Union[str, torch.device] = "cpu", num_workers: int = 0,
                     progress: bool = True, amp: Optional[str] = None,
                     root: Optional[PathLike] = None) -> Tuple[np.ndarray, List[str]]:
    """Embed each image in ``paths``; returns ``(features [N, D] float32, names)`` in input order.

    ``encoder`` is a name from the encoder table (built with :func:`create_encoder` and ``weights``:
    a local file, ``hf-hub:org/name`` or ``"hub"``) or a ready module, which is moved to ``device`` and
    run in eval mode (its train/eval mode is restored afterwards). ``names`` are the paths relative
    to ``root`` when given, else the paths as passed. Raises :class:`ImageReadError` naming the first
    image that cannot be decoded and :class:`~uniseg.models.backbones.CheckpointError` for bad weights.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)} or None, got {amp!r}")
    paths = [Path(p) for p in paths]
    names = [p.relative_to(root).as_posix() if root is not None else str(p) for p in paths]

    if isinstance(encoder, str):
        if weights is None:
            warnings.warn(f"no weights given for encoder {encoder!r}: the features come from a randomly "
                          f"initialised model", UserWarning, stacklevel=2)
        name: Optional[str] = encoder
        model = create_encoder(encoder, weights=weights)
    elif isinstance(encoder, nn.Module):
        if weights is not None:
            raise ValueError("weights only apply when the encoder is given by name")
        name, model = None, encoder
    else:
        raise TypeError(f"encoder must be a name or an nn.Module, got {type(encoder).__name__}")
    short_side, patch_size, mean, std = _preprocessing_of(model, name)

    device = torch.device(device)
    dataset = _ImageFolderDataset(paths, short_side, patch_size, mean, std)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_as_list, pin_memory=device.type == "cuda")

    from tqdm.auto import tqdm

    was_training = model.training
    model.to(device).eval()
    rows: List[Optional[np.ndarray]] = [None] * len(paths)
    try:
        with tqdm(total=len(paths), unit="img", desc="features", disable=not progress) as bar:
            for indices, images in _shape_groups(loader, batch_size):
                out = embed_batch(model, images.to(device, non_blocking=True), amp=amp)
                feats = out.float().cpu().numpy()
                for i, row in zip(indices, feats):
                    rows[i] = row
                bar.update(len(indices))
    finally:
        model.train(was_training)

    if not rows:
        dim = getattr(model, "num_features", getattr(model, "embed_dim", 0))
        return np.zeros((0, dim), dtype=np.float32), names
    return np.stack(rows).astype(np.float32, copy=False), names
