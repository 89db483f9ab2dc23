"""Convert PanNuke folds to nucleus-type masks (and nucleus objects) in the uniseg layout.

Usage::

    python tools/dataset_converters/pannuke.py pannuke/ data/pannuke \
        [--train-folds 1] [--val-folds 2] [--test-folds 3] [--no-instances] [--overwrite]

Besides ``masks/`` (nucleus types per pixel) the output has ``instances/`` (one 16-bit id per nucleus),
so the same folder trains a semantic and an instance model; ``--no-instances`` leaves it out.

SRC holds ``Fold 1/``, ``Fold 2/``, ``Fold 3/`` as extracted from the three archives. The default fold
assignment is the PanNuke paper's first configuration. See :mod:`uniseg.datasets.converters.pannuke`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from uniseg.datasets.converters import convert_pannuke
from uniseg.datasets.converters.common import run_converter_cli


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder holding the extracted 'Fold 1', 'Fold 2', 'Fold 3' folders")
    parser.add_argument("out", help="output dataset folder")
    parser.add_argument("--train-folds", type=int, nargs="+", default=[1], help="folds for training (default: 1)")
    parser.add_argument("--val-folds", type=int, nargs="*", default=[2], help="folds for validation (default: 2)")
    parser.add_argument("--test-folds", type=int, nargs="*", default=[3], help="folds for testing (default: 3)")
    parser.add_argument("--no-instances", action="store_true",
                        help="write only the semantic masks, no instances/ folder")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_converter_cli(convert_pannuke, args.src, args.out, train_folds=args.train_folds,
                             val_folds=args.val_folds, test_folds=args.test_folds, overwrite=args.overwrite,
                             instances=not args.no_instances)

if __name__ == "__main__":
    sys.exit(main())
