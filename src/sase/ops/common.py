"""Pieces shared by the two squeeze sets: statistic pooling, the two-statistic mixer, covariance pooling.

`axis` names which statistics of a `Features` an op reads: "hw" (over positions, channel squeeze)
or "c" (over channels, spatial squeeze).
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features, exporting, no_autocast

Axis = Literal["hw", "c"]


def adaptive_bins(n_in: int | Tensor, n_out: int | Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n_out, n_in): row i averages the input cells of adaptive pooling's bin i.

    Bin i spans [floor(i n_in / n_out), ceil((i + 1) n_in / n_out)), as in `F.adaptive_avg_pool2d`.
    Built from tensor ops, so either size may be symbolic or traced (export); eager mode caches it.
    """
    if exporting() or _recording_cuda_graph(device):
        # a tensor cached while a CUDA graph records would live in the recording's memory pool, which is
        # handed back (and overwritten) when the search records again: built afresh there instead
        return _bins(n_in, n_out, dtype, device)
    # built once per size, dtype and device, and never as an inference tensor: one made under
    # torch.inference_mode would be refused by every later forward that autograd records
    with torch.inference_mode(False):
        return _cached_bins(n_in, n_out, dtype, device)


def _bins(n_in: int | Tensor, n_out: int | Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    i = torch.arange(n_out, device=device).unsqueeze(1)  # (n_out, 1)
    j = torch.arange(n_in, device=device).unsqueeze(0)  # (1, n_in)
    start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)  # (n_out, 1) each
    inside = (j >= start) & (j < end)  # (n_out, n_in)
    return inside.to(dtype) / (end - start).to(dtype)


_cached_bins = functools.cache(_bins)


def _recording_cuda_graph(device: torch.device) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing()


def adaptive_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.adaptive_avg_pool2d(x, size)` as two small matrix products, one per axis.

    The same values (each output cell the mean of its bin), 2-5x faster forward and backward on CPU
    for the 8x8 grid of `cov` in either direction, with a backward that is one matrix product too,
    and an ONNX export for any input size (ONNX's own pooling takes no output size).
    """
    rows = adaptive_bins(x.shape[-2], size[0], x.dtype, x.device)
    cols = adaptive_bins(x.shape[-1], size[1], x.dtype, x.device)
    return torch.matmul(torch.matmul(rows, x), cols.t())


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 conv applied to a (B, C, 1, 1) descriptor, as the matmul it is: several times faster on CPU."""
    return F.linear(x.flatten(1), conv.weight.flatten(1), conv.bias)[..., None, None]


class StatMixer(nn.Module):
    """ReLU(w0 * a + w1 * b): a 1x1 conv 2 -> 1 without bias over two stacked statistics.

    The two weights are shared by every channel (channel squeeze) or position (spatial squeeze).
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(2))
        # the default init of nn.Conv2d(2, 1, 1): uniform in +-1/sqrt(fan_in)
        nn.init.uniform_(self.weight, -1 / math.sqrt(2), 1 / math.sqrt(2))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        w = self.weight
        return torch.relu(a.to(w.dtype) * w[0] + b.to(w.dtype) * w[1])


class Statistic(nn.Module):
    """A parameter-free statistic of the map (`mean`, `pnorm4`, ...) along `axis`."""

    def __init__(self, channels: int, axis: Axis, stat: str) -> None:
        super().__init__()
        self.axis, self.stat = axis, stat

    @no_autocast
    def forward(self, x: Tensor | Features) -> Tensor:
        return getattr(getattr(Features.of(x), self.axis), self.stat)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, stat={self.stat}"


class MeanAnd(nn.Module):
    """The mean and a second statistic along `axis`, mixed by a learned 1x1 conv 2 -> 1 and ReLU."""

    def __init__(self, channels: int, axis: Axis, second: str) -> None:
        super().__init__()
        self.axis, self.second = axis, second
        self.mix = StatMixer()

    @no_autocast
    def forward(self, x: Tensor | Features) -> Tensor:
        stats = getattr(Features.of(x), self.axis)
        if self.second == "max":
            return self.mix(*stats.mean_and_max)
        return self.mix(stats.mean, getattr(stats, self.second))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, second={self.second}"


class CovarianceHead(nn.Module):
    """Second-order pooling head: covariance of `rows` rows, BatchNorm, row-wise conv, ReLU, 1x1 conv.

    Input (B, R, N): R rows observed at N points. Output (B, out, 1, 1). As in the SASE authors'
    code (and GSoP), neither conv has a bias: the BatchNorm before them carries the shift.
    """

    def __init__(self, rows: int, out: int) -> None:
        super().__init__()
        self.rows = rows
        self.bn = nn.BatchNorm2d(rows)
        # kernel (R, 1) with groups=R: each row of the covariance matrix becomes one value
        self.row_conv = nn.Conv2d(rows, rows, (rows, 1), groups=rows, bias=False)
        self.proj = nn.Conv2d(rows, out, 1, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        z = z.to(self.proj.weight.dtype)
        z = z - z.mean(-1, keepdim=True)
        # (reference) products of the centred rows summed over points, divided by R - 1;
        # max(., 1): the authors' code divides by zero for a single row (C < 8 in the channel op)
        cov = torch.bmm(z, z.transpose(1, 2)) / max(self.rows - 1, 1)  # (B, R, R)
        cov = self.bn(cov.unsqueeze(-1)).squeeze(-1)  # (B, R, R)
        # the row-wise grouped conv, as a multiply and a sum: same result, several times faster on CPU
        y = (cov * self.row_conv.weight.view(1, self.rows, self.rows)).sum(-1)  # (B, R)
        return pointwise(self.proj, torch.relu(y))  # (B, R) -> (B, out, 1, 1)
