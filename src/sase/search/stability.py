"""Stability over seeds: one search per seed, then how often each edge's choice recurs and a consensus.

DARTS is known to find a different cell from each seed (Yang et al., ICLR 2020; Li & Talwalkar,
UAI 2019), so a single search says little on its own. `run_seeds` runs (or resumes, or reads) one
search per seed in OUT/seed-<k>/ and `write_stability` writes the report to OUT:

- `stability.json` / `stability.md`: per edge the modal op and how many seeds chose it; every
  genotype found and how often; which seeds decided (see `sase.search.verdict`);
- `genotype.json`: the consensus genotype, a per-edge vote, ties broken by the mean probability
  softmax(α) gave the tied ops over the seeds; `verdict.json` beside it;
- `stability.png`: per edge, the share of seeds choosing each candidate and its mean probability.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..cell import EDGES
from ..genotype import Genotype
from ..ops import OPS
from .config import SearchConfig
from .finished import ensure_search
from .loop import SearchResult


@dataclass(frozen=True)
class Stability:
    """The outcome of one search per seed and what they agree on."""

    seeds: tuple[int, ...]
    genotypes: tuple[Genotype, ...]  # the genotype each seed's search derived
    probs: np.ndarray  # (seeds, 6 edges, K): softmax(α) at the end of each search, averaged over α groups
    decided: tuple[bool, ...]  # each search's verdict

    def edge_counts(self) -> list[Counter]:
        """Per edge, how many seeds chose each op."""
        return [Counter(g.ops[e] for g in self.genotypes) for e in range(len(EDGES))]

    def consensus(self) -> Genotype:
        """Per-edge vote; among ops with the most votes, the one with the highest mean probability."""
        mean = self.probs.mean(0)  # (6, K)
        chosen = []
        for e, (edge, counts) in enumerate(zip(EDGES, self.edge_counts())):
            names = list(OPS[edge.op_set])
            top = max(counts.values())
            tied = [op for op, c in counts.items() if c == top]
            chosen.append(max(tied, key=lambda op: (mean[e, names.index(op)], -names.index(op))))
        return Genotype(tuple(chosen))

    def to_dict(self) -> dict[str, Any]:
        n = len(self.seeds)
        consensus = self.consensus()
        edges = []
        for e, (edge, counts) in enumerate(zip(EDGES, self.edge_counts())):
            modal, votes = counts.most_common(1)[0]
            names = list(OPS[edge.op_set])
            edges.append({"edge": edge.name, "modal": modal, "modal_share": votes / n, "consensus": consensus.ops[e],
                          "votes": dict(counts.most_common()),
                          "mean_prob": {op: round(float(self.probs[:, e, k].mean()), 6)
                                        for k, op in enumerate(names)}})
        found = Counter(g.to_json(indent=None) for g in self.genotypes)
        return {
            "seeds": list(self.seeds), "decided": dict(zip(map(str, self.seeds), self.decided)),
            "all_decided": all(self.decided), "consensus": consensus.to_dict(),
            "agreement": sum(e["modal_share"] for e in edges) / len(edges),
            "edges": edges,
            "genotypes": [{"genotype": json.loads(g), "count": c,
                           "seeds": [s for s, x in zip(self.seeds, self.genotypes) if x.to_json(indent=None) == g]}
                          for g, c in found.most_common()],
        }


def aggregate(results: Sequence[tuple[int, Genotype, np.ndarray, bool]]) -> Stability:
    """A Stability from (seed, genotype, softmax(α) of shape (6, K), decided) per search."""
    if not results:
        raise ValueError("no search to aggregate")
    seeds, genotypes, probs, decided = zip(*results)
    return Stability(tuple(seeds), tuple(genotypes), np.stack([np.asarray(p, dtype=float) for p in probs]),
                     tuple(bool(d) for d in decided))


def run_seeds(config: SearchConfig, seeds: Sequence[int], progress: bool = True) -> tuple[Stability, list[Path]]:
    """One search per seed in config.out/seed-<k>: read if finished, resumed if started, else run."""
    if not seeds:
        raise ValueError("no seed given; e.g. --seeds 0,1,2")
    out = Path(config.out)
    results, folders = [], []
    for i, seed in enumerate(seeds):
        folder = out / f"seed-{seed}"
        if progress:
            print(f"[{i + 1}/{len(seeds)}] search seed {seed} -> {folder}", flush=True)
        result = ensure_search(replace(config, seed=seed, out=str(folder)), progress=progress)
        results.append((seed, result.genotype, _mean_probs(result), result.verdict.decided))
        folders.append(folder)
    return aggregate(results), folders


def _mean_probs(result: SearchResult) -> np.ndarray:
    """softmax(α) of a search's final epoch, averaged over its α groups: (6, K)."""
    return np.asarray(result.probs, dtype=float).mean(0)


