"""The data folder on disk: private to the engine's user, and measured for the quota.

Uploaded slices are patient data. Whatever mode an existing folder had, the engine makes every folder
0700 and every file 0600 at start, and its own umask keeps new ones that way.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40,
               "tib": 1 << 40}


def make_private(data_dir: Path) -> int:
    """chmod the folder tree 700 / files 600 (links are left alone); returns how many modes changed."""
    changed = 0
    for root, dirs, files in os.walk(data_dir):
        changed += _chmod(Path(root), PRIVATE_DIR_MODE)
        for name in files:
            changed += _chmod(Path(root) / name, PRIVATE_FILE_MODE)
    if changed:
        logger.warning("%s: made %d file(s) and folder(s) private to this user (they were readable by others)",
                       data_dir, changed)
    return changed


def _chmod(path: Path, mode: int) -> int:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) == mode:
        return 0
    os.chmod(path, mode)
    return 1


def data_usage(data_dir: Path) -> int:
    """Bytes of every file under ``data_dir`` (what the quota counts)."""
    total = 0
    for root, _, files in os.walk(data_dir):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we walked
                pass
    return total


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5GiB`` or a number of bytes; units are powers of 1024."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (write it like 500M, 20G or 1073741824)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for a full disk or quota, or SQLite's 'database or disk is full'."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    return "disk is full" in str(exc) or "database or disk is full" in str(exc)
