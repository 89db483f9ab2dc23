"""Convert a CoNSeP download to the uniseg instance layout (nucleus objects + nucleus-type masks).

Usage::

    python tools/dataset_converters/consep.py CoNSeP/ data/consep \
        [--keep-7-types] [--val-fraction 0.1] [--seed 0] [--overwrite]

SRC holds ``Train/`` and ``Test/`` (each with ``Images/*.png`` and ``Labels/*.mat``). The seven
nucleus types are merged into HoVer-Net's four classes unless ``--keep-7-types`` is given. See
:mod:`uniseg.datasets.converters.consep` for the format. Nothing is left in OUT if the conversion fails.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from uniseg.datasets.converters import convert_consep
from uniseg.datasets.converters.common import run_converter_cli


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="CoNSeP folder holding Train/ and Test/")
    parser.add_argument("out", help="output dataset folder")
    parser.add_argument("--keep-7-types", action="store_true",
                        help="keep CoNSeP's 7 nucleus types instead of HoVer-Net's 4 merged classes")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the official Train set held out as val (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val split (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_converter_cli(convert_consep, args.src, args.out, merge_types=not args.keep_7_types,
                             val_fraction=args.val_fraction, seed=args.seed, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
