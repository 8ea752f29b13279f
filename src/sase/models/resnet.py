"""ImageNet ResNet-18/34/50/101 in torchvision's exact layout, an attention module in every block.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the Bottleneck is torchvision's
v1.5 (stride on the 3x3 conv). Module names, shapes and initialisation are torchvision's, so with
`attention="none"` a torchvision state_dict loads strictly and gives the same outputs; with any other
attention the backbone keys are unchanged and each block gains `attn.*` keys (Wang et al., 2024).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..attention import AttentionSpec
from .blocks import Block, init_weights, make_stage

WIDTHS = (64, 128, 256, 512)  # planes of layer1..layer4


class ResNet(nn.Module):
    """conv1 (7x7/2) - bn1 - relu - maxpool - layer1..layer4 - avgpool - fc, as torchvision builds it."""

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        attention: AttentionSpec = "none",
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(WIDTHS):
            raise ValueError(f"an ImageNet ResNet has {len(WIDTHS)} stages, got layers={tuple(layers)}")
        self.conv1 = nn.Conv2d(3, WIDTHS[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = WIDTHS[0]
        for i, (planes, blocks) in enumerate(zip(WIDTHS, layers)):
            stage = make_stage(block, inplanes, planes, blocks, stride=1 if i == 0 else 2, attention=attention)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512 * expansion, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, num_classes)
