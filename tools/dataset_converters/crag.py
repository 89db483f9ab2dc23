"""Convert a CRAG download to the uniseg layout.

Usage::

    python tools/dataset_converters/crag.py CRAG_v2/CRAG data/crag [--val-fraction 0.1] [--seed 0] [--overwrite]

SRC holds ``train/`` and ``valid/`` (each with ``Images/`` and ``Annotation/``); see
:mod:`uniseg.datasets.converters.crag` for the format. Nothing is left in OUT if the conversion fails.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from uniseg.datasets.converters import convert_crag
from uniseg.datasets.converters.common import run_converter_cli


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="CRAG folder holding train/ and valid/")
    parser.add_argument("out", help="output dataset folder")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the official train set held out as val (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val split (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_converter_cli(convert_crag, args.src, args.out, val_fraction=args.val_fraction, seed=args.seed,
                             overwrite=args.overwrite)

if __name__ == "__main__":
    sys.exit(main())
