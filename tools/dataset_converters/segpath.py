"""Convert one SegPath mask set to the uniseg layout.

Usage::

    python tools/dataset_converters/segpath.py segpath/ data/segpath_panck [--antibody panCK] [--overwrite]

SRC is a set folder (e.g. ``panCK_Epithelium/``) or a folder holding set folders and their
``<antibody>_fileinfo.csv``; ``--antibody`` picks the set when SRC holds several. The published
train/val/test split from the CSV is kept. See :mod:`uniseg.datasets.converters.segpath`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from uniseg.datasets.converters import convert_segpath
from uniseg.datasets.converters.common import run_converter_cli
from uniseg.datasets.converters.segpath import SEGPATH_SETS


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="SegPath set folder, or a folder holding set folders and fileinfo CSVs")
    parser.add_argument("out", help="output dataset folder")
    parser.add_argument("--antibody", choices=sorted(SEGPATH_SETS), default=None,
                        help="which set to convert (default: the only one found)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_converter_cli(convert_segpath, args.src, args.out, antibody=args.antibody, overwrite=args.overwrite)

if __name__ == "__main__":
    sys.exit(main())
