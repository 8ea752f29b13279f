"""SRM, style-based recalibration (Lee et al., "SRM: A Style-based Recalibration Module for
Convolutional Neural Networks", ICCV 2019)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.features import no_autocast, wide


class SRM(nn.Module):
    """Style pooling (per-channel mean and std) -> channel-wise FC -> BatchNorm -> sigmoid -> scale X.

    The channel-wise FC gives each channel its own two weights for its own (mean, std), a (C, 2)
    parameter; it starts at 0 as in the official code, so the gate starts as sigmoid(BN(0)).
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
        self.cfc = nn.Parameter(torch.zeros(channels, 2, device=device, dtype=dtype))
        self.bn = nn.BatchNorm2d(channels, device=device, dtype=dtype)

    def style_pool(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 2): per-channel mean and std over positions, in float32."""
        x32 = wide(x).flatten(2)  # (B, C, HW)
        # biased variance: defined at a single position; + eps keeps sqrt's gradient finite at 0
        var = x32.var(2, correction=0)
        return torch.stack((x32.mean(2), (var + self.eps).sqrt()), dim=2)

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        t = self.style_pool(x).to(self.cfc.dtype)
        z = (t * self.cfc).sum(2)[:, :, None, None]  # (B, C, 2) -> (B, C, 1, 1)
        gate = torch.sigmoid(self.bn(z))
        return x * gate.to(x.dtype)
