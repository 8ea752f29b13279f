"""CIFAR ResNet-20/56/110 (He et al., CVPR 2016, §4.2), the SASE search's proxy network (Wang et al., 2024).

A 3x3 stem of 16 channels, three stages of n BasicBlocks with widths 16/32/64 (stride 2 at stages 2
and 3, through a 1x1 conv + BN projection shortcut), global average pooling and a linear classifier;
depth = 6n + 2. Every block carries an attention module after bn2, like the ImageNet ResNets.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..attention import AttentionSpec
from .blocks import BasicBlock, init_weights, make_stage

WIDTHS = (16, 32, 64)  # planes of layer1..layer3


class CifarResNet(nn.Module):
    """conv1 (3x3) - bn1 - relu - layer1..layer3 - avgpool - fc; no maxpool, any input size."""

    def __init__(
        self,
        layers: Sequence[int],
        attention: AttentionSpec = "none",
        num_classes: int = 10,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(WIDTHS):
            raise ValueError(f"a CIFAR ResNet has {len(WIDTHS)} stages, got layers={tuple(layers)}")
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = WIDTHS[0]
        for i, (planes, blocks) in enumerate(zip(WIDTHS, layers)):
            stage = make_stage(BasicBlock, inplanes, planes, blocks, stride=1 if i == 0 else 2, attention=attention)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, num_classes)
