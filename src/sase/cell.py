"""The SASE cell: six edges wired into an attention block (Wang et al., 2024), written once.

`Cell` holds six edge modules and a merge; `forward` is the only place the wiring lives. The fixed
block (`SASEBlock`) puts one op on each edge, the supernet a mixed op; nothing else differs.

    s1 = CS(s0)                     edge 0  (B, C, 1, 1)
    s2 = CE_a(s1)                   edge 1  channel attention
    s3 = CE_b(s1) * s0              edge 2  channel-refined features
    s4 = M([SS_a(s3), SS_b(s0)])    edges 3, 4; M = 1x1 conv 2 -> 1, BatchNorm, ReLU  (B, 1, H, W)
    s5 = SE(s4)                     edge 5  spatial attention
    Y  = s0 * (1 + (s2 + s5) / 2)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .ops import Features
from .ops.autograd import Gated
from .ops.features import exporting, no_autocast, recording


@dataclass(frozen=True)
class Edge:
    """An edge of the cell: its name in a genotype and the operation set it draws from."""

    name: str
    op_set: str


EDGES: tuple[Edge, ...] = (
    Edge("channel_squeeze", "channel_squeeze"),  # s1 = CS(s0)
    Edge("channel_excitation", "channel_excitation"),  # s2 = CE_a(s1)
    Edge("channel_refine", "channel_excitation"),  # s3 = CE_b(s1) * s0
    Edge("spatial_squeeze_refined", "spatial_squeeze"),  # SS_a(s3)
    Edge("spatial_squeeze_input", "spatial_squeeze"),  # SS_b(s0)
    Edge("spatial_excitation", "spatial_excitation"),  # s5 = SE(s4)
)
EDGE_NAMES: tuple[str, ...] = tuple(e.name for e in EDGES)


class SpatialMerge(nn.Module):
    """M: the two spatial descriptors stacked, 1x1 conv 2 -> 1, BatchNorm, ReLU."""

    def __init__(self, affine: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(1, affine=affine)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        w = self.conv.weight.view(2, 1, 1)  # a 1x1 conv of two stacked maps is their weighted sum
        dtype = w.dtype
        return torch.relu(self.bn(a.to(dtype) * w[0] + b.to(dtype) * w[1]))


class Cell(nn.Module):
    """The six-edge wiring around any six edge modules (ops or mixed ops), in `EDGES` order.

    `affine` is the merge BatchNorm's: off while searching, on in the final block.
    """

    def __init__(self, edges: Sequence[nn.Module], affine: bool) -> None:
        super().__init__()
        if len(edges) != len(EDGES):
            raise ValueError(f"a cell has {len(EDGES)} edges ({', '.join(EDGE_NAMES)}), got {len(edges)}")
        self.edges = nn.ModuleList(edges)
        self.merge = SpatialMerge(affine)

    @no_autocast
    def forward(self, x: Tensor) -> Tensor:
        cs, ce_a, ce_b, ss_a, ss_b, se = self.edges
        s0 = Features(x)  # statistics of s0 are shared by edges 0 and 4
        s1 = cs(s0)  # (B, C, 1, 1)
        s2 = ce_a(s1)  # (B, C, 1, 1)
        s3 = s0.scaled(ce_b(s1))  # (B, C, H, W), written out only if an op on edge 3 needs it
        s4 = self.merge(ss_a(s3), ss_b(s0))  # (B, 1, H, W)
        s5 = se(s4)  # (B, 1, H, W)
        # Y = s0 * (1 + (s2 + s5) / 2): the (B, C, 1, 1) and (B, 1, H, W) halves meet in one full-size pass
        dtype = x.dtype
        channel, spatial = 1 + 0.5 * s2.to(dtype), 0.5 * s5.to(dtype)
        if recording():
            return Gated.apply(x, channel, spatial)  # keeps x, not the full-size gate, for the backward pass
        if torch.is_grad_enabled() or exporting():
            return x * (channel + spatial)
        # inference: build the gate in a buffer the statistics are done with, then scale it in place
        gate = torch.add(channel, spatial, out=s0.spare_buffer(x))  # (B, C, H, W)
        return gate.mul_(x)
