"""COCO-format annotations, read and checked before any training starts (Lin et al., "Microsoft COCO", ECCV 2014).

An annotation file is a JSON object with `images` (id, file_name, width, height), `categories` (id, name) and
`annotations` (id, image_id, category_id, bbox [x, y, w, h], iscrowd, area, segmentation as polygons or RLE).
Everything a run will rely on is checked up front, and the first problem is one line naming the file and
the entry: an image file that is missing, unreadable or of another size than listed, an annotation whose
image or category is not listed, a box of zero width or height or outside its image, a broken mask (a
polygon of fewer than three points, an RLE of another size or whose runs do not cover the image). Missing
`id`, `iscrowd` and `area` are filled in (area: of the box).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

THREADS, CHUNK = 16, 4096  # image headers read at once, and per pool


@dataclass(frozen=True)
class CocoFile:
    """A checked annotation file and the folder of its images."""

    path: Path
    images_dir: Path
    data: dict[str, Any]  # the JSON, checked, ids, iscrowd and area filled in
    by_image: dict[int, list[dict[str, Any]]]  # image id -> its annotations, crowd ones included

    @property
    def categories(self) -> tuple[tuple[int, str], ...]:
        """(id, name) of every category, by id."""
        return tuple(sorted((c["id"], str(c.get("name", c["id"]))) for c in self.data["categories"]))

    def coco(self) -> COCO:
        """pycocotools' COCO over the checked data (the ground truth of COCOeval)."""
        gt = COCO()
        gt.dataset = copy.deepcopy(self.data)  # COCOeval turns its polygons into RLEs in place
        with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
            gt.createIndex()
        return gt


def read_coco(path: str | os.PathLike, images_dir: str | os.PathLike, masks: bool = False) -> CocoFile:
    """Read and check `path` against the images in `images_dir`; `masks`: every annotation needs a valid
    segmentation (Mask R-CNN). A FileNotFoundError or ValueError, one line naming the file and entry."""
    path, images_dir = Path(path), Path(images_dir)
    data = _read_json(path)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    images = {image["id"]: image
              for image in (_checked_image(path, i, image) for i, image in enumerate(data["images"]))}
    if len(images) != len(data["images"]):
        raise ValueError(f"{path}: an image id is given to more than one image")
    categories = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    if len(categories) != len(data["categories"]) or not all(_is_int(c) for c in categories):
        raise ValueError(f"{path}: every category needs an integer id of its own")
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for i, ann in enumerate(data["annotations"]):
        ann = _checked_annotation(path, i, ann, images, categories, masks)
        by_image[ann["image_id"]].append(ann)
        data["annotations"][i] = ann
    if len({a["id"] for a in data["annotations"]}) != len(data["annotations"]):
        raise ValueError(f"{path}: an annotation id is given to more than one annotation")
    _check_files(path, images_dir, list(images.values()), by_image)
    return CocoFile(path, images_dir, data, by_image)


def _check_files(path: Path, images_dir: Path, images: list[dict[str, Any]],
                 by_image: dict[int, list[dict[str, Any]]]) -> None:
    """Every image file is there, readable, and of the size `path` gives it (headers only, read in threads)."""
    def problem(image: dict[str, Any]) -> str | None:
        file = images_dir / image["file_name"]
        try:
            with Image.open(file) as picture:
                size = picture.size
        except FileNotFoundError:
            raise FileNotFoundError(f"{file}: no such image (image {image['id']} of {path}, with "
                                    f"{len(by_image[image['id']])} annotations)") from None
        except Exception as exc:  # noqa: BLE001 - PIL raises many exception types on malformed files
            return f"{file}: not a readable image ({type(exc).__name__}: {exc})"
        if size != (image["width"], image["height"]):
            return f"{file}: {size[0]}x{size[1]} pixels, but {path} says {image['width']}x{image['height']}"
        return None

    for start in range(0, len(images), CHUNK):  # a bounded number of futures, however many images
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for found in pool.map(problem, images[start:start + CHUNK]):
                if found:
                    raise ValueError(found)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO annotation file is a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: no {key!r} list; is it a COCO-format annotation file?")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_image(path: Path, i: int, image: Any) -> dict[str, Any]:
    fields = ("id", "width", "height")
    if not isinstance(image, dict) or not all(_is_int(image.get(k)) for k in fields) \
            or not isinstance(image.get("file_name"), str) or image["width"] < 1 or image["height"] < 1:
        raise ValueError(f"{path}: images[{i}] needs an integer id, a file_name and a positive width and height")
    return image


def _checked_annotation(path: Path, i: int, ann: Any, images: dict[int, dict[str, Any]], categories: set[int],
                        masks: bool) -> dict[str, Any]:
    """The annotation with id, iscrowd and area filled in; a ValueError naming it when it is broken."""
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: annotations[{i}] is not an object")
    ann = {"id": i + 1, "iscrowd": 0, **ann}
    where = f"{path}: annotation {ann['id']}"
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
        raise ValueError(f"{where} refers to image_id {ann.get('image_id')!r}, which is not in the images list")
    image = images[ann["image_id"]]
    where += f" (image {image['file_name']})"
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
        raise ValueError(f"{where} has category_id {ann.get('category_id')!r}, which is not in the categories list")
    if ann["iscrowd"] not in (0, 1):
        raise ValueError(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
    box = ann.get("bbox")
    if not isinstance(box, list) or len(box) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        raise ValueError(f"{where}: bbox must be [x, y, width, height], got {box!r}")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: degenerate box {box} (zero width or height)")
    if min(x + w, image["width"]) <= max(x, 0) or min(y + h, image["height"]) <= max(y, 0):
        raise ValueError(f"{where}: box {box} lies outside its {image['width']}x{image['height']} image")
    if masks:
        problem = mask_problem(ann.get("segmentation"), image["height"], image["width"])
        if problem:
            raise ValueError(f"{where}: broken mask: {problem}")
    ann.setdefault("area", float(w * h))
    return ann


def mask_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why `segmentation` is not a mask of a `height` x `width` image, or None when it is one."""
    if isinstance(segmentation, list):
        for polygon in segmentation or [None]:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 or \
                    not all(isinstance(v, (int, float)) and math.isfinite(v) for v in polygon):
                return "a polygon is a list of at least 3 points, x1, y1, x2, y2, ... (6 or more numbers)"
        return None
    if not isinstance(segmentation, dict) or not {"counts", "size"} <= set(segmentation):
        return "segmentation must be polygons (a list) or an RLE (an object with counts and size)"
    if segmentation["size"] != [height, width]:
        return f"RLE size {segmentation['size']} is not the image's [height, width] = [{height}, {width}]"
    counts = segmentation["counts"]
    runs = rle_runs(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or not all(_is_int(r) and r >= 0 for r in runs) or sum(runs) != height * width:
        return f"RLE runs do not cover the {height}x{width} image exactly"
    return None


def rle_runs(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString), None when it is malformed."""
    runs: list[int] = []
    i = 0
    while i < len(counts):
        x, k, more = 0, 0, True
        while more:
            if i == len(counts) or not 0 <= ord(counts[i]) - 48 < 64:
                return None
            c = ord(counts[i]) - 48
            x |= (c & 0x1F) << 5 * k
            more, i, k = bool(c & 0x20), i + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k  # negative: a difference from the run two back
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A checked polygon or RLE segmentation as a (height, width) uint8 mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return mask_utils.decode(rle)


__all__ = ["CocoFile", "decode_mask", "mask_problem", "read_coco", "rle_runs"]
