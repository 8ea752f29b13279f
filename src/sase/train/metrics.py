"""What a trained model is measured by: top-k accuracy and loss, parameters, FLOPs, inference throughput.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one image: it counts 2 FLOPs per
multiply-add of convolutions and matrix products and nothing for elementwise ops, pooling or
normalisation. Papers' "FLOPs" for ResNets (4.1 G for ResNet-50) are multiply-adds, so both are
reported: `flops` and `macs` = flops / 2.

Under torchrun each process evaluates its `shard` of the evaluation set and `evaluate` sums the counts
over the processes, so every image is counted once and every process gets the same figures.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode

from ..utils.totals import Totals
from .recipe import autocast

MAX_K = 5  # top-5, or top-(classes) when there are fewer classes


def top_k(num_classes: int) -> int:
    """The k of the second accuracy reported: 5, or the number of classes when it is smaller."""
    return min(MAX_K, num_classes)


def correct_top(logits: Tensor, labels: Tensor, ks: tuple[int, ...], valid: Tensor | None = None) -> Tensor:
    """How many of `labels` are among the top-k `logits`, for each k: a (len(ks),) tensor on their device.
    Rows where `valid` (B,) is False count as misses."""
    ranked = logits.topk(max(ks), dim=1).indices  # (B, max k)
    hits = (ranked == labels.unsqueeze(1)).cumsum(1).clamp_max(1)  # (B, max k): label within the first j + 1
    if valid is not None:
        hits = hits * valid.unsqueeze(1)
    return hits[:, [k - 1 for k in ks]].sum(0)


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy (no label smoothing)
    top1: float  # fraction in [0, 1]
    topk: float  # top-k fraction in [0, 1]
    k: int
    images: int
    nonfinite: int = 0  # images whose logits were not all finite (the activations overflowed); counted as wrong


def nonfinite_message(result: EvalResult) -> str:
    """What to tell a user whose evaluation met non-finite outputs."""
    return (f"the network's outputs were not finite on {result.nonfinite} of {result.images} evaluation images: "
            "its activations overflowed in eval mode (the BatchNorm running statistics, or a block that amplifies "
            "its input); those images count as wrong and the validation loss is not finite")


def shard(dataset: Dataset, rank: int, processes: int) -> Dataset:
    """Process `rank`'s share of an evaluation set: every processes-th image from the rank-th, so that the
    processes together hold each image once (the whole set itself for one process)."""
    if processes == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), processes))  # type: ignore[arg-type]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None,
             across_processes: bool = False) -> EvalResult:
    """Loss, top-1 and top-k of `model` over `loader`, in eval mode (restores the previous mode).

    `across_processes`: `loader` holds this process's shard, and the sums are taken over every process
    (each must call this at the same point).
    """
    was_training = model.training
    model.eval()
    k = None
    totals = Totals(across_processes=across_processes)  # summed on the device, read once at the end
    for name in ("loss", "top1", "topk", "nonfinite"):
        # started on every process, so that each reduces the same sums, even one whose shard is empty
        totals.add(name, torch.zeros((), device=device))
    totals.add("seen", 0)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(amp, device):
            logits = model(x)
        logits = logits.float()
        k = k or top_k(logits.shape[1])
        totals.add("loss", F.cross_entropy(logits, y, reduction="sum"))
        finite = torch.isfinite(logits).all(1)  # an overflowed image's ranking means nothing: a miss
        c1, ck = correct_top(logits, y, (1, k), finite)
        totals.add("top1", c1)
        totals.add("topk", ck)
        totals.add("nonfinite", (~finite).sum())
        totals.add("seen", len(y))
    model.train(was_training)
    t = totals.read()
    if not t.get("seen"):
        raise ValueError("the evaluation split holds no images")
    seen = int(t["seen"])
    return EvalResult(t["loss"] / seen, t["top1"] / seen, t["topk"] / seen, k or 1, seen, int(t["nonfinite"]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """FLOPs of one forward pass on one image of `image_size`, in eval mode (2 per multiply-add)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def inference_throughput(model: nn.Module, image_size: int, batch_size: int = 64, in_chans: int = 3,
                         min_seconds: float = 1.0, min_batches: int = 3) -> float:
    """Images per second of eval-mode forward passes on one fixed batch, after one warm-up pass."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(batch_size, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    with torch.inference_mode():
        model(x)  # warm-up: allocator, kernel selection
        _sync(device)
        batches, start = 0, time.perf_counter()
        while batches < min_batches or time.perf_counter() - start < min_seconds:
            model(x)
            batches += 1
        _sync(device)
        seconds = time.perf_counter() - start
    model.train(was_training)
    return batches * batch_size / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
