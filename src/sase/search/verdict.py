"""Whether a search decided: per edge, the top candidate's probability, its lead, and what the gradients say.

DARTS derives a genotype by the argmax of α on every edge, and an argmax always exists: a search
whose α never moved from its random initialisation still "finds" a block, the argmax of that noise.
The verdict separates the two. Each edge of each α group is in one of three states:

- *decided*: softmax(α_edge) puts its top candidate at least `margin` (an absolute probability,
  default 0.10) above the runner-up. With seven candidates a uniform edge sits at 1/7 ≈ 0.143 each;
  a lead of 0.10 is then, e.g., 0.25 against 0.15: a preference no initial noise (1e-3·N(0, 1))
  produces, and far short of the near one-hot α of a long search.
- *indifferent*: no such lead, but the α gradients of the last 50 or more steps show, at 95% confidence, that
  switching the edge to any other candidate changes the validation loss by less than a tenth of what
  the choice on the group's most decisive edge does (`sase.search.evidence`): its candidates are
  interchangeable as far as the search can measure, so the argmax is as good a pick as any.
- *undecided*: neither; the genotype there is a pick among candidates the search could not tell apart.

A search is decided when no edge is undecided.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..cell import EDGES
from ..ops import OPS
from .evidence import INDIFFERENCE_SHARE, EdgeEvidence

DECIDED_MARGIN = 0.10  # lead of the top candidate over the runner-up, in probability, for an edge to count
VERDICT = "verdict.json"  # written beside genotype.json


@dataclass(frozen=True)
class EdgeVerdict:
    """One edge of one α group: its top two candidates and their probabilities."""

    group: int
    edge: str
    top: str
    top_prob: float
    runner_up: str
    runner_up_prob: float
    state: str = "undecided"  # decided | indifferent | undecided (see the module's doc)
    # the largest switch effect's 95% bound and the tolerance it was held to, in validation loss (None: no evidence)
    effect_bound: float | None = None
    tolerance: float | None = None

    @property
    def margin(self) -> float:
        return self.top_prob - self.runner_up_prob


@dataclass(frozen=True)
class Verdict:
    """The verdict on α: every edge's top two candidates and whether each leads by `margin`."""

    edges: tuple[EdgeVerdict, ...]
    margin: float = DECIDED_MARGIN
    tested: bool = True  # whether the indifference test had the gradients' evidence (not with --sampling)

    @property
    def undecided(self) -> list[EdgeVerdict]:
        return [e for e in self.edges if e.state == "undecided"]

    @property
    def indifferent(self) -> list[EdgeVerdict]:
        return [e for e in self.edges if e.state == "indifferent"]

    @property
    def decided(self) -> bool:
        return not self.undecided

    @property
    def min_margin(self) -> float:
        return min(e.margin for e in self.edges)

    def summary(self) -> str:
        """One line: decided or not, and the weakest edge."""
        weakest = min(self.undecided or self.edges, key=lambda e: e.margin)
        state = "decided" if self.decided else f"UNDECIDED on {len(self.undecided)} of {len(self.edges)} edges"
        if self.indifferent:
            state += f" ({len(self.indifferent)} indifferent: {', '.join(_name(e) for e in self.indifferent)})"
        indifferent = (f"indifferent when the gradients show its choice changes the validation loss by under "
                       f"{INDIFFERENCE_SHARE:.0%} of the most decisive edge's" if self.tested else
                       "no indifference test: a sampled search does not measure the mixture's gradients")
        return (f"α {state} (an edge is decided when its top candidate leads the runner-up by at least "
                f"{self.margin:.2f}, {indifferent}); weakest "
                f"{'undecided ' if self.undecided else ''}edge {_name(weakest)}: {weakest.top} "
                f"{weakest.top_prob:.3f} vs {weakest.runner_up} {weakest.runner_up_prob:.3f}")

    def table(self) -> str:
        """One line per edge: its top candidate and probability, its lead, its state and, when α gave no lead,
        the 95% bound of its switch effects against the tolerance."""
        lines = []
        for e in self.edges:
            line = f"  {_name(e):26s} {e.top:10s} {e.top_prob:.3f}  lead {e.margin:.3f}  {e.state}"
            if e.state != "decided" and e.effect_bound is not None:
                line += f" (switch effect <= {e.effect_bound:.2g} {'<' if e.state == 'indifferent' else '>='} " \
                        f"tolerance {e.tolerance:.2g})"
            lines.append(line)
        return "\n".join(lines)

    def warning(self) -> str:
        """What an undecided search means and what to do about it (empty when decided)."""
        if self.decided:
            return ""
        names = ", ".join(sorted({e.edge for e in self.undecided}))
        return (f"warning: the search ended undecided on {names}: softmax(α) there is still close to uniform, "
                "so the genotype on those edges is the argmax of noise, not a searched choice. Search longer "
                "(--epochs), give α a larger learning rate (--arch-lr), or check that the supernet learns "
                "(val_acc in history.csv).")

    def to_dict(self) -> dict[str, Any]:
        return {"decided": self.decided, "margin_threshold": self.margin, "min_margin": round(self.min_margin, 6),
                "indifference_share": INDIFFERENCE_SHARE, "indifference_tested": self.tested,
                "undecided_edges": [_name(e) for e in self.undecided],
                "indifferent_edges": [_name(e) for e in self.indifferent],
                "edges": [{**asdict(e), "margin": round(e.margin, 6)} for e in self.edges]}

    def write(self, folder: Path) -> Path:
        path = Path(folder) / VERDICT
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def judge(alpha: Tensor, margin: float = DECIDED_MARGIN, evidence: EdgeEvidence | None = None) -> Verdict:
    """The verdict on α of shape (groups, 6 edges, K candidates), with the α gradients' `evidence` if kept."""
    probs = torch.softmax(alpha.detach().double(), -1)
    effects = evidence.effects(probs.argmax(-1)) if evidence is not None else None
    edges = []
    for g, group in enumerate(probs):
        for e, (edge, p) in enumerate(zip(EDGES, group)):
            names = list(OPS[edge.op_set])
            top2 = torch.topk(p, 2)
            (i, j), (pi, pj) = top2.indices.tolist(), top2.values.tolist()
            effect = effects[g][e] if effects is not None else None
            state = "decided" if pi - pj >= margin else \
                "indifferent" if effect is not None and effect.indifferent else "undecided"
            measured = effect is not None and effect.steps >= 2  # an interval needs two steps
            edges.append(EdgeVerdict(g, edge.name, names[i], round(pi, 6), names[j], round(pj, 6), state,
                                     round(max(effect.bounds), 8) if measured else None,
                                     round(effect.tolerance, 8) if measured else None))
    return Verdict(tuple(edges), margin, tested=evidence is not None)


def _name(e: EdgeVerdict) -> str:
    return e.edge if e.group == 0 else f"g{e.group}/{e.edge}"


def verdict_columns(verdict: Verdict, groups: int) -> dict[str, Any]:
    """Flat columns for history.csv: top probability and margin per edge, then the verdict."""
    row: dict[str, Any] = {}
    for e in verdict.edges:
        prefix = f"g{e.group}/{e.edge}" if groups > 1 else e.edge
        row[f"top/{prefix}"] = e.top_prob
        row[f"margin/{prefix}"] = round(e.margin, 6)
        row[f"state/{prefix}"] = e.state
    row["decided"] = verdict.decided
    return row


def read_verdict(folder: str | Path) -> dict[str, Any] | None:
    """The verdict.json of a search folder, or None when there is none."""
    path = Path(folder) / VERDICT
    return json.loads(path.read_text()) if path.is_file() else None


__all__ = ["DECIDED_MARGIN", "VERDICT", "EdgeVerdict", "Verdict", "judge", "read_verdict", "verdict_columns"]
