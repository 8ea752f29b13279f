"""Where attention blocks look: the spatial attention of every block of a trained network, captured and drawn.

Two kinds of block have a spatial attention map, a (B, 1, H, W) sigmoid in (0, 1):
- a SASE block (Wang et al., 2024) scales its input X by 1 + (s2 + s5) / 2, with s2 (B, C, 1, 1) its channel
  attention and s5 its spatial attention, the outputs of its channel and spatial excitation edges;
- a CBAM block (Woo et al., ECCV 2018) scales X by its channel attention c, then by its spatial attention s.
`attention_maps` runs a network on a batch and keeps both maps of every such block, read by forward hooks
(on the SASE cell's two excitation edges, on CBAM's two sigmoid gates), so the network itself is not
changed; `plot_attention_maps` draws each image with the spatial attention of every block over it. On
cluttered digits, where the dataset knows where the labelled digit lies, `digit_contrast` measures whether
the blocks attend to it: each block's mean spatial attention inside the digit's box against the mean over
the rest of the image (the clutter and noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timm.layers.cbam import CbamModule

from ..cell import EDGE_NAMES, Cell

CHANNEL_EDGE = EDGE_NAMES.index("channel_excitation")  # s2
SPATIAL_EDGE = EDGE_NAMES.index("spatial_excitation")  # s5


@dataclass(frozen=True)
class BlockMaps:
    """The attention of one block on a batch."""

    name: str  # the block's module name in the network, e.g. "layer1.0.attn"
    kind: str  # "sase" or "cbam"
    channel: Tensor  # (B, C): SASE's s2 (unbounded with `fc`), CBAM's sigmoid channel gate
    spatial: Tensor  # (B, 1, H, W) at the block's resolution, in (0, 1): SASE's s5, CBAM's spatial gate


@dataclass(frozen=True)
class Sources:
    """Where one block's two attentions are read: the modules whose outputs they are."""

    name: str
    kind: str
    channel: nn.Module
    spatial: nn.Module


def attention_blocks(model: nn.Module) -> list[Sources]:
    """The SASE and CBAM blocks of a network, in forward order; none: a one-line error."""
    blocks = []
    for name, m in model.named_modules():
        if isinstance(m, Cell):
            blocks.append(Sources(name, "sase", m.edges[CHANNEL_EDGE], m.edges[SPATIAL_EDGE]))
        elif isinstance(m, CbamModule):
            blocks.append(Sources(name, "cbam", m.channel.gate, m.spatial.gate))
    if not blocks:
        raise ValueError("the network has no SASE or CBAM block, so no spatial attention to show: train it with "
                         "--attention paper, sase, a genotype or cbam (SE, ECA and the other modules of the zoo "
                         "attend over channels only, or have no map of this kind)")
    return blocks


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor) -> tuple[list[BlockMaps], Tensor]:
    """Every SASE and CBAM block's channel and spatial attention on `images` (eval mode), and the logits."""
    blocks = attention_blocks(model)
    seen: dict[tuple[str, str], Tensor] = {}

    def keep(name: str, which: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            seen[(name, which)] = output.detach().float().clone()  # clone: nothing downstream may write into it
        return hook

    handles = [module.register_forward_hook(keep(b.name, which))
               for b in blocks for which, module in (("channel", b.channel), ("spatial", b.spatial))]
    was_training = model.training
    try:
        model.eval()
        logits = model(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    maps = [BlockMaps(b.name, b.kind, seen[(b.name, "channel")].flatten(1), seen[(b.name, "spatial")]) for b in blocks]
    return maps, logits


@dataclass(frozen=True)
class Contrast:
    """One block's spatial attention on the labelled digit's box and elsewhere, averaged over images."""

    name: str
    digit: float  # mean of the spatial attention (upsampled to the image) inside the digit's box
    elsewhere: float  # its mean over the rest of the image

    @property
    def ratio(self) -> float:
        return self.digit / self.elsewhere


def box_masks(corners: Tensor, side: int, size: int) -> Tensor:
    """(N, 1, size, size) bool: True inside each image's side x side box at corners (N, 2) = (top, left)."""
    ramp = torch.arange(size)
    rows = (ramp >= corners[:, :1]) & (ramp < corners[:, :1] + side)  # (N, size)
    cols = (ramp >= corners[:, 1:]) & (ramp < corners[:, 1:] + side)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


@torch.no_grad()
def digit_contrast(model: nn.Module, images: Tensor, corners: Tensor, side: int, batch_size: int = 256
                   ) -> list[Contrast]:
    """Each block's mean spatial attention inside the labelled digit's box and outside it, over `images`
    (N, 3, S, S) whose digits lie at `corners` (N, 2) in side x side boxes; maps upsampled as drawn."""
    device = next(model.parameters()).device
    size = images.shape[-1]
    sums: dict[str, list[float]] = {}
    inside_total = 0.0
    for start in range(0, len(images), batch_size):
        maps, _ = attention_maps(model, images[start:start + batch_size].to(device))
        mask = box_masks(corners[start:start + batch_size], side, size)
        inside_total += float(mask.sum())
        for block in maps:
            up = F.interpolate(block.spatial.cpu(), size=(size, size), mode="bilinear", align_corners=False)
            inside = float(up[mask].sum())
            acc = sums.setdefault(block.name, [0.0, 0.0])
            acc[0] += inside
            acc[1] += float(up.sum()) - inside  # the rest: no second masked copy of the maps
    outside_total = len(images) * size * size - inside_total
    return [Contrast(name, a / inside_total, b / outside_total) for name, (a, b) in sums.items()]


def displayable(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised (B, 3, H, W) images back to (B, H, W, 3) in [0, 1], for drawing."""
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images.cpu() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1)


def plot_attention_maps(pictures: Tensor, maps: list[BlockMaps], titles: Sequence[str], path: Path) -> None:
    """One row per image: the image, then the spatial attention of each block upsampled over it.

    `pictures` (B, H, W, 3) in [0, 1] (`displayable`). Every map shares one colour scale, 0 to 1, so blocks
    and images compare: a block that attends everywhere alike shows one flat colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, size = pictures.shape[0], pictures.shape[1:3]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.5 * cols, 1.6 * n + 0.6), squeeze=False, layout="constrained")
    grey = pictures.mean(-1)
    for i in range(n):
        axes[i, 0].imshow(pictures[i].numpy())
        axes[i, 0].set_title(titles[i], fontsize=7)
        for j, block in enumerate(maps, start=1):
            up = F.interpolate(block.spatial[i:i + 1].cpu(), size=tuple(size), mode="bilinear", align_corners=False)
            axes[i, j].imshow(grey[i].numpy(), cmap="gray")
            im = axes[i, j].imshow(up[0, 0].numpy(), cmap="inferno", vmin=0, vmax=1, alpha=0.65)
            if i == 0:
                axes[i, j].set_title(block.name.removesuffix(".attn"), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="spatial attention")
    how = {"sase": "SASE: the input scaled by 1 + (s2 + s5) / 2", "cbam": "CBAM: the input scaled by c, then by s"}
    kinds = "; ".join(how[k] for k in dict.fromkeys(m.kind for m in maps))
    fig.suptitle(f"spatial attention of each block ({kinds})", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["BlockMaps", "Contrast", "Sources", "attention_blocks", "attention_maps", "box_masks", "digit_contrast",
           "displayable", "plot_attention_maps"]
