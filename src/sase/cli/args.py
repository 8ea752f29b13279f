"""argparse types that refuse a bad value with a line naming the flag, before any work starts."""
from __future__ import annotations

import argparse

from ..train.config import device_error


def positive_int(text: str) -> int:
    """An integer of at least 1 (a batch size, an image size)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count(text: str) -> int:
    """An integer of at least 0 (worker processes)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def device(text: str) -> str:
    """auto, or a device string torch can parse (whether it is present is checked when the run starts)."""
    error = device_error(text)
    if error:
        raise argparse.ArgumentTypeError(error)
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
