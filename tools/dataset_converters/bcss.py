"""Convert BCSS to tiles in the uniseg layout.

Usage::

    python tools/dataset_converters/bcss.py 0_Public-data-Amgad2019_0.25MPP data/bcss \
        [--tile 1024] [--classes main|all] [--val-fraction 0.1] [--seed 0] [--overwrite]

SRC holds ``rgbs_colorNormalized/``, ``masks/`` and ``meta/gtruth_codes.tsv``. ``--classes main`` (default)
groups the 21 codes into tumor/stroma/inflammatory/necrosis/other; outside_roi becomes 255 (ignore).
Test = the published held-out hospitals. See :mod:`uniseg.datasets.converters.bcss`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from uniseg.datasets.converters import convert_bcss
from uniseg.datasets.converters.common import run_converter_cli
from uniseg.datasets.converters.bcss import BCSS_TEST_SITES


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="BCSS folder holding rgbs_colorNormalized/ and masks/")
    parser.add_argument("out", help="output dataset folder")
    parser.add_argument("--tile", type=int, default=1024, help="tile side in pixels (default: 1024)")
    parser.add_argument("--classes", choices=("main", "all"), default="main",
                        help="'main': 5 grouped classes (default); 'all': the 21 annotated codes")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of non-test TCGA cases held out as val (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val split (default: 0)")
    parser.add_argument("--test-sites", nargs="+", default=list(BCSS_TEST_SITES),
                        help=f"tissue source sites forming the test split (default: {' '.join(BCSS_TEST_SITES)})")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_converter_cli(convert_bcss, args.src, args.out, tile=args.tile, classes=args.classes,
                             val_fraction=args.val_fraction, seed=args.seed, test_sites=args.test_sites,
                             overwrite=args.overwrite)

if __name__ == "__main__":
    sys.exit(main())
