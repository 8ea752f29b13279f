"""Faster R-CNN and Mask R-CNN (torchvision's) on a SASE ResNet-FPN backbone, and the files that carry them.

    detector = create_detector("mask_rcnn", "resnet50", attention="paper", num_classes=81,
                               backbone_weights="runs/r50-sase/model.safetensors")
    print(detector.backbone_report.summary())   # how many backbone tensors were loaded, which were not

Ren et al., "Faster R-CNN", NeurIPS 2015; He et al., "Mask R-CNN", ICCV 2017; the block of Wang et al., 2024
in every residual block. A `DetectorSpec` (kind, backbone, genotype, categories, sizes, freezing) is stored in
every checkpoint and in the metadata of `detector.safetensors`, so either file alone rebuilds the detector:

    detector, spec = load_detector("runs/detect/detector.safetensors")
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN

from ..attention import AttentionSpec
from ..stage_genotypes import genotype_or_stages
from ..train.export import locate, resolve_genotype
from ..utils.checkpoint import load_checkpoint
from .backbone import STAGES, build_backbone
from .config import BACKBONES, DetectConfig

DETECTORS = {"faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN}
SAFETENSORS = "detector.safetensors"
CHECKPOINT = "checkpoint.pt"
WEIGHTED_TRAINABLE = 3  # stages trained above frozen ImageNet weights: layer2..layer4 (torchvision, mmdetection)
METADATA_KEY = "sase.detector_spec"


def create_detector(
    kind: str = "mask_rcnn",
    backbone: str = "resnet50",
    attention: AttentionSpec = "paper",
    num_classes: int = 91,
    backbone_weights: str | os.PathLike | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    **kwargs: Any,
) -> nn.Module:
    """A `kind` detector (faster_rcnn | mask_rcnn) on ResNet `backbone`-FPN with `attention` in every block.

    `num_classes` counts the background, as torchvision's does. `backbone_weights`: a sase train checkpoint
    or safetensors, or a torchvision ResNet state dict (never downloaded); the load report is
    `detector.backbone_report` (None without weights). `trainable_layers` None trains layer2..layer4 above
    weights and everything without; `frozen_bn` None freezes BatchNorm (attention's too) exactly when weights
    are given. Other keywords go to torchvision's FasterRCNN / MaskRCNN (e.g. `box_detections_per_img`).
    """
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; valid choices: {', '.join(DETECTORS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be an ImageNet ResNet ({', '.join(BACKBONES)}), got {backbone!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so at least 2, got {num_classes}")
    trainable, frozen = freezing(backbone_weights is not None, trainable_layers, frozen_bn)
    body, report = build_backbone(backbone, attention, trainable, frozen, backbone_weights)
    detector = DETECTORS[kind](body, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)
    detector.backbone_report = report
    return detector


def freezing(weighted: bool, trainable_layers: int | None, frozen_bn: bool | None) -> tuple[int, bool]:
    """The stages trained and whether BatchNorm is frozen, unset ones from whether the backbone has weights:
    torchvision's rule, layer2..layer4 and frozen BatchNorm above weights, everything trained without."""
    trainable = trainable_layers if trainable_layers is not None else WEIGHTED_TRAINABLE if weighted else len(STAGES)
    return trainable, weighted if frozen_bn is None else frozen_bn


@dataclass(frozen=True)
class DetectorSpec:
    """Everything needed to build the detector again, as plain values."""

    kind: str
    backbone: str
    attention: str  # what the run was given (for the record)
    genotype: Optional[str]  # SASE blocks: the genotype(s) as JSON text; else None
    categories: tuple[tuple[int, str], ...]  # (dataset category id, name) of labels 1, 2, ...; 0 is background
    min_size: int
    max_size: int
    trainable_layers: int  # resolved: what the run trained
    frozen_bn: bool  # resolved
    proposals_train: int
    proposals_test: int
    rois_per_image: int
    detections_per_image: int

    @classmethod
    def create(cls, config: DetectConfig, categories: tuple[tuple[int, str], ...]) -> DetectorSpec:
        genotype = resolve_genotype(config.attention)
        trainable, frozen = freezing(config.backbone_weights is not None, config.trainable_layers, config.frozen_bn)
        return cls(config.kind, config.backbone, config.attention, genotype.to_json(indent=None) if genotype else None,
                   tuple(categories), config.min_size, config.max_size, trainable, frozen, config.proposals_train,
                   config.proposals_test, config.rois_per_image, config.detections_per_image)

    @property
    def num_classes(self) -> int:
        return len(self.categories) + 1

    def build(self, backbone_weights: str | os.PathLike | None = None) -> nn.Module:
        """The detector, freshly initialised (its backbone from `backbone_weights` when given)."""
        # the stored genotype, never `attention`: a genotype file named there may have changed or gone
        attention = genotype_or_stages(self.genotype) if self.genotype else self.attention
        return create_detector(
            self.kind, self.backbone, attention, self.num_classes, backbone_weights, self.trainable_layers,
            self.frozen_bn, self.min_size, self.max_size, box_batch_size_per_image=self.rois_per_image,
            rpn_pre_nms_top_n_train=self.proposals_train, rpn_post_nms_top_n_train=self.proposals_train,
            rpn_pre_nms_top_n_test=self.proposals_test, rpn_post_nms_top_n_test=self.proposals_test,
            box_detections_per_img=self.detections_per_image)

    def to_metadata(self) -> dict[str, str]:
        return {"format": "pt", METADATA_KEY: json.dumps(asdict(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorSpec:
        spec = cls(**data)
        return replace(spec, categories=tuple((int(i), str(n)) for i, n in spec.categories))


def load_detector(path: str | os.PathLike) -> tuple[nn.Module, DetectorSpec]:
    """Rebuild and load the detector of a checkpoint.pt, a detector.safetensors or a run folder (on the CPU)."""
    path = locate(path, (SAFETENSORS, CHECKPOINT))
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
        if METADATA_KEY not in metadata:
            raise ValueError(f"{path}: not a sase detector (no detector spec in its metadata); a classifier's "
                             "weights go to --backbone-weights")
        spec = DetectorSpec.from_dict(json.loads(metadata[METADATA_KEY]))
    else:
        saved = load_checkpoint(path)  # weights_only=True
        if "detector_spec" not in saved:
            raise ValueError(f"{path}: not a sase detection checkpoint (it has no detector spec)")
        spec, state = DetectorSpec.from_dict(saved["detector_spec"]), saved["model"]
    detector = spec.build()
    detector.load_state_dict(state)
    return detector.eval(), spec


__all__ = ["CHECKPOINT", "DETECTORS", "SAFETENSORS", "DetectorSpec", "create_detector", "load_detector"]
