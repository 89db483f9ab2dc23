"""Type aliases shared across uniseg (one definition, imported everywhere)."""
from __future__ import annotations

import os
from typing import Union

__all__ = ["PathLike"]

#: What every function that takes a file or directory accepts: a string or any ``os.PathLike``.
PathLike = Union[str, os.PathLike]
