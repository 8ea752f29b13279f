"""A COCO-format dataset for torchvision's detectors: images of any size and aspect ratio, boxes, masks, flips.

Each item is an image as float (3, H, W) in [0, 1] at its own size, and its target: `boxes` (N, 4) as
x1, y1, x2, y2 in pixels, `labels` (N,) in 1..K (0 is the background; label k is the k-th category by id),
`image_id`, and with masks `masks` (N, H, W) uint8. The detector itself resizes (shorter side `min_size`,
longer at most `max_size`), normalises and pads the batch, and maps its predictions back to the image's own
pixels, as torchvision's detectors do. Crowd annotations are left out of the targets (torchvision's
reference recipe); COCOeval still reads them from the annotation file, where they mark regions that
neither reward nor punish a detection.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..data.image_files import load_rgb
from .coco import CocoFile, decode_mask, read_coco

Target = dict[str, Tensor]


class CocoDetection(Dataset):
    """The images of a COCO-format annotation file; with `keep_empty=False` those without a non-crowd
    annotation are skipped (for training); `flip` is the probability of a horizontal flip."""

    def __init__(self, images: str | os.PathLike, annotations: str | os.PathLike, masks: bool = False,
                 keep_empty: bool = True, flip: float = 0.0) -> None:
        self.file: CocoFile = read_coco(annotations, images, masks)
        self.masks, self.flip = masks, flip
        self.categories = self.file.categories
        self.labels = {cid: i + 1 for i, (cid, _) in enumerate(self.categories)}  # category id -> label
        self.images = {image["id"]: image for image in self.file.data["images"]}
        self.ids = [i for i in self.images if keep_empty or _objects(self.file.by_image[i])]
        if not self.ids:
            raise ValueError(f"{self.file.path}: no image to use (none has an annotation that is not a crowd; "
                             "--keep-empty trains on images without annotations)")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.ids[index]
        info = self.images[image_id]
        path = self.file.images_dir / info["file_name"]
        picture = load_rgb(str(path))
        if picture.size != (info["width"], info["height"]):
            raise ValueError(f"{path}: {picture.size[0]}x{picture.size[1]} pixels, but {self.file.path} says "
                             f"{info['width']}x{info['height']}")
        image = pil_to_tensor(picture).float().div_(255)  # (3, H, W)
        target = self._target(image_id, info["height"], info["width"])
        if self.flip and torch.rand(()) < self.flip:
            image, target = hflip(image, target)
        return image, target

    def _target(self, image_id: int, height: int, width: int) -> Target:
        anns = _objects(self.file.by_image[image_id])
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)  # (N, 4) x, y, w, h
        boxes[:, 2:] += boxes[:, :2]  # x1, y1, x2, y2
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target = {"boxes": boxes, "labels": torch.tensor([self.labels[a["category_id"]] for a in anns],
                                                         dtype=torch.int64),
                  "image_id": torch.tensor(image_id)}
        if self.masks:
            stack = [decode_mask(a["segmentation"], height, width) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(stack)) if stack else \
                torch.zeros(0, height, width, dtype=torch.uint8)  # (N, H, W)
        return target


def _objects(anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in anns if not a["iscrowd"]]


def hflip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """The image mirrored left to right, its boxes and masks with it."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def collate(batch: list[tuple[Tensor, Target]]) -> tuple[tuple[Tensor, ...], tuple[Target, ...]]:
    """Images of different sizes stay a tuple: the detector batches them itself."""
    return tuple(zip(*batch))  # type: ignore[return-value]


__all__ = ["CocoDetection", "collate", "hflip"]
