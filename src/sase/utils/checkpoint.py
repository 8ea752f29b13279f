"""Checkpoints that survive a crash: written to a temporary file, then renamed over the old one."""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors' Rust core names the system's error


def refused_write(err: BaseException, path: str | os.PathLike, what: str) -> OSError | None:
    """An OSError naming `path`, when writing `what` there failed because the system refused it (a full disk, a
    file-size limit, a read-only file system); None for any other failure.

    torch.save reports such a failure as a RuntimeError of its zip writer, the OSError in its context, and
    safetensors as a SafetensorError that quotes the system's error number: neither is an OSError, and neither
    names the file.
    """
    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, OSError) and seen.errno):
        seen = seen.__cause__ or seen.__context__
    if seen is not None:
        code = seen.errno
    else:
        match = _OS_ERROR.search(str(err))
        if match is None:
            return None
        code = int(match.group(1))
    return OSError(code, f"{what} not written: {os.strerror(code)}", str(path))


@contextlib.contextmanager
def temporary_for(path: str | os.PathLike, tmp: str | os.PathLike, what: str) -> Iterator[None]:
    """Inside, `what` is written to `tmp` on its way to `path`: a failure removes `tmp`, and a write the system
    refused is raised as an OSError naming `path` (`refused_write`)."""
    try:
        yield
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        refused = refused_write(err, path, what)
        if refused is not None:
            raise refused from err
        raise


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save `state` to `path` so that a crash at any moment leaves either the old or the new file.

    A write the system refuses (a full disk) is an OSError naming `path`; the old file stays as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with temporary_for(path, tmp, "checkpoint"):
        with os.fdopen(fd, "wb") as f:  # a file object: torch.save then reports a refused write's OSError
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half of one


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint as data only (`weights_only=True`: a checkpoint never runs code).

    A file torch cannot read, or one that asks to run code, is a ValueError naming it and saying why.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: {_unpickling_reason(str(err))}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile):
        # torch's zip reader raises a RuntimeError ("failed finding central directory") for a file cut short
        raise ValueError(f"{path}: not a readable checkpoint: the file is truncated or corrupt") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a sase checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


def _unpickling_reason(message: str) -> str:
    """What a weights_only refusal means, in one line: code in the file, or not a checkpoint at all."""
    code = re.search(r"GLOBAL (\S+)", message)
    if code:
        return (f"refused to load: it asks to run {code.group(1)}, and a checkpoint holds only tensors and "
                "plain values (do not load this file)")
    return "not a torch checkpoint (torch.load cannot read it)"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
