"""GSoP, global second-order pooling for channel attention (Gao et al., "Global Second-order
Pooling Convolutional Networks", CVPR 2019)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.features import no_autocast, wide


def covariance(x: Tensor) -> Tensor:
    """(B, D, H, W) -> (B, D, D): covariance between channels over positions, divided by H*W."""
    y = x.flatten(2)  # (B, D, HW)
    y = y - y.mean(2, keepdim=True)
    return y @ y.transpose(1, 2) / y.shape[2]


class GSoP(nn.Module):
    """1x1 conv C -> D (BN, ReLU) -> D x D covariance -> row-wise conv -> ReLU -> 1x1 conv -> sigmoid -> scale.

    The row-wise conv is a grouped conv: row i of the covariance gets its own 4 filters spanning it.
    """

    def __init__(
        self,
        channels: int,
        *,
        reduced_channels: int = 128,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d = reduced_channels
        factory = {"device": device, "dtype": dtype}
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, d, 1, **factory),
            nn.BatchNorm2d(d, **factory),
            nn.ReLU(inplace=True),
        )
        self.row_conv = nn.Conv2d(d, 4 * d, (d, 1), groups=d, **factory)
        self.fc = nn.Conv2d(4 * d, channels, 1, **factory)

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        z = self.reduce(x.to(self.reduce[0].weight.dtype))  # (B, C, H, W) -> (B, D, H, W)
        # float32: a sum of squares over positions, the statistic that overflows float16 first
        cov = covariance(wide(z)).to(self.row_conv.weight.dtype)
        cov = cov.unsqueeze(3)  # (B, D, D) -> (B, D, D, 1): row i is channel i, spanning the height
        y = torch.relu(self.row_conv(cov))  # -> (B, 4D, 1, 1)
        gate = torch.sigmoid(self.fc(y))  # -> (B, C, 1, 1)
        return x * gate.to(x.dtype)
