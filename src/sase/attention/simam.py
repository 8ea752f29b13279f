"""SimAM, a parameter-free attention from an energy function (Yang et al., "SimAM: A Simple,
Parameter-Free Attention Module for Convolutional Neural Networks", ICML 2021)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.features import at_least_one, exporting, no_autocast, wide


class SimAM(nn.Module):
    """X * sigmoid(E), E = d / (4 (v + lambda)) + 0.5, d = (x - mu)^2, v = sum_{H,W} d / (H W - 1).

    `channels`, `device` and `dtype` are accepted for the common signature; there are no parameters.
    """

    def __init__(
        self,
        channels: int,
        *,
        e_lambda: float = 1e-4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        # max(., 1): at 1x1 the paper's H*W - 1 is 0 (d is 0 there too, so E = 0.5)
        n = at_least_one(h * w - 1)
        x32 = wide(x)
        d = (x32 - x32.mean((2, 3), keepdim=True)).pow(2)
        v = d.sum((2, 3), keepdim=True) / n  # (B, C, H, W) -> (B, C, 1, 1)
        if torch.is_grad_enabled() or exporting() or x32 is not x:
            energy = d / (4 * (v + self.e_lambda)) + 0.5
            return x * torch.sigmoid(energy).to(x.dtype)
        # inference on a float32 map: d's buffer becomes the energy, the gate and the output in turn, so the
        # module holds one full-size buffer as SE does, not four
        return d.div_(4 * (v + self.e_lambda)).add_(0.5).sigmoid_().mul_(x)

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}"
