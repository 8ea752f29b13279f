"""Spatial squeeze: (B, C, H, W) -> (B, 1, H, W), one descriptor per position (Wang et al., 2024).

The ideas of the channel squeeze, applied along the channel axis. Each op takes a tensor or a
shared `Features` and reads its statistics over C.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from .common import CovarianceHead, MeanAnd, Statistic, adaptive_resize
from .features import Features, no_autocast, wide


class L2(nn.Module):
    """Normalise each channel over (H, W) with a per-channel affine, then sqrt of the sum over C of x^2.

    (fix) The reference normalised with LayerNorm((H, W)) and a per-position affine, tying the op to
    one input size; a per-channel scale and shift works at any size.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    @no_autocast
    def forward(self, x: Tensor | Features) -> Tensor:
        features = Features.of(x)
        # y = gamma * (x - mean) / sqrt(var + eps) + beta = scale * (x - mean) + beta, per channel
        scale = wide(self.weight).view(1, -1, 1, 1) * torch.rsqrt(features.hw.var + self.eps)  # (B, C, 1, 1)
        energy = features.channel_affine_sq_sum(scale, wide(self.bias).view(1, -1, 1, 1))  # (B, 1, H, W)
        # clamp: sqrt's slope is infinite at 0 (and the expanded square can round a hair below it)
        return energy.clamp_min(1e-12).sqrt().to(self.weight.dtype)


class Cov(nn.Module):
    """Covariance between the 64 positions of the map pooled to 8x8, over channels, pooled back to H x W.

    Both resizes are adaptive average pooling, as in the authors' code: it also enlarges (a map
    smaller than 8x8 on the way in, the 8x8 result for a larger map on the way out), each output
    cell averaging the input cells its bin overlaps, so every H, W >= 1 works.
    """

    grid = 8

    def __init__(self, channels: int) -> None:
        super().__init__()
        n = self.grid * self.grid
        self.head = CovarianceHead(n, n)

    @no_autocast
    def forward(self, x: Tensor | Features) -> Tensor:
        x = Features.of(x).x32
        b, c, h, w = x.shape
        z = adaptive_resize(x, (self.grid, self.grid)).flatten(2).transpose(1, 2)  # (B, 64, C)
        y = self.head(z).view(b, 1, self.grid, self.grid)  # (B, 64, 1, 1) -> (B, 1, 8, 8)
        return adaptive_resize(y, (h, w))  # (B, 1, H, W)


SPATIAL_SQUEEZE: dict[str, Callable[[int], nn.Module]] = {
    "gap": partial(Statistic, axis="c", stat="mean"),
    "l2": L2,
    "pnorm": partial(Statistic, axis="c", stat="pnorm4"),
    "gap_gmp": partial(MeanAnd, axis="c", second="max"),
    # biased std over C, as in the channel set (the authors' code: unbiased, NaN for one channel)
    "gap_std": partial(MeanAnd, axis="c", second="std"),
    "gap_skew": partial(MeanAnd, axis="c", second="third_moment"),
    "cov": Cov,
}
