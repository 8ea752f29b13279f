"""What a model needs to know about a dataset, and the shape every dataset builder has."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Union

from torch.utils.data import Dataset

PathLike = Union[str, os.PathLike]

# Per-channel statistics of the training images, as the reference code and torchvision publish them.
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_STD = (0.26733429, 0.25643846, 0.27615047)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSpec:
    """The facts about a dataset that a model and its evaluation depend on."""

    name: str  # registry name of the dataset, e.g. "cifar10"
    num_classes: int  # labels run over 0 .. num_classes - 1
    image_size: int  # side of the square images the model sees
    mean: tuple[float, float, float]  # per-channel mean subtracted by the normalisation
    std: tuple[float, float, float]  # per-channel std divided out by the normalisation


class DatasetBuilder(Protocol):
    """A registry entry: builds one split of a dataset, ready to index."""

    def __call__(self, root: PathLike | None, *, train: bool, augment: bool, image_size: int | None,
                 download: bool) -> tuple[Dataset, DataSpec]: ...
