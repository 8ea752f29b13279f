"""The backbones, behind one name each: CIFAR ResNet-20/56/110 and ImageNet ResNet-18/34/50/101.

    model = create_model("resnet50", attention="paper", num_classes=1000)

`attention` is any spec `sase.attention.create_attention` takes: a zoo name, a genotype, or a
callable taking `channels`. The same hook builds the search supernet.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

from torch import nn

from ..attention import AttentionSpec
from .blocks import BasicBlock, Bottleneck
from .cifar_resnet import CifarResNet
from .resnet import ResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": partial(CifarResNet, (3, 3, 3)),
    "resnet56": partial(CifarResNet, (9, 9, 9)),
    "resnet110": partial(CifarResNet, (18, 18, 18)),
    "resnet18": partial(ResNet, BasicBlock, (2, 2, 2, 2)),
    "resnet34": partial(ResNet, BasicBlock, (3, 4, 6, 3)),
    "resnet50": partial(ResNet, Bottleneck, (3, 4, 6, 3)),
    "resnet101": partial(ResNet, Bottleneck, (3, 4, 23, 3)),
}


def create_model(
    name: str,
    attention: AttentionSpec = "none",
    num_classes: Optional[int] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build backbone `name` with `attention` in every residual block.

    `num_classes` None keeps the model's default (10 for the CIFAR ResNets, 1000 for the ImageNet
    ones); other keywords go to the model's constructor (e.g. `in_chans`, `zero_init_residual`).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(MODELS)}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return MODELS[name](attention=attention, **kwargs)


__all__ = ["MODELS", "BasicBlock", "Bottleneck", "CifarResNet", "ResNet", "create_model"]
