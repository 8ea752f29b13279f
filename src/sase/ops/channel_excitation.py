"""Channel excitation: (B, C, 1, 1) -> (B, C, 1, 1), a weight per channel (Wang et al., 2024)."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import pointwise
from .features import no_autocast


class Fc(nn.Module):
    """The SE MLP, 1x1 conv C -> C/16, ReLU, 1x1 conv C/16 -> C, no bias. (reference) No sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.fc1.weight.dtype)
        return pointwise(self.fc2, torch.relu(pointwise(self.fc1, x)))


class ChannelConv1d(nn.Conv1d):
    """A 1 -> 1 channel 1-D conv without bias, padded to keep the length: a kernel slid across channels.

    Computed as a matmul over a sliding window (unfold): the same result, faster forward and backward on
    CPU than a one-channel conv1d.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        k, p = self.kernel_size[0], self.padding[0]
        windows = F.pad(x, (p, p)).unfold(-1, k, 1)  # (B, 1, L, k)
        return windows @ self.weight.view(k)  # (B, 1, L)


class Conv1dGate(nn.Module):
    """ECA-style: `depth` stacked 1-D convs of kernel k across the channel axis, ReLU between, then sigmoid."""

    def __init__(self, channels: int, kernel_size: int = 3, depth: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            if i:
                layers.append(nn.ReLU())
            layers.append(ChannelConv1d(kernel_size))
        self.convs = nn.Sequential(*layers)

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        y = self.convs(x.reshape(b, 1, c).to(self.convs[0].weight.dtype))  # channels as a 1-D signal
        return torch.sigmoid(y).view(b, c, 1, 1)


class ChannelAffine(nn.Module):
    """sigmoid(a * x + b) with a per-channel a (init 1) and b (init 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(torch.addcmul(self.bias, x.to(self.weight.dtype), self.weight))


CHANNEL_EXCITATION: dict[str, Callable[[int], nn.Module]] = {
    "fc": Fc,
    "conv1d_3": partial(Conv1dGate, kernel_size=3),
    "conv1d_5": partial(Conv1dGate, kernel_size=5),
    "conv1d_7": partial(Conv1dGate, kernel_size=7),
    "conv1d_3x2": partial(Conv1dGate, kernel_size=3, depth=2),
    "conv1d_3x3": partial(Conv1dGate, kernel_size=3, depth=3),
    "affine": ChannelAffine,
}
