"""GCT, gated channel transformation (Yang et al., "Gated Channel Transformation for Visual
Recognition", CVPR 2020)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops.features import no_autocast, wide


class GCT(nn.Module):
    """X * (1 + tanh(g_c * s_hat_c + b_c)), with s_c = a_c * sqrt(sum_{H,W} x^2 + eps) and
    s_hat_c = sqrt(C) * s_c / sqrt(sum_c s_c^2 + eps).

    a starts at 1, g and b at 0, so the module starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        *,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.root_c = math.sqrt(channels)  # a number, not read off the input: a trace keeps no float of a size
        shape = (1, channels, 1, 1)
        self.alpha = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))
        self.gamma = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        # float32: sum x^2 over a 56x56 map of values near 300 is ~3e8, past float16's 65504
        sq = wide(x).pow(2).sum((2, 3), keepdim=True)  # (B, C, H, W) -> (B, C, 1, 1)
        # eps inside both square roots: finite values and gradients for an all-zero map
        s = wide(self.alpha) * (sq + self.eps).sqrt()
        s_hat = self.root_c * s / (s.pow(2).sum(1, keepdim=True) + self.eps).sqrt()
        gate = 1.0 + torch.tanh(wide(self.gamma) * s_hat + wide(self.beta))
        return x * gate.to(x.dtype)
