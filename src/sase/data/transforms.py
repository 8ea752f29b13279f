"""The image transforms of each data protocol (Wang et al., 2024: CIFAR, and ImageNet-style folders).

CIFAR and digits are augmented as tensors (they live in memory as tensors); image folders are
augmented as PIL images, straight from the decoder, as torchvision's reference recipes do.
"""
from __future__ import annotations

from typing import Callable

import torch
from torchvision import transforms as T

from .spec import IMAGENET_MEAN, IMAGENET_STD

CIFAR_SIZE = 32  # side of a stored CIFAR image


def cifar_transform(augment: bool, mean: tuple[float, float, float], std: tuple[float, float, float],
                    image_size: int = CIFAR_SIZE) -> Callable:
    """uint8 (3, 32, 32) -> normalised float32 (3, S, S): crop 32 with padding 4 and flip when augmenting."""
    steps: list[Callable] = []
    if augment:
        steps += [T.RandomCrop(CIFAR_SIZE, padding=4), T.RandomHorizontalFlip()]
    steps += [T.ConvertImageDtype(torch.float32), T.Normalize(mean, std)]  # ConvertImageDtype: / 255, as ToTensor
    if image_size != CIFAR_SIZE:
        # Only for models that want a different input size; the protocol itself is 32x32.
        steps.append(T.Resize(image_size, antialias=True))
    return T.Compose(steps)


def shift_transform(image_size: int, padding: int, fill: float) -> Callable:
    """Random translation by up to `padding` pixels of a (C, S, S) tensor, the exposed border set to `fill`."""
    return T.RandomCrop(image_size, padding=padding, fill=fill)


def imagenet_transform(augment: bool, image_size: int) -> Callable:
    """PIL RGB image -> normalised float32 (3, S, S), the ImageNet recipe of Wang et al., 2024 scaled to S."""
    if augment:
        steps: list[Callable] = [
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.2),
        ]
    else:
        # Resize 256 then crop 224 at the default size; the same ratio at any other size.
        steps = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
