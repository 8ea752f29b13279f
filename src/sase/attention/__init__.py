"""The attention zoo: every module the SASE block is compared with, behind one name each.

`create_attention(spec, channels)` builds any of them: a zoo name (`none`, `se`, `eca`, `cbam`,
`srm`, `gct`, `fca`, `gsop`, `simam`), `sase` / any genotype (preset name, JSON text, JSON path,
`Genotype`), per-stage genotypes (`StageGenotypes`, or the JSON text or path of a width -> genotype
object: the block gets the genotype of its width), or a callable taking `channels` (a class or
partial, as timm's `attn_layer`).
SE, ECA and CBAM are timm's own modules.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Callable, Union

from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from timm.layers.squeeze_excite import SEModule
from torch import nn

from ..block import SASEBlock
from ..genotype import Genotype, GenotypeError
from ..stage_genotypes import StageGenotypes, genotype_or_stages
from .fca import FCA
from .gct import GCT
from .gsop import GSoP
from .simam import SimAM
from .srm import SRM

AttentionFactory = Callable[..., nn.Module]
AttentionSpec = Union[str, Genotype, StageGenotypes, Mapping, AttentionFactory, None]


def _identity(channels: int, **_: Any) -> nn.Module:
    return nn.Identity()


ATTENTIONS: dict[str, AttentionFactory] = {
    "none": _identity,
    "se": partial(SEModule, rd_divisor=1),  # Hu et al.: C -> C/16, not rounded up to a multiple of 8
    "eca": EcaModule,
    "cbam": CbamModule,
    "srm": SRM,
    "gct": GCT,
    "fca": FCA,
    "gsop": GSoP,
    "simam": SimAM,
    "sase": partial(SASEBlock, genotype="paper"),
}


def create_attention(spec: AttentionSpec, channels: int, **kwargs: Any) -> nn.Module:
    """Build the attention module `spec` names for a map of `channels` channels.

    Extra keywords (e.g. timm's `device` / `dtype`) go to the module's constructor. Per-stage
    genotypes without an entry for `channels` raise a GenotypeError naming the widths they cover.
    """
    if spec is None:
        return nn.Identity()
    if isinstance(spec, str) and spec.lower() in ATTENTIONS:
        return ATTENTIONS[spec.lower()](channels, **kwargs)
    if callable(spec) and not isinstance(spec, (str, Genotype, Mapping)):
        return spec(channels, **kwargs)
    try:
        genotype = genotype_or_stages(spec)
    except GenotypeError as err:
        raise ValueError(f"unknown attention {spec!r}: not one of {', '.join(ATTENTIONS)} "
                         f"and not a genotype ({err})") from None
    if isinstance(genotype, StageGenotypes):
        genotype = genotype.genotype_for(channels)
    return SASEBlock(channels, genotype=genotype, **kwargs)


__all__ = ["ATTENTIONS", "AttentionSpec", "create_attention"]
