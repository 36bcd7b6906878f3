"""`PATH[:NUMBER]` options: `--adapter PATH[:WEIGHT]`, `--controlnet PATH[:SCALE]`."""

from __future__ import annotations

import math
from pathlib import Path

from medgen.errors import InputError


def split_path_number(text: str, *, number_label: str, default: float = 1.0) -> tuple[Path, float]:
    """Split on the last ':' only when what follows is a number, so 'C:/x' and 'a:b/c' stay paths.

    ``number_label`` names the number in the error for a non-finite one ("--adapter weight").
    """
    head, sep, tail = str(text).rpartition(":")
    if sep and head:
        try:
            number = float(tail)
        except ValueError:
            pass
        else:
            if not math.isfinite(number):
                raise InputError(None, f"{number_label} must be a finite number, got {tail!r}")
            return Path(head), number
    return Path(text), default
