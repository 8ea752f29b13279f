"""Perturbation-based architecture selection (DARTS-PT: Wang et al., ICLR 2021, "Rethinking
Architecture Selection in Differentiable NAS"). Official code: github.com/ruocwang/darts-pt.

α's magnitude need not tell how much a candidate contributes to the supernet. DARTS-PT instead
asks, edge by edge: which candidate's removal hurts the supernet's validation accuracy most? That
candidate is chosen, the edge is discretised to it (weight 1, the rest 0), and the next edge is
scored on the partly discretised supernet. Edges are taken in a seeded random order; with one α
group per stage the groups take turns, one edge each, as the paper alternates normal and reduction
cells. (The paper's second stage, keeping two input edges per node, has no counterpart here: the
cell's wiring is fixed.)

As in the paper's code, removing candidate k multiplies its softmax weight by 0 and leaves the
others' weights as they were (they then sum to less than 1). `renormalize=True` instead rescales
the rest to sum to 1, which is what α_k = -inf would give.

Two departures from the paper, both to keep selection a cheap, pure evaluation of the trained
supernet: (1) no fine-tuning of the supernet's weights between decisions (the paper trains the
supernet further after each); (2) BatchNorm uses its running statistics (eval mode) unless
`batch_statistics=True`, which follows the paper's code (training mode: batch statistics, here
with the running statistics written to copies). Ties in accuracy, which the paper breaks by
candidate order, are broken by the higher validation loss. Nothing of the model is modified:
parameters, buffers and train/eval flags stay as they were.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..cell import EDGES
from ..genotype import Genotype
from ..ops import OPS
from .hessian import module_mode
from .supernet import Supernet, edge_weights_mode

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SelectionResult:
    """What perturbation-based selection chose, and the scores it chose by."""

    genotypes: list[Genotype]  # one per α group
    accuracy: Tensor  # (groups, 6, K) validation accuracy with that candidate removed, when its edge was decided
    loss: Tensor  # (groups, 6, K) validation loss likewise
    order: list[tuple[int, int]]  # (group, edge) in the order the edges were decided
    base_accuracy: float  # the supernet's as trained, before any edge was decided
    final_accuracy: float  # with every edge decided: the derived network inside the supernet, not fine-tuned

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: per group, its genotype and per edge the score of each removal."""
        step = {ge: i for i, ge in enumerate(self.order)}
        groups = []
        for g, genotype in enumerate(self.genotypes):
            edges = {}
            for e, edge in enumerate(EDGES):
                removed = {op: {"accuracy": float(self.accuracy[g, e, k]), "loss": float(self.loss[g, e, k])}
                           for k, op in enumerate(OPS[edge.op_set])}
                edges[edge.name] = {"chosen": genotype.ops[e], "decided_at": step[(g, e)], "removed": removed}
            groups.append({"genotype": genotype.to_dict(), "edges": edges})
        return {"base_accuracy": self.base_accuracy, "final_accuracy": self.final_accuracy, "groups": groups}


def perturbation_select(
    model: Supernet,
    batches: Sequence[Batch],
    seed: int = 0,
    renormalize: bool = False,
    batch_statistics: bool = False,
    loss_fn: LossFn = F.cross_entropy,
) -> SelectionResult:
    """Decide every edge of every α group by the accuracy its candidates' removal leaves (DARTS-PT).

    Costs groups · 6 · K + 2 passes over `batches`, forward only, without gradients (K = 7).
    """
    if not batches:
        raise ValueError("perturbation selection needs at least one validation batch")
    groups, num_edges, k = model.alpha.shape
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(num_edges, generator=generator).tolist() for _ in range(groups)]
    order = [(g, orders[g][i]) for i in range(num_edges) for g in range(groups)]
    weights = F.softmax(model.alpha.detach(), dim=-1)  # (groups, 6, K); decided edges become one-hot
    accuracy = torch.zeros(groups, num_edges, k, dtype=torch.float64)
    loss = torch.zeros_like(accuracy)
    chosen = torch.zeros(groups, num_edges, dtype=torch.long)

    def score(w: Tensor) -> tuple[float, float]:
        return _evaluate(model, w, batches, batch_statistics, loss_fn)

    with module_mode(model, batch_statistics), torch.no_grad():
        base_accuracy = score(weights)[0]
        for g, e in order:
            for c in range(k):
                accuracy[g, e, c], loss[g, e, c] = score(_remove(weights, g, e, c, renormalize))
            # the removal that leaves the lowest accuracy; among equals, the highest loss
            best = min(range(k), key=lambda c: (float(accuracy[g, e, c]), -float(loss[g, e, c])))
            chosen[g, e] = best
            weights[g, e] = F.one_hot(torch.tensor(best), k).to(weights)
        final_accuracy = score(weights)[0]
    genotypes = [Genotype(tuple(list(OPS[edge.op_set])[int(i)] for edge, i in zip(EDGES, row))) for row in chosen]
    return SelectionResult(genotypes, accuracy, loss, order, base_accuracy, final_accuracy)


def _remove(weights: Tensor, group: int, edge: int, candidate: int, renormalize: bool) -> Tensor:
    """The edge weights with one candidate's set to 0; the rest kept, or rescaled to sum to 1."""
    w = weights.clone()
    w[group, edge, candidate] = 0
    if renormalize:
        # all of an edge's weight on the removed candidate (the rest underflowed) leaves the edge at 0
        w[group, edge] /= w[group, edge].sum().clamp_min(torch.finfo(w.dtype).tiny)
    return w


def _evaluate(model: Supernet, edge_weights: Tensor, batches: Sequence[Batch], batch_statistics: bool,
              loss_fn: LossFn) -> tuple[float, float]:
    """(accuracy, mean loss) over every sample of `batches`, the mixed ops weighted by `edge_weights`."""
    correct, total_loss, seen = 0, 0.0, 0
    device = model.alpha.device
    with edge_weights_mode(model):  # the mixed ops take `edge_weights` as they stand, not their softmax
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            # running statistics, when batch statistics are used, go to copies, as in the architect
            buffers = {n: b.clone() for n, b in model.named_buffers()} if batch_statistics else {}
            logits = functional_call(model, ({"alpha": edge_weights}, buffers), (x,))
            correct += int((logits.argmax(1) == y).sum())
            total_loss += float(loss_fn(logits, y)) * len(y)
            seen += len(y)
    return correct / seen, total_loss / seen


__all__ = ["SelectionResult", "perturbation_select"]
