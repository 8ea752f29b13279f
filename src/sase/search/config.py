"""Search settings: a dataclass whose defaults are the quick offline run, with the SASE paper's (Wang et al., 2024) as a preset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models import check_backbone
from ..utils.config import SEEDS, Range, RunConfig, amp_error, device_error
from .optim import ARCH_OPTIMIZERS
from .supernet import SAMPLINGS
from .verdict import DECIDED_MARGIN

# Wang et al., 2024: Adam at lr 3e-4 for 100 epochs of 195 α steps (25,000 CIFAR-10 images in batches of 128). Adam moves
# each coordinate by about lr per step whatever the gradient's scale, so this is how far α may travel in the
# paper's search; a shorter run gets the same travel with a proportionally larger lr.
REFERENCE_ARCH_LR = 3e-4
REFERENCE_ALPHA_STEPS = 100 * 195
MAX_ARCH_LR = 0.3  # a very short run: past this, single noisy steps would swing α by whole logits
SELECTIONS = ("argmax", "perturbation")
# GDAS (Dong & Yang, CVPR 2019): the sample's temperature decays linearly from 10 to 0.1 over the search
TAU_MAX, TAU_MIN = 10.0, 0.1


@dataclass(frozen=True)
class SearchConfig(RunConfig):
    """Everything a search run depends on; saved as config.json next to its outputs."""

    KIND = "search"
    # may differ on resume: they do not change the result (a device changes only float rounding)
    KNOBS = ("out", "workers", "checkpoint_every", "download", "device", "cuda_graphs")
    RANGES = {
        "image_size": Range(1), "epochs": Range(1), "batch_size": Range(1),
        "train_portion": Range(0, 1, low_open=True, high_open=True), "seed": SEEDS,
        "lr": Range(0, low_open=True), "lr_min": Range(0, "lr"), "momentum": Range(0, 1, high_open=True),
        "weight_decay": Range(0), "grad_clip": Range(0, why="0 disables clipping"),
        "arch_lr": Range(0, low_open=True), "arch_beta1": Range(0, 1, high_open=True),
        "arch_beta2": Range(0, 1, high_open=True), "arch_weight_decay": Range(0),
        "warmup_epochs": Range(0, "epochs", high_open=True, why="α needs at least one epoch to move"),
        "steps_per_epoch": Range(1), "eval_images": Range(1), "decided_margin": Range(0, 1, low_open=True),
        "beta_decay": Range(0), "checkpoint_every": Range(1), "workers": Range(0),
        "tau_max": Range(0, low_open=True), "tau_min": Range(0, "tau_max", low_open=True),
    }

    dataset: str = "digits"  # digits, cluttered-digits (bundled, offline) | cifar10 | cifar100 | imagefolder
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
    # weights: SGD with cosine schedule (Wang et al., 2024)
    lr: float = 0.025
    lr_min: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 5.0  # max gradient norm of the weights; 0 disables
    # α: Adam (Wang et al., 2024: lr 3e-4 over the paper's 19,500 α steps)
    arch_lr: float | None = None  # None: matched to the run's α steps (see budget_arch_lr); the paper preset: 3e-4
    arch_optimizer: str = "edge_adam"  # adam (Wang et al., 2024) | edge_adam: one second moment per edge (sase.search.optim)
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    warmup_epochs: int = 0  # epochs that train w only, α frozen
    steps_per_epoch: int | None = None  # cap on steps per epoch (None: the whole split)
    eval_images: int | None = None  # cap on the images of each epoch-end evaluation (None: the α half, all of it)
    decided_margin: float = DECIDED_MARGIN  # an edge is decided when its top candidate leads by this probability
    select: str = "argmax"  # argmax (DARTS) | perturbation (DARTS-PT, Wang et al., ICLR 2021)
    sampling: str = "none"  # none: every candidate on every edge (DARTS) | gumbel: one drawn per edge (GDAS)
    tau_max: float = TAU_MAX  # with sampling: the temperature of the first epoch ...
    tau_min: float = TAU_MIN  # ... and of the last, linear in between
    beta_decay: float = 0.0  # λ of the Beta-Decay regulariser on α (β-DARTS, Ye et al., CVPR 2022); 0 disables
    track_hessian: bool = False  # dominant eigenvalue of the α Hessian of the validation loss, every epoch
    checkpoint_every: int = 20  # steps between checkpoints (one is also written at every epoch end)
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto: cuda when available, else cpu
    cuda_graphs: bool = True  # on one CUDA device: each search step replayed from a CUDA graph (sase.search.graphs)
    amp: str | None = None  # None: float32; "bf16" autocast; "fp16" autocast, w and α gradients through a scaler
    out: str = "runs/search"

    def __post_init__(self) -> None:
        self.check()  # types and the RANGES above
        if self.order not in ("1", "2", "exact"):
            raise ValueError(f"order must be 1, 2 or exact, got {self.order!r}")
        check_backbone(self.backbone)
        error = amp_error(self.amp) or device_error(self.device)
        if error:
            raise ValueError(error)
        if self.arch_optimizer not in ARCH_OPTIMIZERS:
            raise ValueError(f"arch_optimizer must be one of {', '.join(ARCH_OPTIMIZERS)}, got {self.arch_optimizer!r}")
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.sampling != "none" and self.order != "1":
            raise ValueError(f"--sampling {self.sampling} takes first-order α steps (as GDAS does): add --order 1 "
                             "(a second-order step would draw other candidates in each of its passes)")

    def temperature(self, epoch: int) -> float:
        """τ of the sampled search in `epoch` (0-based): tau_max at the first epoch, tau_min at the last."""
        if self.epochs == 1:
            return self.tau_min
        return self.tau_max + (self.tau_min - self.tau_max) * epoch / (self.epochs - 1)

    def alpha_steps(self, steps_per_epoch: int) -> int:
        """How many α steps the run takes: every step of every epoch after the warm-up."""
        return (self.epochs - self.warmup_epochs) * steps_per_epoch

    def resolved_arch_lr(self, steps_per_epoch: int) -> float:
        """The α learning rate: the one given, else the paper's α travel spread over this run's α steps."""
        if self.arch_lr is not None:
            return self.arch_lr
        return min(REFERENCE_ARCH_LR * REFERENCE_ALPHA_STEPS / self.alpha_steps(steps_per_epoch), MAX_ARCH_LR)


PRESETS: dict[str, dict[str, Any]] = {
    # Wang et al., 2024: the proxy task of the paper (CIFAR-10, ResNet-20, batch 128, 100 epochs, second order)
    "paper": dict(dataset="cifar10", backbone="resnet20", order="2", epochs=100, batch_size=128,
                  train_portion=0.5, lr=0.025, lr_min=1e-4, momentum=0.9, weight_decay=5e-4, grad_clip=5.0,
                  arch_lr=REFERENCE_ARCH_LR, arch_optimizer="adam", arch_beta1=0.5, arch_beta2=0.999, arch_weight_decay=1e-3, checkpoint_every=100),
}
SearchConfig.PRESETS = PRESETS
