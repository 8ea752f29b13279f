"""The backbones, behind one name each: CIFAR ResNet-20/56/110 and ImageNet ResNet-18/34/50/101.

    model = create_model("resnet50", attention="paper", num_classes=1000)

`attention` is any spec `sase.attention.create_attention` takes: a zoo name, a genotype, or a
callable taking `channels`. The same hook builds the search supernet.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

from timm.models import is_model, is_model_in_modules
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


def check_backbone(name: str) -> None:
    """A ValueError naming `name` unless it is a model here or "timm/<name>" of timm's ResNet family.

    Only timm's resnet module builds its blocks with `block_args=dict(attn_layer=...)`, the hook a
    supernet needs (ResNet, SE-ResNet, ResNeXt, ECA-ResNet, ...); asked here, not when the build fails.
    """
    if name.startswith("timm/"):
        timm_name = name[len("timm/"):]
        if not is_model(timm_name):
            raise ValueError(f"unknown backbone {name!r}: timm has no model {timm_name!r}")
        if not is_model_in_modules(timm_name, ["resnet"]):
            raise ValueError(f"backbone {name!r} is not a timm ResNet-family model (timm.models.resnet), whose "
                             "blocks take the attention hook")
    elif name not in MODELS:
        raise ValueError(f"unknown backbone {name!r}; valid choices: {', '.join(MODELS)}, or timm/<resnet name>")


__all__ = ["MODELS", "BasicBlock", "Bottleneck", "CifarResNet", "ResNet", "check_backbone", "create_model"]
