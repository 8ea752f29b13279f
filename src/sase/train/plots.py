"""The comparison chart, and the K / M / G numbers of its table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def si(n: float) -> str:
    """275378 -> '275.4 K', 4.1e9 -> '4.10 G': parameters and MACs the way papers print them."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{2 if unit == 'G' else 1}f} {unit}"
    return f"{n:.0f}"


def plot_comparison(labels: Sequence[str], means: Sequence[float], errors: Sequence[Optional[float]], path: Path,
                    title: str, level: float = 0.95) -> None:
    """Bars of mean top-1 (%) with error bars of ± `errors` (the half-widths of each mean's confidence
    interval; None where one seed gives none); the axis is cut above 0 to show the differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spread = [e or 0.0 for e in errors]
    lowest = min(m - e for m, e in zip(means, spread))
    highest = max(m + e for m, e in zip(means, spread))
    margin = max((highest - lowest) * 0.5, 0.5)
    bottom = max(0.0, lowest - margin)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2.5, 4.0))
    bars = ax.bar(range(len(labels)), [m - bottom for m in means], bottom=bottom, yerr=spread, capsize=5,
                  color="#4c72b0", edgecolor="black", linewidth=0.6)
    for bar, m, e in zip(bars, means, spread):
        ax.text(bar.get_x() + bar.get_width() / 2, m + e + margin * 0.05, f"{m:.2f}", ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylim(bottom, highest + margin)
    ax.set_ylabel("top-1 (%)" + (f", axis from {bottom:.1f}" if bottom > 0 else ""))
    what = f"mean and {level:.0%} CI over seeds" if any(e is not None for e in errors) else "one seed, no interval"
    ax.set_title(f"{title}: {what}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
