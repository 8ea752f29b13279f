"""Detection training settings: a frozen dataclass whose defaults are the 1x schedule on one GPU (batch 2), and
the paper's COCO recipe as the `coco-1x` preset (Wang et al., 2024, after mmdetection's 1x schedule:
12 epochs, SGD, lr 0.02 for a batch of 16, warm-up over 500 iterations, lr x0.1 after epochs 8 and 11)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..utils.config import SEEDS, Range, RunConfig, amp_error, device_error

KINDS = ("faster_rcnn", "mask_rcnn")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")  # the ImageNet ResNets (torchvision layout)
BASE_LR, BASE_BATCH = 0.02, 16  # the 1x schedule's lr for a total batch of 16, scaled linearly (Goyal et al., 2017)


@dataclass(frozen=True)
class DetectConfig(RunConfig):
    """Everything a detection run depends on; saved as config.json next to its outputs."""

    KIND = "detection"
    KNOBS = ("out", "workers", "checkpoint_every", "device")  # may differ on resume: they do not change the result
    RANGES = {
        "trainable_layers": Range(0, 5), "min_size": Range(1), "max_size": Range(1),
        "proposals_train": Range(1), "proposals_test": Range(1), "rois_per_image": Range(1),
        "detections_per_image": Range(1),
        "flip": Range(0, 1), "epochs": Range(1), "batch_size": Range(1), "seed": SEEDS,
        "lr": Range(0, low_open=True), "momentum": Range(0, 1, high_open=True), "weight_decay": Range(0),
        "warmup_iters": Range(0), "warmup_factor": Range(0, 1, low_open=True), "gamma": Range(0, 1, low_open=True),
        "grad_clip": Range(0, why="0 disables clipping"), "steps_per_epoch": Range(1), "checkpoint_every": Range(1),
        "workers": Range(0),
    }

    kind: str = "mask_rcnn"  # faster_rcnn | mask_rcnn (torchvision's, Ren et al., 2015; He et al., 2017)
    backbone: str = "resnet50"  # an ImageNet ResNet of sase.models under an FPN (Lin et al., 2017)
    attention: str = "paper"  # a zoo name (none, se, eca, ...), a genotype preset, or a genotype / per-stage JSON path
    backbone_weights: str | None = None  # a sase train checkpoint / safetensors, or a torchvision ResNet state dict
    trainable_layers: int | None = None  # backbone stages trained, from layer4 down (None: 3 with weights, else 5)
    frozen_bn: bool | None = None  # FrozenBatchNorm2d in the backbone (None: with weights yes, without no)
    train_images: str | None = None  # folder of the training images
    train_ann: str | None = None  # COCO-format annotation JSON of the training images
    val_images: str | None = None  # folder of the validation images
    val_ann: str | None = None  # COCO-format annotation JSON of the validation images
    keep_empty: bool = False  # train on images without (non-crowd) annotations too; they are skipped by default
    min_size: int = 800  # the shorter side is resized to this...
    max_size: int = 1333  # ...unless the longer side would pass this
    # torchvision's defaults; fewer make small images and small datasets (and tests) faster
    proposals_train: int = 2000  # region proposals per image and feature level in training, before and after NMS
    proposals_test: int = 1000  # the same at inference
    rois_per_image: int = 512  # proposals sampled per image to train the box head (a quarter positive: the mask head)
    detections_per_image: int = 100  # detections kept per image (COCO's maxDets)
    flip: float = 0.5  # probability of a horizontal flip in training
    epochs: int = 12  # the 1x schedule
    batch_size: int = 2  # the global batch (one GPU of the paper's eight); under torchrun split over the processes
    seed: int = 0  # initialisation, data order, flips and the samplers' draws all follow from it
    lr: float | None = None  # None: 0.02 x batch_size / 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500  # linear warm-up from warmup_factor x lr, per iteration
    warmup_factor: float = 0.001
    lr_steps: str = "8,11"  # epochs after which the lr is multiplied by gamma
    gamma: float = 0.1
    grad_clip: float = 0.0  # max gradient norm; the 1x schedule clips nothing
    amp: str | None = None  # None: float32; "bf16" autocast; "fp16" autocast with a gradient scaler
    steps_per_epoch: int | None = None  # cap on training steps per epoch (None: every image once)
    checkpoint_every: int = 500  # steps between checkpoints (one is also written at every epoch end)
    workers: int = 2  # DataLoader worker processes (decoding JPEGs and masks)
    device: str = "auto"  # auto: cuda when available, else cpu
    out: str = "runs/detect"

    def __post_init__(self) -> None:
        self.check()
        if self.max_size < self.min_size:
            raise ValueError(f"max_size must be at least min_size={self.min_size}, got {self.max_size}")
        for name, value, valid in (("kind", self.kind, KINDS), ("backbone", self.backbone, BACKBONES)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")
        error = amp_error(self.amp) or device_error(self.device)
        if error:
            raise ValueError(error)
        self.milestones()

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: `lr`, or the 1x schedule's scaled to the batch."""
        return self.lr if self.lr is not None else BASE_LR * self.batch_size / BASE_BATCH

    def milestones(self) -> tuple[int, ...]:
        """The epochs of `lr_steps`; a ValueError naming the setting when it is not a list of positive integers."""
        try:
            epochs = tuple(int(part) for part in self.lr_steps.split(",") if part.strip())
        except ValueError:
            epochs = (0,)
        if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
            raise ValueError(f"lr_steps must be increasing epochs separated by commas, such as 8,11, got "
                             f"{self.lr_steps!r}")
        return epochs


PRESETS: dict[str, dict[str, Any]] = {
    # the paper's COCO recipe (Wang et al., 2024, on mmdetection's 1x schedule): 8 GPUs x 2 images, lr 0.02,
    # shorter side 800 (longer at most 1333), flips; with backbone weights the stem and layer1 stay frozen
    # (trainable_layers None); any flag given explicitly still wins
    "coco-1x": dict(epochs=12, batch_size=16, lr=None, momentum=0.9, weight_decay=1e-4, warmup_iters=500,
                    warmup_factor=0.001, lr_steps="8,11", gamma=0.1, grad_clip=0.0, min_size=800, max_size=1333,
                    flip=0.5),
}
DetectConfig.PRESETS = PRESETS

__all__ = ["BACKBONES", "BASE_BATCH", "BASE_LR", "KINDS", "PRESETS", "DetectConfig"]
