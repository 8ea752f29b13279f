"""Search settings: a dataclass whose defaults are the quick offline run, with SPEC §3's as a preset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..utils.config import RunConfig


@dataclass(frozen=True)
class SearchConfig(RunConfig):
    """Everything a search run depends on; saved as config.json next to its outputs."""

    KIND = "search"
    KNOBS = ("out", "workers", "checkpoint_every", "download")  # may differ on resume: they do not change the result

    dataset: str = "digits"  # digits (bundled, offline) | cifar10 | cifar100 | imagefolder
    data: str | None = None  # dataset root; not needed for digits
    download: bool = False  # fetch CIFAR when it is not on disk (needs internet)
    image_size: int | None = None  # None: the dataset's own size
    backbone: str = "resnet20"  # a sase.models name, or timm/<resnet name>
    per_stage: bool = False  # one α per stage instead of one shared by every block
    order: str = "2"  # "1" first order, "2" second order (finite difference), "exact" (double backward)
    epochs: int = 4
    batch_size: int = 64
    train_portion: float = 0.5  # share of the training set that fits w; the rest fits α
    seed: int = 0
    # weights: SGD with cosine schedule (SPEC §3)
    lr: float = 0.025
    lr_min: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 5.0  # max gradient norm of the weights; 0 disables
    # α: Adam (SPEC §3)
    arch_lr: float = 3e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    warmup_epochs: int = 0  # epochs that train w only, α frozen
    steps_per_epoch: int | None = None  # cap on steps per epoch (None: the whole split)
    checkpoint_every: int = 20  # steps between checkpoints (one is also written at every epoch end)
    workers: int = 0  # DataLoader worker processes
    out: str = "runs/search"

    def __post_init__(self) -> None:
        if self.order not in ("1", "2", "exact"):
            raise ValueError(f"order must be 1, 2 or exact, got {self.order!r}")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.train_portion < 1:
            raise ValueError(f"train_portion must be between 0 and 1, got {self.train_portion}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be between 0 and epochs ({self.epochs}), got {self.warmup_epochs}")


PRESETS: dict[str, dict[str, Any]] = {
    # SPEC §3: the proxy task of the paper (CIFAR-10, ResNet-20, batch 128, 100 epochs, second order)
    "paper": dict(dataset="cifar10", backbone="resnet20", order="2", epochs=100, batch_size=128,
                  train_portion=0.5, lr=0.025, lr_min=1e-4, momentum=0.9, weight_decay=5e-4, grad_clip=5.0,
                  arch_lr=3e-4, arch_beta1=0.5, arch_beta2=0.999, arch_weight_decay=1e-3, checkpoint_every=100),
}
SearchConfig.PRESETS = PRESETS
