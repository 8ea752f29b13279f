"""Training settings: a dataclass whose defaults are the quick offline run, with the SASE paper's ImageNet
recipe (Wang et al., 2024) as a preset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import MODELS
from ..utils.config import SEEDS, Range, RunConfig, amp_error, compile_backend_error, device_error


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Everything a training run depends on; saved as config.json next to its outputs."""

    KIND = "training"
    # may differ on resume: they do not change the result
    KNOBS = ("out", "workers", "checkpoint_every", "download", "device", "compile")
    RANGES = {
        "image_size": Range(1), "epochs": Range(1), "batch_size": Range(1), "seed": SEEDS,
        "lr": Range(0, low_open=True), "lr_min": Range(0, "lr"), "momentum": Range(0, 1, high_open=True),
        "weight_decay": Range(0), "warmup_epochs": Range(0, "epochs"), "label_smoothing": Range(0, 1, high_open=True),
        "grad_clip": Range(0, why="0 disables clipping"), "steps_per_epoch": Range(1), "checkpoint_every": Range(1),
        "workers": Range(0),
    }

    model: str = "resnet20"  # a sase.models name: resnet20/56/110 (CIFAR style), resnet18/34/50/101 (ImageNet)
    attention: str = "paper"  # a zoo name (none, se, eca, cbam, ...), a genotype preset, or a genotype JSON path
    dataset: str = "digits"  # digits, cluttered-digits (bundled, offline) | cifar10 | cifar100 | imagefolder
    data: str | None = None  # dataset root; not needed for digits
    download: bool = False  # fetch CIFAR when it is not on disk (needs internet)
    image_size: int | None = None  # None: the dataset's own size (digits 16, CIFAR 32, folders 224)
    epochs: int = 8  # digits reach ~97% top-1 in this many; the paper trains ImageNet for 100
    batch_size: int = 64  # the global batch: under torchrun each of N processes takes batch_size / N of it
    seed: int = 0  # initialisation, data order and augmentation all follow from it
    # SGD with linear warm-up, then cosine decay, stepped every iteration
    lr: float = 0.1  # peak learning rate, reached at the end of the warm-up
    lr_min: float = 0.0  # floor of the cosine
    momentum: float = 0.9
    nesterov: bool = False  # the paper uses plain momentum
    weight_decay: float = 5e-4  # on every parameter, as the reference recipe does; the paper uses 1e-4
    warmup_epochs: float = 1.0  # linear warm-up from ~0 to lr; one epoch keeps a fresh BN net stable at lr 0.1
    label_smoothing: float = 0.0  # the paper: 0.1 on ImageNet
    grad_clip: float = 5.0  # max gradient norm (the paper's 5); 0 disables
    amp: str | None = None  # None: float32; "bf16" autocast; "fp16" autocast with a gradient scaler
    # torch.compile backend of the training step's model (inductor fuses the block's elementwise passes and, on
    # a GPU, its launches); None: eager. Evaluation stays eager. Changes rounding only, so a resume may change it
    compile: str | None = None
    # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only) rather than over each
    # process's share of it; one process sees the whole batch either way
    sync_bn: bool = False
    steps_per_epoch: int | None = None  # cap on training steps per epoch (None: the whole training split)
    checkpoint_every: int = 500  # steps between checkpoints (one is also written at every epoch end)
    workers: int = 0  # DataLoader worker processes; 0 loads in the main process (right for in-memory sets)
    device: str = "auto"  # auto: cuda when available, else cpu
    out: str = "runs/train"

    def __post_init__(self) -> None:
        self.check()  # types and the RANGES above
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid choices: {', '.join(MODELS)}")
        error = amp_error(self.amp) or device_error(self.device) or compile_backend_error(self.compile)
        if error:
            raise ValueError(error)

    def recipe(self) -> dict[str, Any]:
        """As `RunConfig.recipe`, with a genotype file named by the genotype it holds, not by its path: a
        comparison or pipeline folder that was copied or moved names the same genotype by another path."""
        d = super().recipe()
        d["attention"] = _attention_value(self.attention)
        return d


def _attention_value(attention: str) -> str:
    """The genotype a genotype file holds, as compact JSON; any other attention as given."""
    if not attention.lower().endswith(".json") or not Path(attention).is_file():
        return attention
    from ..stage_genotypes import genotype_or_stages  # the genotype module imports models: load it late

    try:
        return genotype_or_stages(attention).to_json(indent=None)
    except ValueError:  # a malformed file: as given, so the mismatch (if any) is reported by path
        return attention


PRESETS: dict[str, dict[str, Any]] = {
    # the SASE paper's ImageNet-1k recipe (Wang et al., 2024): ResNet-50 (ResNet-101 with --model); the crops
    # and jitter come from the data module
    "imagenet": dict(dataset="imagefolder", model="resnet50", epochs=100, batch_size=128, lr=0.1, lr_min=0.0,
                     momentum=0.9, nesterov=False, weight_decay=1e-4, warmup_epochs=0.0, label_smoothing=0.1,
                     grad_clip=5.0, checkpoint_every=1000),
    # Not from the paper (it reports no CIFAR training recipe): the common CIFAR ResNet recipe, cosine form
    "cifar": dict(dataset="cifar10", model="resnet56", epochs=200, batch_size=128, lr=0.1, lr_min=0.0,
                  momentum=0.9, nesterov=False, weight_decay=5e-4, warmup_epochs=1.0, label_smoothing=0.0,
                  grad_clip=5.0),
}
TrainConfig.PRESETS = PRESETS
