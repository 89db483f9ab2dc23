#!/usr/bin/env python
"""Check that this environment can run uniseg: ``python tools/check_env.py [--json]``.

Same as ``python -m uniseg.env``, but it loads ``uniseg/env.py`` by path instead of importing the
``uniseg`` package, so it still reports (rather than crashing) when mmcv, mmseg or torch is broken:
importing the package needs exactly the stack being checked.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the check's `import uniseg` finds this checkout without installing


def load_env_module():
    spec = importlib.util.spec_from_file_location("_uniseg_env", ROOT / "uniseg" / "env.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(load_env_module().main())
