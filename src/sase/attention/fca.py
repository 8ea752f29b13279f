"""FcaNet, multi-spectral channel attention (Qin et al., "FcaNet: Frequency Channel Attention
Networks", ICCV 2021)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops.common import adaptive_resize
from ..ops.features import no_autocast, wide

GRID = 7  # the DCT grid: the input is pooled to 7x7 first, so any size works
# FcaNet's get_freq_indices('top16'): (u along H, v along W) on the 7x7 grid, best first
TOP16_U = (0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2)
TOP16_V = (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2)


def dct_basis(freq: int, size: int = GRID) -> Tensor:
    """(size,): the orthonormal 1-D DCT-II basis vector of frequency `freq` (FcaNet's build_filter)."""
    pos = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(math.pi * freq * (pos + 0.5) / size) / math.sqrt(size)
    return basis * math.sqrt(2) if freq else basis


def dct_filters(channels: int, dtype: torch.dtype | None = None) -> Tensor:
    """(C, 7, 7): channel c gets the 2-D basis of frequency group c * F // C (contiguous groups).

    Computed in float64 and rounded once to `dtype` (the default dtype when None).

    F = min(16, C); when 16 does not divide C the groups differ in size by at most one channel.
    """
    num_freq = min(len(TOP16_U), channels)
    bases = torch.stack([torch.outer(dct_basis(u), dct_basis(v))
                         for u, v in zip(TOP16_U[:num_freq], TOP16_V[:num_freq])])  # (F, 7, 7)
    group = torch.arange(channels) * num_freq // channels
    return bases[group].to(dtype or torch.get_default_dtype())


class FCA(nn.Module):
    """Pool X to 7x7, take one DCT coefficient per channel -> FC C -> C/16 -> ReLU -> FC -> sigmoid -> scale."""

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        # fixed, not learned, and rebuilt from `channels`: kept out of the state dict
        self.register_buffer("weight", dct_filters(channels, dtype).to(device=device), persistent=False)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False, device=device, dtype=dtype),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False, device=device, dtype=dtype),
        )

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        pooled = adaptive_resize(wide(x), (GRID, GRID))  # (B, C, H, W) -> (B, C, 7, 7), adaptive average pooling
        y = (pooled * wide(self.weight)).sum((2, 3))  # -> (B, C): one DCT coefficient per channel
        fc = self.fc[0].weight
        gate = torch.sigmoid(self.fc(y.to(fc.dtype)))[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        return x * gate.to(x.dtype)
