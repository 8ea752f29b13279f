"""A dataset held in memory as one image tensor, for the small sets (digits, CIFAR).

Keeping the images as a single tensor and augmenting tensors (not PIL images) keeps an epoch of
these datasets cheap: no decoding, no per-item conversion.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

TensorTransform = Callable[[Tensor], Tensor]


class InMemoryImages(Dataset):
    """`images[i]` through `transform`, with its integer label."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Optional[TensorTransform] = None) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images  # (N, 3, H, W)
        self.labels = labels.to(torch.int64)  # (N,)
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        # Without a transform, hand out a copy: the stored tensor may be an expanded view (digits share
        # one grey plane across three channels) and callers may write into what they get.
        image = self.transform(image) if self.transform is not None else image.clone()
        return image.contiguous(), int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        """The labels as a list, as torchvision datasets expose them."""
        return self.labels.tolist()
