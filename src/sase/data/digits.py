"""'digits': scikit-learn's bundled 8x8 handwritten digits, the dataset that needs no download.

1797 grey images of 10 classes, values 0..16. A fixed permutation splits them 80% train / 20% test;
the images are scaled to [0, 1], resized once to the requested side and replicated to three channels,
so that any model built for RGB input runs on them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .in_memory import InMemoryImages
from .spec import DataSpec, PathLike
from .transforms import shift_transform

DEFAULT_SIZE = 16  # side of the images the model sees, unless asked otherwise
SPLIT_SEED = 0  # seed of the permutation that splits train from test; changing it changes both splits
TRAIN_FRACTION = 0.8  # share of the images in the training split
SHIFT = 2  # augmentation: random translation by up to this many pixels (at the output size)
NUM_CLASSES = 10


def split_indices(n: int, train: bool) -> np.ndarray:
    """The indices of one split of n images, the same on every run and machine."""
    # RandomState, not default_rng: numpy guarantees its stream never changes across versions.
    order = np.random.RandomState(SPLIT_SEED).permutation(n)
    n_train = round(TRAIN_FRACTION * n)
    return order[:n_train] if train else order[n_train:]


def _resized_images(image_size: int) -> tuple[Tensor, Tensor]:
    """All digits in [0, 1] at image_size x image_size, (N, 1, S, S), and their labels (N,)."""
    from sklearn.datasets import load_digits  # imported here: sklearn takes a second to import

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    if image_size != images.shape[-1]:
        # antialias matters only when shrinking below 8x8; it leaves enlarging plain bilinear
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return images, torch.from_numpy(digits.target)


def build_digits(root: PathLike | None = None, *, train: bool, augment: bool, image_size: int | None = None,
                 download: bool = False) -> tuple[InMemoryImages, DataSpec]:
    """One split of the digits. `root` and `download` are accepted for a uniform registry and unused."""
    size = DEFAULT_SIZE if image_size is None else image_size
    images, labels = _resized_images(size)
    # The statistics come from the training split at this size, so train and test share them.
    train_images = images[torch.from_numpy(split_indices(len(images), True))]
    mean, std = train_images.mean().item(), train_images.std().item()
    images = (images - mean) / std

    keep = torch.from_numpy(split_indices(len(images), train))
    split = images[keep].expand(-1, 3, -1, -1)  # (n, 3, S, S) view: one grey plane shared by 3 channels
    # The blank background of a digit is 0 before normalisation; a shifted image exposes more of it.
    transform = shift_transform(size, SHIFT, fill=-mean / std) if augment else None
    spec = DataSpec("digits", NUM_CLASSES, size, (mean,) * 3, (std,) * 3)
    return InMemoryImages(split, labels[keep], transform), spec
