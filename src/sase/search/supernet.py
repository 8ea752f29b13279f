"""The supernet: any backbone with an attention hook, with a mixed op on every edge of every cell.

Mixed ops are built through the same hook and the same `Cell` wiring as the fixed block; only what
sits on an edge differs. The architecture parameters α (groups, 6 edges, 7 candidates) live on the
`Supernet` itself, registered apart from the weights: one group shared by every cell (Wang et al., 2024), or
with `per_stage=True` one group per stage, a stage being every block of one width.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cell import EDGES, Cell
from ..genotype import Genotype
from ..models import MODELS, create_model
from ..ops import OPS, Features

NUM_CANDIDATES = len(next(iter(OPS.values())))
assert all(len(r) == NUM_CANDIDATES for r in OPS.values()), "α is a dense (edges x candidates) array"


BackboneBuilder = Callable[..., nn.Module]


class EdgeWeights:
    """softmax(α), worked out once per forward by the supernet and read by every mixed op."""

    value: Tensor | None = None


class MixedOp(nn.Module):
    """softmax(α_edge)-weighted sum of every candidate of one operation set (DARTS' mixed op)."""

    def __init__(self, op_set: str, channels: int, weights: EdgeWeights, group: int, edge: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(factory(channels) for factory in OPS[op_set].values())
        self.weights, self.group, self.edge = weights, group, edge

    def forward(self, x: Tensor | Features) -> Tensor:
        if self.weights.value is None:
            raise RuntimeError("a mixed op runs inside a Supernet's forward, which sets its weights")
        w = self.weights.value[self.group, self.edge]  # (K,)
        # squeeze candidates share one Features, so each statistic of x is computed once per edge
        outs = torch.stack([op(x) for op in self.ops])  # (K, B, C or 1, H or 1, W or 1)
        return torch.tensordot(w.to(outs.dtype), outs, dims=1)


class Supernet(nn.Module):
    """A backbone whose every attention slot holds a searchable cell.

    `backbone` is a name of `sase.models.MODELS`, "timm/<name>" for a timm ResNet-family model, or a
    callable `fn(attention, num_classes) -> nn.Module` that builds any network calling
    `attention(channels)` for each of its attention slots.
    """

    def __init__(
        self,
        backbone: str | BackboneBuilder = "resnet20",
        num_classes: int | None = None,
        per_stage: bool = False,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        self.per_stage = per_stage
        self._edge_weights = EdgeWeights()
        self._groups: dict[int, int] = {}  # block width -> α group
        self.net = build_backbone(backbone, self._make_cell, num_classes, **backbone_kwargs)
        if not self._groups:
            raise ValueError(f"backbone {backbone!r} has no attention slot: nothing to search")
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self._groups) if per_stage else 1, len(EDGES),
                                                     NUM_CANDIDATES))

    def _make_cell(self, channels: int, device: Any = None, dtype: Any = None, **_: Any) -> Cell:
        group = self._groups.setdefault(channels, len(self._groups))
        group = group if self.per_stage else 0
        edges = [MixedOp(e.op_set, channels, self._edge_weights, group, i) for i, e in enumerate(EDGES)]
        # (Wang et al., 2024) the merge BatchNorm is not affine while searching
        return Cell(edges, affine=False).to(device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self._edge_weights.value = F.softmax(self.alpha, dim=-1)
        try:
            return self.net(x)
        finally:
            self._edge_weights.value = None  # no graph kept alive between forwards

    # -- parameters, kept apart
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if n != "alpha")

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]

    # -- derivation
    def genotypes(self) -> list[Genotype]:
        """The argmax candidate of each edge, one genotype per α group."""
        return [derive_genotype(a) for a in self.alpha.detach()]

    def genotype(self) -> Genotype:
        """The derived genotype; with per-stage α, that of the group with the most confident choices."""
        return main_genotype(self, self.genotypes())

    @property
    def stage_widths(self) -> list[int]:
        """The block width each α group stands for (all widths in one group when α is shared)."""
        return list(self._groups)


def main_genotype(model: Supernet, genotypes: list[Genotype]) -> Genotype:
    """Of one genotype per α group, that of the group whose α is most confident (the only one when shared)."""
    if len(genotypes) == 1:
        return genotypes[0]
    confidence = F.softmax(model.alpha.detach(), -1).amax(-1).sum(-1)  # (groups,)
    return genotypes[int(confidence.argmax())]


def derive_genotype(alpha: Tensor) -> Genotype:
    """Per-edge argmax of α (6, K) -> Genotype."""
    names = [list(OPS[e.op_set]) for e in EDGES]
    return Genotype(tuple(n[int(i)] for n, i in zip(names, alpha.argmax(-1))))


def build_backbone(name: str | BackboneBuilder, attention: Callable[..., nn.Module], num_classes: int | None,
                   **kwargs: Any) -> nn.Module:
    """A backbone of ours by name, "timm/<name>" through timm's `attn_layer` block hook, or a builder's."""
    if callable(name):
        return name(attention, num_classes, **kwargs)
    if name.startswith("timm/"):
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name[5:], pretrained=False, block_args=dict(attn_layer=attention), **extra, **kwargs)
    if name not in MODELS:
        raise ValueError(f"unknown backbone {name!r}; valid choices: {', '.join(MODELS)}, or timm/<resnet name>")
    return create_model(name, attention=attention, num_classes=num_classes, **kwargs)


@functools.cache
def parameter_free(op_set: str, name: str) -> bool:
    """Whether a candidate has no learned parameters (the ops DARTS tends to collapse onto).

    Built on the meta device, on first use: no memory, no draw from the global random stream.
    """
    with torch.device("meta"):
        return not any(True for _ in OPS[op_set][name](8).parameters())
