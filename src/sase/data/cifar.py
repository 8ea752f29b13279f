"""'cifar10' / 'cifar100': the python versions of CIFAR, read from disk (Wang et al., 2024).

`root` is the folder that holds `cifar-10-batches-py` / `cifar-100-python`, or that folder itself.
Files are read by our own checked reader (cifar_format), so a copy that is not byte-identical to the
official release still loads. With `download=True` and the files absent, torchvision fetches them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .cifar_format import read_batch
from .in_memory import InMemoryImages
from .spec import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DataSpec, PathLike
from .transforms import CIFAR_SIZE, cifar_transform

DEFAULT_ROOT = "data"  # where CIFAR is looked for (and downloaded to) when no root is given
SOURCE_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarFormat:
    """How one CIFAR variant is laid out on disk."""

    name: str  # registry name, e.g. "cifar10"
    title: str  # how people write it, e.g. "CIFAR-10"
    folder: str  # folder the official archive extracts to
    archive: str  # the archive to fetch from SOURCE_URL
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str  # key of the labels in each batch dict
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str  # torchvision.datasets class that downloads it


CIFAR10 = CifarFormat("cifar10", "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
                      CIFAR10_MEAN, CIFAR10_STD, "CIFAR10")
CIFAR100 = CifarFormat("cifar100", "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                       ("train",), ("test",), "fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD, "CIFAR100")


def _folder(root: Path, fmt: CifarFormat) -> Path:
    """The folder holding the batch files: root/<folder> if it exists, root itself if it looks like it."""
    nested = root / fmt.folder
    if nested.is_dir():
        return nested
    if root.name == fmt.folder or any((root / f).is_file() for f in fmt.train_files + fmt.test_files):
        return root
    return nested


def _describe(files: tuple[str, ...]) -> str:
    # data_batch_1 .. data_batch_5 reads better than five names
    return f"{files[0]}..{files[-1][-1]}" if len(files) > 2 else ", ".join(files)


def _missing_error(root: Path, folder: Path, missing: list[str], fmt: CifarFormat) -> FileNotFoundError:
    wanted = f"{_describe(fmt.train_files)} and {_describe(fmt.test_files)}"
    where = f"no folder {folder}" if not folder.is_dir() else f"{folder} lacks {', '.join(missing)}"
    return FileNotFoundError(
        f"{fmt.title} not found: {where} (looked in {root}/{fmt.folder} and {root} for {wanted}); pass --download "
        f"(download=True), or place the python version of {fmt.title} from {SOURCE_URL} ({fmt.archive}, "
        f"extracted) there")


def _download(root: Path, folder: Path, fmt: CifarFormat, train: bool) -> None:
    import torchvision.datasets as tvd  # only here: fetching is the one job we leave to torchvision

    # torchvision puts the archive's folder inside the root it is given
    target = folder.parent if folder.name == fmt.folder else root
    getattr(tvd, fmt.torchvision_class)(str(target), train=train, download=True)


def load_cifar(root: PathLike | None, fmt: CifarFormat, *, train: bool,
               download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels (N,) of one split, every batch file checked."""
    root = Path(DEFAULT_ROOT if root is None else root).expanduser()
    files = fmt.train_files if train else fmt.test_files
    folder = _folder(root, fmt)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        _download(root, folder, fmt, train)
        folder = _folder(root, fmt)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise _missing_error(root, folder, missing, fmt)
    batches = [read_batch(folder / f, dataset=fmt.title, label_key=fmt.label_key, num_classes=fmt.num_classes)
               for f in files]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def build_cifar(root: PathLike | None, fmt: CifarFormat, *, train: bool, augment: bool,
                image_size: int | None = None, download: bool = False) -> tuple[InMemoryImages, DataSpec]:
    """One split of CIFAR-10 or CIFAR-100, augmented as in Wang et al., 2024 when `augment`."""
    size = CIFAR_SIZE if image_size is None else image_size
    images, labels = load_cifar(root, fmt, train=train, download=download)
    transform = cifar_transform(augment, fmt.mean, fmt.std, size)
    spec = DataSpec(fmt.name, fmt.num_classes, size, fmt.mean, fmt.std)
    return InMemoryImages(torch.from_numpy(images), torch.from_numpy(labels), transform), spec


build_cifar10 = partial(build_cifar, fmt=CIFAR10)
build_cifar100 = partial(build_cifar, fmt=CIFAR100)
