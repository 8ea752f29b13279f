"""What a search shows: per-epoch statistics of α, the CSV log, and the α plots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..cell import EDGES
from ..ops import OPS
from .supernet import Supernet, derive_genotype, parameter_free


def alpha_summary(model: Supernet) -> dict[str, Any]:
    """softmax(α) per edge, its entropy, and the share of parameter-free winners, flat for the CSV."""
    probs = torch.softmax(model.alpha.detach(), -1)  # (G, 6, K)
    row: dict[str, Any] = {}
    winners_free = []
    for g, group in enumerate(probs):
        genotype = derive_genotype(model.alpha.detach()[g])
        for e, (edge, p) in enumerate(zip(EDGES, group)):
            prefix = f"g{g}/{edge.name}" if len(probs) > 1 else edge.name
            row[f"entropy/{prefix}"] = round(float(-(p * p.clamp_min(1e-12).log()).sum()), 6)
            for name, value in zip(OPS[edge.op_set], p.tolist()):
                row[f"alpha/{prefix}/{name}"] = round(value, 6)
            winners_free.append(parameter_free(edge.op_set, genotype.ops[e]))
    row["param_free_share"] = round(sum(winners_free) / len(winners_free), 4)
    return row


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def plot_alpha_heatmap(alpha: Tensor, path: Path, widths: Sequence[int] | None = None) -> None:
    """softmax(α) per edge as a heatmap, values written in: one panel per edge, one row per α group.

    The colour scale spans the smallest to the largest probability of the run (not 0 to 1), so the
    small preferences of an early search are visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = torch.softmax(alpha.detach().float().cpu(), -1).numpy()  # (G, 6, K)
    groups = len(probs)
    labels = [f"width {w}" for w in widths] if widths and len(widths) == groups else ["shared"]
    rows, cols = _grid(len(EDGES))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, (1.6 + 0.5 * groups) * rows), squeeze=False,
                             layout="constrained")
    lo, hi = float(probs.min()), float(probs.max())
    for ax, (e, edge) in zip(axes.flat, enumerate(EDGES)):
        im = ax.imshow(probs[:, e, :], vmin=lo, vmax=hi, cmap="viridis", aspect="auto")
        names = list(OPS[edge.op_set])
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(groups), labels[:groups], fontsize=8)
        ax.set_title(f"{e}: {edge.name}", fontsize=9)
        for g in range(groups):
            best = int(probs[g, e].argmax())
            for k, p in enumerate(probs[g, e]):
                ax.text(k, g, f"{100 * p:.2f}" + ("*" if k == best else ""), ha="center", va="center",
                        fontsize=7, color="black" if p > (lo + hi) / 2 else "white")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="softmax(α)")
    fig.suptitle("softmax(α) per edge at the end of the search, in % (* = chosen)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_alpha_evolution(rows: list[dict[str, str]], path: Path) -> None:
    """softmax(α) of every candidate over epochs, one panel per edge (group 0 when α is per stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    n_rows, cols = _grid(len(EDGES))
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.6 * cols, 3.2 * n_rows), squeeze=False, layout="constrained")
    for ax, edge in zip(axes.flat, EDGES):
        prefix = edge.name if f"alpha/{edge.name}/{next(iter(OPS[edge.op_set]))}" in rows[0] else f"g0/{edge.name}"
        for name in OPS[edge.op_set]:
            ax.plot(epochs, [float(r[f"alpha/{prefix}/{name}"]) for r in rows], marker="o", ms=3, label=name)
        ax.set_title(edge.name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("softmax(α) over the search")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hessian(rows: list[dict[str, str]], path: Path) -> None:
    """The dominant eigenvalue of the α Hessian of the validation loss over epochs.

    Zela et al. (ICLR 2020) found that its growth precedes DARTS' collapse onto parameter-free ops and
    a poor final architecture: a curve that keeps climbing is a reason to stop early or regularise.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    values = [float(r["hessian_eigenvalue"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    ax.plot(epochs, values, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("dominant eigenvalue")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Hessian of the validation loss w.r.t. α")
    fig.savefig(path, dpi=110)
    plt.close(fig)
