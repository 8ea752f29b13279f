"""Predictions drawn on the images: boxes, labels with scores, and masks (torchvision's drawing utilities)."""
from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data.image_files import load_rgb
from ..train.recipe import autocast
from .evaluate import MASK_THRESHOLD
from .model import DetectorSpec

PREDICTIONS = "predictions.json"


def color(label: int) -> tuple[int, int, int]:
    """A bright colour of its own for each label (golden-ratio steps around the hue circle)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return round(255 * r), round(255 * g), round(255 * b)


def draw_detections(image: Tensor, output: dict[str, Tensor], names: list[str]) -> Tensor:
    """uint8 (3, H, W) with `output`'s masks (when it has them), boxes and "name score" labels drawn."""
    labels = output["labels"].tolist()
    colors = [color(label) for label in labels]
    if not labels:
        return image
    if "masks" in output:
        image = draw_segmentation_masks(image, output["masks"][:, 0].cpu() > MASK_THRESHOLD, alpha=0.45, colors=colors)
    captions = [f"{names[label - 1]} {score:.2f}" for label, score in zip(labels, output["scores"].tolist())]
    return draw_bounding_boxes(image, output["boxes"].cpu(), labels=captions, colors=colors, width=2)


@torch.no_grad()
def predict_images(model: nn.Module, spec: DetectorSpec, paths: list[str | os.PathLike], out: str | os.PathLike,
                   score: float = 0.5, device: torch.device = torch.device("cpu"),
                   amp: str | None = None) -> list[dict[str, Any]]:
    """Detect objects in each image, draw those scoring at least `score` to OUT/<name>.png and list them in
    OUT/predictions.json (boxes as x1, y1, x2, y2 in the image's pixels); the records, per image."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().to(device)
    names = [name for _, name in spec.categories]
    records, used = [], set()
    for path in map(Path, paths):
        image = pil_to_tensor(load_rgb(str(path)))  # uint8 (3, H, W)
        with autocast(amp, device):
            output = model([image.to(device).float().div_(255)])[0]
        keep = output["scores"] >= score
        output = {k: v[keep].float().cpu() if v.is_floating_point() else v[keep].cpu() for k, v in output.items()}
        target = out / f"{path.stem}.png"
        if target.name in used:  # two images of one name from different folders
            target = out / f"{path.stem}-{len(used)}.png"
        used.add(target.name)
        to_pil_image(draw_detections(image, output, names)).save(target)
        records.append({"image": str(path), "drawn": str(target), "detections": [
            {"category_id": spec.categories[label - 1][0], "label": names[label - 1], "score": round(s, 4),
             "box": [round(v, 1) for v in box]}
            for label, s, box in zip(output["labels"].tolist(), output["scores"].tolist(), output["boxes"].tolist())]})
    (out / PREDICTIONS).write_text(json.dumps(records, indent=2) + "\n")
    return records


__all__ = ["PREDICTIONS", "color", "draw_detections", "predict_images"]
