"""A reader for the python-pickle batches of CIFAR-10 / CIFAR-100 that checks structure, not checksums.

torchvision's CIFAR loader refuses any file whose MD5 differs from the official release, so a
re-packed copy or a small file written by a test cannot pass it. This reader accepts any file of the
same format and says which file is wrong, and how, when one is not. Each batch is a pickled dict
(bytes or str keys) with 'data', a uint8 array (N, 3072) of N images 3x32x32 stored channel-major,
and a label list under 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SHAPE = (3, 32, 32)
IMAGE_VALUES = 3 * 32 * 32  # values per image in a row of 'data'

# Unpickling runs whatever callables a file names, so only those a batch of numpy arrays needs are
# allowed: numpy 1 and 2 spellings, and the protocol-2 bytes shim Python 3 writes.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it asks to run {module}.{name}, which a CIFAR batch never needs")
        return super().find_class(module, name)


def _unpickle(path: Path, dataset: str) -> dict[str, Any]:
    """The dict in a batch file, its keys as str. ValueError naming the file if it is not one."""
    try:
        with open(path, "rb") as f:
            # latin1: the official files come from Python 2, whose byte strings load as str this way
            content = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - a damaged pickle can raise nearly any exception type
        raise ValueError(f"{path}: not a readable {dataset} python batch ({type(exc).__name__}: {exc}); "
                         f"replace it with the file from the python version of {dataset}") from exc
    if not isinstance(content, dict):
        raise ValueError(f"{path}: holds a {type(content).__name__}, but a {dataset} batch is a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in content.items()}


def read_batch(path: Path, *, dataset: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one batch file, checked."""
    batch = _unpickle(path, dataset)
    missing = [key for key in ("data", label_key) if key not in batch]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(map(repr, missing))} (found: "
                         f"{', '.join(map(repr, sorted(batch))) or 'none'}); a {dataset} batch holds "
                         f"'data' and '{label_key}'")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != IMAGE_VALUES or data.shape[0] == 0:
        found = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) \
            else f"a {type(data).__name__}"
        raise ValueError(f"{path}: 'data' is {found}; expected a uint8 array of shape (N, {IMAGE_VALUES}), "
                         f"N >= 1 images of 3x32x32")
    labels = _check_labels(path, batch[label_key], len(data), label_key, dataset, num_classes)
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _check_labels(path: Path, raw: Any, n: int, key: str, dataset: str, num_classes: int) -> np.ndarray:
    try:
        labels = np.asarray(raw)
    except Exception as exc:  # noqa: BLE001 - ragged or odd objects
        raise ValueError(f"{path}: '{key}' is not a list of integers ({exc})") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: '{key}' is {labels.dtype} of shape {labels.shape}; expected one integer "
                         f"label per image")
    if len(labels) != n:
        raise ValueError(f"{path}: {len(labels)} labels in '{key}' for {n} images in 'data'")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"{path}: label {bad[0]} in '{key}' is out of range 0..{num_classes - 1} "
                         f"({dataset} has {num_classes} classes; {bad.size} labels out of range)")
    return labels.astype(np.int64)
