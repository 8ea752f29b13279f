"""A tiny COCO-format dataset written by the detection tests: images of several sizes and aspect ratios with
squares (polygon masks) and discs (RLE masks) on noise, one crowd region, one image without annotations."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]  # ids not 1..K: the labels are remapped
SIZES = ((96, 64), (64, 112), (128, 96), (80, 80), (112, 72))  # (width, height); the last has no annotation


def _disc(height: int, width: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return ((x - cx) ** 2 + (y - cy) ** 2 <= r * r).astype(np.uint8)


def write_coco(root: Path, seed: int = 0, sizes: tuple[tuple[int, int], ...] = SIZES) -> tuple[Path, Path]:
    """root/images/*.png and root/annotations.json; (images folder, annotation file)."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        name = f"img{i}.png"
        images.append({"id": 10 + i, "file_name": name, "width": width, "height": height})
        if i < len(sizes) - 1:  # the last image stays empty
            side = int(rng.integers(16, min(width, height) // 2))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            pixels[y:y + side, x:x + side] = (220, 40, 40)
            annotations.append({"image_id": 10 + i, "category_id": 3, "iscrowd": 0, "bbox": [x, y, side, side],
                                "area": side * side,
                                "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]]})
            r = float(rng.integers(6, min(width, height) // 4))
            cx, cy = width - r - 2, height - r - 2
            disc = _disc(height, width, cx, cy, r)
            pixels[disc > 0] = (40, 200, 240)
            rle = mask_utils.encode(np.asfortranarray(disc))
            annotations.append({"image_id": 10 + i, "category_id": 7, "iscrowd": 0,
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(disc.sum()),
                                "segmentation": {"size": [height, width], "counts": rle["counts"].decode()}})
        if i == 0:  # a crowd region, its mask as an uncompressed RLE (column-major runs)
            crowd = np.zeros((height, width), np.uint8)
            crowd[2:12, 2:30] = 1
            flat = crowd.flatten(order="F")
            edges = np.flatnonzero(np.diff(flat)) + 1
            runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()  # starts with a run of zeros
            annotations.append({"image_id": 10, "category_id": 3, "iscrowd": 1, "bbox": [2, 2, 28, 10], "area": 280,
                                "segmentation": {"size": [height, width], "counts": runs}})
        Image.fromarray(pixels).save(images_dir / name)
    for k, ann in enumerate(annotations):
        ann["id"] = 100 + k
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return images_dir, path
