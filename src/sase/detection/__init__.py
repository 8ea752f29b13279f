"""Object detection and instance segmentation with SASE backbones: `sase detect train|eval|predict`.

    from sase.detection import create_detector, DetectConfig, run_detection, load_detector
    detector = create_detector("mask_rcnn", "resnet50", attention="paper", num_classes=81,
                               backbone_weights="runs/r50-sase/model.safetensors")
    result = run_detection(DetectConfig(train_images="data/train", train_ann="data/train.json",
                                        val_images="data/val", val_ann="data/val.json"))

Faster R-CNN and Mask R-CNN are torchvision's, on an FPN over a sase ResNet with any attention module
(Wang et al., 2024, evaluate the SASE block this way on COCO). The settings load without pycocotools; the
rest needs it (`pip install 'sase[detection]'`) and is imported when first used.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import PRESETS, DetectConfig

_EXPORTS = {  # name -> the module that defines it
    "WeightsReport": "backbone", "load_backbone_weights": "backbone",
    "CocoFile": "coco", "read_coco": "coco",
    "CocoDetection": "data", "collate": "data",
    "DetectionTrainer": "engine", "DetectResult": "engine", "run_detection": "engine",
    "CocoResult": "evaluate", "evaluate_coco": "evaluate", "format_metrics": "evaluate",
    "DetectorSpec": "model", "create_detector": "model", "load_detector": "model",
    "draw_detections": "draw", "predict_images": "draw",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    except ModuleNotFoundError as err:
        if err.name != "pycocotools":
            raise
        raise ImportError("sase detection needs pycocotools: pip install 'sase[detection]' (or pip install "
                          "pycocotools)") from None
    return getattr(module, name)


__all__ = ["PRESETS", "DetectConfig", *_EXPORTS]
