"""SASEBlock: the attention block a genotype describes, one op per edge of the cell."""
from __future__ import annotations

import torch

from .cell import EDGES, Cell
from .genotype import Genotype, GenotypeSpec
from .ops import create_op


class SASEBlock(Cell):
    """A fixed SASE attention block for a map of `channels` channels; drops in wherever an SE block goes.

    `genotype` is a `Genotype`, a preset name ("paper", "sase"), JSON text or a JSON file path.
    `device` / `dtype` are accepted as timm's `attn_layer` hook passes them.
    """

    def __init__(
        self,
        channels: int,
        genotype: GenotypeSpec = "paper",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.genotype = Genotype.resolve(genotype)
        super().__init__([create_op(e.op_set, op, channels) for e, op in zip(EDGES, self.genotype.ops)],
                         affine=True)
        self.channels = channels
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, genotype={self.genotype.to_json(indent=None)}"
