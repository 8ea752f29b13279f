"""Reading image files that may be damaged: a cheap check of every file up front, and an RGB loader.

Decoding all of ImageNet before training would read all 140 GB once more, so the default check
reads only what can be read cheaply: the header (is this an image at all?) and the end of the file
(JPEG and PNG files end with a marker that a truncated download lacks). `full=True` decodes every
image instead, which is right for small folders of unknown origin. Damage that only a decode can
find is still reported clearly, with its path, by `load_rgb` when the image is used.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from PIL import Image

TAIL_BYTES = 1024  # the end marker must lie in this many bytes at the end (some writers pad after it)
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}
_CHUNK = 512  # files per task of the checking pool: one future per file would cost too much memory


def image_problem(path: str, full: bool = False) -> Optional[str]:
    """Why the file at `path` cannot serve as an image, or None when it looks sound."""
    try:
        with Image.open(path) as image:
            if full:
                image.load()  # decodes everything: finds damage in the middle of the file too
            fmt = image.format
    except Exception as exc:  # noqa: BLE001 - PIL raises many exception types on malformed files
        return f"not a readable image ({type(exc).__name__}: {exc})"
    marker = _END_MARKERS.get(fmt or "")
    if marker is not None and not full:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
            if marker not in f.read():
                return f"truncated {fmt} (no end marker)"
    return None


def find_problems(paths: list[str], full: bool = False, threads: int = 16) -> dict[str, str]:
    """path -> problem for every path in `paths` that is not a sound image; checked in parallel."""
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]

    def check(chunk: list[str]) -> list[tuple[str, Optional[str]]]:
        return [(p, image_problem(p, full)) for p in chunk]

    # Threads suffice: the work is file I/O and C decoding, both of which release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(chunks)))) as pool:
        return {p: problem for results in pool.map(check, chunks) for p, problem in results if problem}


def load_rgb(path: str) -> Image.Image:
    """The image at `path` as RGB: grey, RGBA, CMYK and palette images converted."""
    try:
        with Image.open(path) as image:
            if image.mode == "P" and "transparency" in image.info:
                # PIL asks for palette transparency to go through RGBA before dropping it
                return image.convert("RGBA").convert("RGB")
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - name the file whatever the decoder raised
        raise ValueError(f"{path}: cannot decode image ({type(exc).__name__}: {exc}); delete or replace "
                         f"the file") from exc
