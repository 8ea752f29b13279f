"""Residual blocks with an attention hook, and the stage builder and initialisation the ResNets share.

`BasicBlock` and `Bottleneck` are torchvision's (same layers, names and initialisation) plus one
submodule `attn = create_attention(attn_layer, planes * expansion)` after the last BatchNorm and
before the residual addition, exactly where an SE block sits (Wang et al., 2024). With no attention `attn` is
an `nn.Identity`: no parameters, no state_dict keys, so torchvision checkpoints load unchanged.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Callable, Optional, Union

from torch import Tensor, nn
from torchvision.models import resnet as tv

from ..attention import AttentionSpec, create_attention


class BasicBlock(tv.BasicBlock):
    """torchvision's BasicBlock with `attn` on the output of bn2."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
        attn_layer: AttentionSpec = None,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer)
        self.attn = create_attention(attn_layer, planes * self.expansion)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        return self.relu(out + identity)  # not in place: the attention's output may be needed by its backward


class Bottleneck(tv.Bottleneck):
    """torchvision's Bottleneck (ResNet v1.5, stride on the 3x3 conv) with `attn` on the output of bn3."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
        attn_layer: AttentionSpec = None,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer)
        self.attn = create_attention(attn_layer, planes * self.expansion)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attn(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


Block = Union[type[BasicBlock], type[Bottleneck]]


def make_stage(block: Block, inplanes: int, planes: int, blocks: int, stride: int,
               attention: AttentionSpec) -> nn.Sequential:
    """`blocks` residual blocks; the first changes width and stride through a 1x1 conv + BN shortcut.

    Modules are built in torchvision's `_make_layer` order (shortcut first), so a seeded model draws
    the same initial weights as torchvision's.
    """
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(tv.conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))
    layers = [block(inplanes, planes, stride, downsample, attn_layer=attention)]
    layers += [block(outplanes, planes, attn_layer=attention) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _backbone_modules(module: nn.Module) -> Iterator[nn.Module]:
    """`module` and its descendants, leaving out every block's `attn` subtree."""
    yield module
    for name, child in module.named_children():
        if name != "attn":
            yield from _backbone_modules(child)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's ResNet initialisation, applied to the backbone only.

    Convs: Kaiming normal (fan_out, ReLU); norms: weight 1, bias 0; with `zero_init_residual` the last
    BN of each residual branch starts at 0. Attention modules keep their own initialisation (and may
    hold norms without affine parameters, e.g. the supernet's merge BatchNorm).
    """
    for m in _backbone_modules(model):
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in _backbone_modules(model):
            if isinstance(m, (BasicBlock, Bottleneck)):
                m.zero_init_last()
