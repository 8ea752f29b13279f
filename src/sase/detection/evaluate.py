"""COCO metrics of a detector with pycocotools' COCOeval: box AP, and mask AP for Mask R-CNN.

Each IoU type gives COCOeval's twelve numbers: AP (IoU 0.50:0.95), AP50, AP75, AP of small, medium and
large objects, and the average recalls. COCOeval writes -1 where a number has no ground truth (no small
objects, say); that is reported as None (null in JSON, "-" in tables), never as a score.

Under torchrun each process predicts its shard of the images; rank 0 gathers every prediction, runs
COCOeval once, and every process returns its numbers.
"""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..train.recipe import autocast
from ..utils.distributed import broadcast_object, world

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # COCOeval's order
IOU_TYPES = {"faster_rcnn": ("bbox",), "mask_rcnn": ("bbox", "segm")}
MASK_THRESHOLD = 0.5  # a predicted mask's pixels above this probability are the object's (torchvision, COCO)
Metrics = dict[str, dict[str, float | None]]  # IoU type -> stat -> value in [0, 1], or None without ground truth


@dataclass(frozen=True)
class CocoResult:
    metrics: Metrics
    table: str  # COCOeval's own summary lines, per IoU type
    images: int


def coco_results(output: dict[str, torch.Tensor], image_id: int, category_ids: list[int],
                 iou_types: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """One image's predictions as COCO result entries, per IoU type (boxes as x, y, w, h; masks as RLE)."""
    boxes = output["boxes"].float().cpu()
    boxes[:, 2:] -= boxes[:, :2]  # (N, 4) x, y, w, h
    heads = [{"image_id": image_id, "category_id": category_ids[label - 1], "score": round(score, 5)}
             for label, score in zip(output["labels"].tolist(), output["scores"].float().tolist())]
    results: dict[str, list[dict[str, Any]]] = {"bbox": [{**h, "bbox": [round(v, 2) for v in box]}
                                                          for h, box in zip(heads, boxes.tolist())]}
    if "segm" in iou_types:
        masks = (output["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()  # (N, H, W)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))) if len(masks) else []
        results["segm"] = [{**h, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}
                           for h, rle in zip(heads, rles)]
    return results


@torch.no_grad()
def predict_coco(model: nn.Module, loader: DataLoader, device: torch.device, category_ids: list[int],
                 iou_types: tuple[str, ...], amp: str | None = None,
                 progress: bool = False) -> dict[str, list[dict[str, Any]]]:
    """COCO result entries of every image of `loader`, per IoU type, in eval mode (restores the mode)."""
    was_training = model.training
    model.eval()
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in iou_types}
    for images, targets in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        with autocast(amp, device):
            outputs = model([image.to(device, non_blocking=True) for image in images])
        for target, output in zip(targets, outputs):
            for kind, entries in coco_results(output, int(target["image_id"]), category_ids, iou_types).items():
                results[kind] += entries
    model.train(was_training)
    return results


def coco_metrics(gt: COCO, results: dict[str, list[dict[str, Any]]]) -> tuple[Metrics, str]:
    """COCOeval of `results` (per IoU type) against `gt`: the numbers and the usual summary table."""
    metrics: Metrics = {}
    lines = []
    for iou_type, entries in results.items():
        evaluator = COCOeval(gt, _detections(gt, entries), iou_type)
        with contextlib.redirect_stdout(io.StringIO()):  # "Running per image evaluation...", timings
            evaluator.evaluate()
            evaluator.accumulate()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluator.summarize()
        metrics[iou_type] = {name: None if value < 0 else float(value) for name, value in zip(STATS, evaluator.stats)}
        lines += [f"{iou_type}:", printed.getvalue().rstrip()]
    return metrics, "\n".join(lines)


def _detections(gt: COCO, entries: list[dict[str, Any]]) -> COCO:
    """The results as a COCO object; with no detection at all, an empty one (pycocotools' loadRes needs one)."""
    if entries:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(entries))  # loadRes writes into the entries
    empty = COCO()
    empty.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def evaluate_coco(model: nn.Module, loader: DataLoader, gt: COCO, device: torch.device, category_ids: list[int],
                  iou_types: tuple[str, ...], amp: str | None = None, progress: bool = False) -> CocoResult:
    """Predict every image of `loader` (this process's shard under torchrun) and score them all with COCOeval."""
    results = predict_coco(model, loader, device, category_ids, iou_types, amp, progress)
    shares = [results]
    if dist.is_initialized() and dist.get_world_size() > 1:
        shares = [None] * dist.get_world_size()
        dist.all_gather_object(shares, results)
    if not world().main:
        return broadcast_object(None)
    merged = {t: [e for share in shares for e in share[t]] for t in iou_types}
    metrics, table = coco_metrics(gt, merged)
    return broadcast_object(CocoResult(metrics, table, len(gt.getImgIds())))


def format_metrics(metrics: Metrics, names: tuple[str, ...] = STATS[:6]) -> str:
    """One line: the `names` stats of each IoU type, as percentages ("-" without ground truth)."""
    return " | ".join(f"{kind} " + " ".join(f"{name} {'-' if m[name] is None else f'{100 * m[name]:.1f}'}"
                                             for name in names) for kind, m in metrics.items())


__all__ = ["IOU_TYPES", "STATS", "CocoResult", "coco_metrics", "coco_results", "evaluate_coco", "format_metrics",
           "predict_coco"]