def write_stability(stability: Stability, out: str | Path) -> dict[str, Any]:
    """stability.json, stability.md, stability.png, and the consensus as genotype.json and verdict.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = stability.to_dict()
    (out / "stability.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "stability.md").write_text(stability_markdown(report))
    stability.consensus().to_json(out / "genotype.json")
    # the consensus counts as decided when every seed's search decided (its own α would not say)
    (out / "verdict.json").write_text(json.dumps({
        "decided": report["all_decided"], "source": "consensus of the searches of seeds "
        + ", ".join(map(str, stability.seeds)), "decided_per_seed": report["decided"],
        "agreement": round(report["agreement"], 4)}, indent=2) + "\n")
    plot_stability(stability, out / "stability.png")
    return report


def stability_markdown(report: dict[str, Any]) -> str:
    n = len(report["seeds"])
    lines = [f"# Search stability over {n} seeds ({', '.join(map(str, report['seeds']))})", "",
             "| edge | consensus | modal op chosen by | votes |", "|---|---|---|---|"]
    for e in report["edges"]:
        votes = ", ".join(f"{op} {c}" for op, c in e["votes"].items())
        lines.append(f"| {e['edge']} | {e['consensus']} | {round(e['modal_share'] * n)}/{n} seeds | {votes} |")
    lines += ["", f"Mean agreement with the modal op: {100 * report['agreement']:.0f}% of seeds per edge. "
              f"Searches decided: {sum(report['decided'].values())}/{n}"
              + ("." if report["all_decided"] else " (an undecided search's choices are close to random picks)."),
              "", "| genotype | found by seeds |", "|---|---|"]
    for g in report["genotypes"]:
        ops = ", ".join(g["genotype"].values())
        lines.append(f"| {ops} | {', '.join(map(str, g['seeds']))} |")
    return "\n".join(lines) + "\n"


def plot_stability(stability: Stability, path: Path) -> None:
    """Per edge: the share of seeds choosing each candidate (bars) and its mean softmax(α) (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, consensus, n = stability.edge_counts(), stability.consensus(), len(stability.seeds)
    fig, axes = plt.subplots(2, 3, figsize=(13.8, 6.4), squeeze=False, layout="constrained")
    for e, (ax, edge) in enumerate(zip(axes.flat, EDGES)):
        names = list(OPS[edge.op_set])
        share = [counts[e].get(op, 0) / n for op in names]
        colors = ["tab:orange" if op == consensus.ops[e] else "tab:blue" for op in names]
        ax.bar(range(len(names)), share, color=colors, label="share of seeds")
        ax.plot(range(len(names)), stability.probs[:, e, :].mean(0), "ko", ms=4, label="mean softmax(α)")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{e}: {edge.name}", fontsize=9)
        if e == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"choices over {n} search seeds (orange: consensus)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["Stability", "aggregate", "plot_stability", "run_seeds", "stability_markdown", "write_stability"]
