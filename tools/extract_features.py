#!/usr/bin/env python
"""Embed every image of a folder with a pathology encoder (UNI's class token by default).

``python tools/extract_features.py INPUT_DIR OUT_FILE [--encoder uni] [--weights hub|PATH|hf-hub:ORG/NAME]``

``OUT_FILE`` is ``.npz`` (``features`` float32 [N, D], ``names``, ``encoder``, ``weights``) or ``.pt``
(a dict with the same keys, ``features`` as a tensor). It is written only once every image has been
embedded: a bad image or bad weights leave no output and an earlier output file untouched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from uniseg.models.backbones import CheckpointError, list_encoders  # noqa: E402
from uniseg.utils.atomic import atomic_output  # noqa: E402
from uniseg.utils.imageio import IMAGE_SUFFIXES, ImageReadError  # noqa: E402

OUTPUT_SUFFIXES = (".npz", ".pt")


def list_images(folder: Path, recursive: bool = False) -> List[Path]:
    """Images under ``folder`` with a known suffix (any case), sorted by relative path.

    Hidden entries are skipped: they are not tiles (e.g. macOS ``._name.png`` resource forks).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input folder not found" if not folder.exists()
                                else f"{folder}: not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = [p for p in candidates
              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
              and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not images:
        where = "or its subfolders " if recursive else ""
        hint = "" if recursive else " (use --recursive to search subfolders)"
        raise ValueError(f"{folder}: no images found in the folder {where}(accepted suffixes: "
                         f"{', '.join(IMAGE_SUFFIXES)}){hint}")
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix())


def save_features(path: Path, features, names: Sequence[str], encoder: str, weights: str) -> None:
    """Write the features atomically, as ``.npz`` or ``.pt`` by suffix."""
    suffix = path.suffix.lower()
    with atomic_output(path) as tmp:
        if suffix == ".npz":
            import numpy as np

            with open(tmp, "wb") as f:  # a file object keeps numpy from appending its own suffix
                np.savez(f, features=features, names=np.asarray(list(names), dtype=str),
                         encoder=np.asarray(encoder), weights=np.asarray(weights))
        elif suffix == ".pt":
            import torch

            torch.save({"features": torch.from_numpy(features), "names": list(names), "encoder": encoder,
                        "weights": weights}, tmp)
        else:
            raise ValueError(f"{path}: output must end with {' or '.join(OUTPUT_SUFFIXES)}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Embed every image of a folder with a pathology encoder.")
    parser.add_argument("input_dir", type=Path, help="folder of images (" + ", ".join(IMAGE_SUFFIXES) + ")")
    parser.add_argument("out_file", type=Path, help="output file, .npz or .pt")
    parser.add_argument("--encoder", default="uni", choices=list_encoders(), help="encoder (default: uni)")
    parser.add_argument("--weights", default="hub",
                        help="'hub' (the encoder's Hugging Face repository, local cache first), "
                             "hf-hub:ORG/NAME, or a local checkpoint file (default: hub)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes (default: 0)")
    parser.add_argument("--recursive", action="store_true", help="also embed images in subfolders")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="run the encoder under autocast")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from uniseg.engine.hooks import flush_denormal

    with flush_denormal():  # process state: set by the tool for its own work, and restored after it
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.out_file.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"{args.out_file}: output must end with {' or '.join(OUTPUT_SUFFIXES)}")
        if args.batch_size < 1 or args.num_workers < 0:
            raise ValueError("--batch-size must be at least 1 and --num-workers at least 0")
        paths = list_images(args.input_dir, recursive=args.recursive)

        from uniseg.inference.features import extract_features

        features, names = extract_features(
            args.encoder, paths, weights=args.weights, batch_size=args.batch_size, device=args.device,
            num_workers=args.num_workers, progress=not args.no_progress, amp=args.amp, root=args.input_dir)
        save_features(args.out_file, features, names, args.encoder, args.weights)
    except (CheckpointError, ImageReadError, FileNotFoundError, ValueError) as exc:
        print(f"extract_features: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(names)} x {features.shape[1]} features to {args.out_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
