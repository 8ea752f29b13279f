"""Run folders: checked before a run spends minutes on its data, so that a bad --out fails at once."""
from __future__ import annotations

import os
from pathlib import Path


def check_out(path: str | os.PathLike) -> Path:
    """`path` as a run folder to write into, existing or not; a ValueError naming it when it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder that will hold the new ones
    if not existing.is_dir():
        raise ValueError(f"--out {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: {existing} is not writable")
    return path


def make_out(path: str | os.PathLike) -> Path:
    """Create run folder `path` (and its parents); a ValueError naming it when the system refuses."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a read-only file system, which os.access does not always report to root
        raise ValueError(f"--out {path}: cannot create the folder ({err.strerror})") from None
    return path
