"""Channel squeeze: (B, C, H, W) -> (B, C, 1, 1), one descriptor per channel (Wang et al., 2024).

Each op takes a tensor or a shared `Features` and reads its statistics over (H, W).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from .common import CovarianceHead, MeanAnd, Statistic, adaptive_bins
from .features import Features, no_autocast, wide


class L2(nn.Module):
    """InstanceNorm2d(C, affine=True), then sqrt of the sum over (H, W) of the squares.

    The normalised map has zero mean and variance var / (var + eps) per channel, so the sum of its
    squares is H*W * (gamma^2 * var / (var + eps) + beta^2): the same value as normalising the map
    and summing, read off the variance alone instead of two more passes over the map.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    @no_autocast
    def forward(self, x: Tensor | Features) -> Tensor:
        stats = Features.of(x).hw
        gamma = wide(self.weight).view(1, -1, 1, 1)
        beta = wide(self.bias).view(1, -1, 1, 1)
        energy = stats.count * (gamma.square() * stats.var / (stats.var + self.eps) + beta.square())
        # clamp: sqrt's slope is infinite at 0 (beta = 0 and a constant channel)
        return energy.clamp_min(1e-12).sqrt().to(self.weight.dtype)


class Cov(nn.Module):
    """Covariance pooling: channels averaged down to C/4 rows, covariance over the H*W positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # max(1, .): the authors' C // 4 leaves no row at all for C < 4
        self.rows = max(1, channels // 4)
        self.even = channels % self.rows == 0  # known here, not tested on the input's traced size
        self.head = CovarianceHead(self.rows, channels)

    @no_autocast
    def forward(self, x: Tensor | Features) -> Tensor:
        x = Features.of(x).x32
        b, c, h, w = x.shape
        if self.even:  # average-pool along the channel axis: (B, C, HW) -> (B, C/4, HW)
            z = x.reshape(b, self.rows, c // self.rows, h * w).mean(2)
        else:  # uneven groups, as adaptive pooling makes them: (C/4, C) bins times (B, C, HW)
            z = torch.matmul(adaptive_bins(c, self.rows, x.dtype, x.device), x.reshape(b, c, h * w))
        return self.head(z)


CHANNEL_SQUEEZE: dict[str, Callable[[int], nn.Module]] = {
    "gap": partial(Statistic, axis="hw", stat="mean"),
    "l2": L2,
    "pnorm": partial(Statistic, axis="hw", stat="pnorm4"),
    "gap_gmp": partial(MeanAnd, axis="hw", second="max"),
    # biased std, where the authors' code takes torch.std's unbiased one: that divides by H*W - 1,
    # zero on a 1x1 map (the last stage of a detector at a small input), and gives NaN there
    "gap_std": partial(MeanAnd, axis="hw", second="std"),
    "gap_skew": partial(MeanAnd, axis="hw", second="third_moment"),
    "cov": Cov,
}
