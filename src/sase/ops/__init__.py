"""The four SASE operation sets (Wang et al., "SASE: A Searching Architecture for Squeeze and
Excitation Operations", 2024). Each registry maps an op name to a factory `fn(channels)`.

These registries are the only place op names live: the genotype, the cell and the supernet read
them from here. `OPS` maps a set name to its registry.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .channel_excitation import CHANNEL_EXCITATION
from .channel_squeeze import CHANNEL_SQUEEZE
from .features import Features
from .spatial_excitation import SPATIAL_EXCITATION
from .spatial_squeeze import SPATIAL_SQUEEZE

OpFactory = Callable[[int], nn.Module]

OPS: dict[str, dict[str, OpFactory]] = {
    "channel_squeeze": CHANNEL_SQUEEZE,
    "channel_excitation": CHANNEL_EXCITATION,
    "spatial_squeeze": SPATIAL_SQUEEZE,
    "spatial_excitation": SPATIAL_EXCITATION,
}


def create_op(op_set: str, name: str, channels: int) -> nn.Module:
    """Build op `name` of set `op_set` for a map of `channels` channels."""
    if op_set not in OPS:
        raise ValueError(f"unknown operation set {op_set!r}; valid sets: {', '.join(OPS)}")
    registry = OPS[op_set]
    if name not in registry:
        raise ValueError(f"unknown {op_set} op {name!r}; valid choices: {', '.join(registry)}")
    return registry[name](channels)


__all__ = ["OPS", "OpFactory", "Features", "create_op", "CHANNEL_SQUEEZE", "CHANNEL_EXCITATION",
           "SPATIAL_SQUEEZE", "SPATIAL_EXCITATION"]
