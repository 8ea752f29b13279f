"""The optimiser, the learning-rate schedule and the numeric precision of a training run.

The schedule is a per-step LambdaLR: linear warm-up to the peak, then a cosine to `lr_min`. Stepping
every iteration (not every epoch) makes the learning rate a function of the global step alone, so a
run resumed mid-epoch continues on exactly the same curve.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn

from .config import TrainConfig

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class WarmupCosine:
    """Multiplier of the peak learning rate at a global step (a LambdaLR lambda, saved in its state)."""

    warmup_steps: int  # steps of linear warm-up
    total_steps: int  # steps of the whole run
    floor: float  # lr_min / lr: where the cosine ends

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # never 0: the first step already learns
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = WarmupCosine(warmup_steps=round(config.warmup_epochs * steps_per_epoch),
                            total_steps=config.epochs * steps_per_epoch, floor=config.lr_min / config.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def autocast(amp: str | None, device: torch.device, cache: bool = True) -> ContextManager:
    """torch.autocast to the run's half type on `device`, or nothing for float32.

    `cache=False` inside a CUDA graph recording: cached casts would outlive the recording.
    """
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp], cache_enabled=cache)


def build_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its range is too narrow for small gradients); bf16 and float32 need none."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, parameters: Sequence[torch.Tensor],
                   clip: float) -> None:
    """Backward, the gradients of `parameters` clipped to norm `clip` (0: not clipped), one optimiser step
    (through the fp16 scaler when there is one) and one schedule step."""
    if scaler is None:
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    with warnings.catch_warnings():
        # the scheduler steps even when the scaler skipped a step: the lr stays a function of the step
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")  # a regex: no "()"
        scheduler.step()


def full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32 before the loss (a half softmax loses small probabilities); float64 kept."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
