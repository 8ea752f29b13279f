"""Tiny datasets written by the tests: CIFAR batches in the official format and image folders.

Shared by test_data.py, test_train.py and test_compare.py (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR = {  # name: (folder, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def official_pickle(batch: dict) -> bytes:
    """As the release was written: protocol 2, numpy 1's module names (numpy 2 writes numpy._core)."""
    written = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in written
    return written


def cifar_batch(n: int, key: str, classes: int, start: int) -> tuple[dict, list[int]]:
    labels = [(start + i) % classes for i in range(n)]
    data = np.zeros((n, 3072), np.uint8)
    for i, label in enumerate(labels):  # channel-major rows: 1024 red, 1024 green, 1024 blue values
        data[i, :1024], data[i, 1024:2048], data[i, 2048:] = label, 100, 200
    batch = {b"batch_label": b"test batch", key.encode(): labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    return batch, labels


def write_cifar(root: Path, name: str, n: int = 3) -> dict[bool, list[int]]:
    """Official-format batches of n images each under root/<folder>; the labels of each split."""
    folder, train_files, test_files, key, classes = CIFAR[name]
    (root / folder).mkdir(parents=True)
    labels: dict[bool, list[int]] = {True: [], False: []}
    for train, files in ((True, train_files), (False, test_files)):
        for f in files:
            batch, batch_labels = cifar_batch(n, key, classes, start=len(labels[True]) + 7 * (not train))
            # the release's own pickling, and what Python 3 writes by default and at protocol 5
            payload = {"data_batch_2": pickle.dumps(batch), "data_batch_4": pickle.dumps(batch, protocol=5)}
            (root / folder / f).write_bytes(payload.get(f, official_pickle(batch)))
            labels[train] += batch_labels
    return labels


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (20, 14), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(path)


def write_folder(root: Path, classes=("cat", "dog"), per_class: int = 1) -> None:
    for split in ("train", "val"):
        for c in classes:
            for i in range(per_class):
                write_image(root / split / c / f"{i}.png", seed=i)


def interrupt_after(run, steps: int, method: str = "_train_step") -> None:
    """Run `run` (a trainer, or a search with method="_weight_step") and stop it with KeyboardInterrupt (as
    Ctrl-C would) when it starts step `steps` + 1, counted over its epochs."""
    import pytest

    original, calls = getattr(run, method), {"n": 0}

    def step(*args):
        if calls["n"] == steps:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args)

    setattr(run, method, step)
    with pytest.raises(KeyboardInterrupt):
        run.run()
