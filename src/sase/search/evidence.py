"""What the α gradients say about each edge: which candidate the validation loss prefers, and by how much.

With softmax weights p = softmax(α) on an edge, the α gradient of the validation loss L is
    ∂L/∂α_k = p_k (d_k - Σ_j p_j d_j),   d = ∂L/∂p,
so g_k / p_k = d_k - p·d, and for two candidates k and j
    g_k / p_k - g_j / p_j = d_k - d_j:
the first-order change of L when the edge's weight moves wholly from candidate j to candidate k. Every
α step measures it on a fresh validation batch, so its mean over the steps of an epoch, and that
mean's standard error, come free with the search (over the last `WINDOW_STEPS` or more α steps).

This is what tells an edge whose candidates are interchangeable from one that merely has not had
enough steps. α leads by a margin only where the loss keeps preferring one candidate; where the
candidates do equally well, no budget moves α, and an α-margin verdict calls the edge undecided
however long the search runs. `EdgeEvidence.indifferent` makes the opposite claim, and tests it: an
edge is *indifferent* when, at 95% confidence (two one-sided t tests per candidate, Bonferroni over
the candidates; Schuirmann, 1987), switching it from the chosen candidate to any other changes the
validation loss by less than `INDIFFERENCE_SHARE` of what the same switch does on the edge whose
choice matters most (the largest spread of the mean effects among the edges of its α group). A
share makes the claim relative to what the search can measure at all: on a supernet that has learned
little, every effect is small and noisy, the intervals are wide against that scale, and no edge is
called indifferent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

INDIFFERENCE_SHARE = 0.1  # an indifferent edge's effect is under a tenth of the most decisive edge's
CONFIDENCE = 0.95
MIN_STEPS = 10  # fewer α steps in the window than this: no edge is called indifferent
# The search weighs the α steps of its last epochs, as many whole epochs as hold this many steps (the supernet
# near its final state, with enough batches for an interval); earlier epochs likewise, for history.csv.
WINDOW_STEPS = 50


@dataclass(frozen=True)
class EdgeEffect:
    """One edge's switch effects, relative to the chosen candidate, in units of validation loss."""

    effects: tuple[float, ...]  # mean of d_k - d_chosen per candidate (0 for the chosen one); < 0: k does better
    bounds: tuple[float, ...]  # per candidate, |effect| plus its confidence half-width (Bonferroni-corrected)
    tolerance: float  # INDIFFERENCE_SHARE of the group's largest spread
    steps: int

    @property
    def indifferent(self) -> bool:
        return self.steps >= MIN_STEPS and self.tolerance > 0 and max(self.bounds) < self.tolerance


class EdgeEvidence:
    """Running sums over α steps of each candidate's first-order effect on the validation loss.

    The sums are float64 tensors on α's device, updated in place by `add`, so a step that adds to
    them can be recorded in a CUDA graph and replayed; `reset` (in place) starts a new window, which
    the search does where `starts_window` says.
    """

    def __init__(self, alpha: Tensor) -> None:
        shape, device = alpha.shape, alpha.device  # (groups, edges, K)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros((*shape, shape[-1]), dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, grad: Tensor, alpha: Tensor) -> None:
        """One α step's gradient of the validation loss, taken at α (before the step moves it)."""
        p = torch.softmax(alpha.detach().double(), -1)
        d = grad.detach().double() / p  # d_k - p·d: only differences between candidates are used
        self.count += 1
        self.sum += d
        self.sum_outer += d.unsqueeze(-1) * d.unsqueeze(-2)

    def reset(self) -> None:
        for t in (self.count, self.sum, self.sum_outer):
            t.zero_()

    def effects(self, chosen: Tensor) -> list[list[EdgeEffect]]:
        """Per group and edge, the effect of switching from `chosen` (groups, edges) to each other candidate."""
        from scipy import stats  # here, not above: it takes a second to import, and every sase command imports this

        n = int(self.count.item())
        mean, second = (self.sum / max(n, 1)).cpu(), (self.sum_outer / max(n, 1)).cpu()
        spread = mean.amax(-1) - mean.amin(-1)  # (groups, edges)
        k = mean.shape[-1]
        # two one-sided tests at (1 - CONFIDENCE) / (K - 1) each: the (1 - 2a) interval within ±tolerance
        t = float(stats.t.ppf(1 - (1 - CONFIDENCE) / (k - 1), n - 1)) if n > 1 else float("inf")
        out = []
        for g in range(mean.shape[0]):
            tolerance = INDIFFERENCE_SHARE * float(spread[g].max())
            row = []
            for e in range(mean.shape[1]):
                c = int(chosen[g, e])
                diff = mean[g, e] - mean[g, e, c]  # (K,) mean of d_k - d_c
                # variance of d_k - d_c over the steps, from the running second moments (sample variance)
                var = second[g, e].diagonal() + second[g, e, c, c] - 2 * second[g, e, :, c] - diff ** 2
                se = (var.clamp_min(0) / max(n - 1, 1)).sqrt()  # n / (n - 1) · var, over n
                bounds = diff.abs() + t * se
                bounds[c] = 0.0
                row.append(EdgeEffect(tuple(diff.tolist()), tuple(bounds.tolist()), tolerance, n))
            out.append(row)
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {"count": self.count.cpu(), "sum": self.sum.cpu(), "sum_outer": self.sum_outer.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in ("count", "sum", "sum_outer"):
            getattr(self, name).copy_(state[name])


def starts_window(epoch: int, warmup_epochs: int, epochs: int, steps_per_epoch: int) -> bool:
    """Whether the evidence starts afresh at `epoch`: windows of whole epochs holding at least WINDOW_STEPS α
    steps each, counted back from the last epoch (the first α epoch, after the warm-up, starts one too)."""
    span = math.ceil(WINDOW_STEPS / max(steps_per_epoch, 1))
    return epoch == warmup_epochs or (epochs - epoch) % span == 0


def saved_evidence(checkpoint: dict) -> EdgeEvidence | None:
    """The evidence of a search checkpoint's latest epoch (None in one written before it was kept)."""
    saved = checkpoint.get("architect", {}).get("evidence")
    if saved is None:
        return None
    evidence = EdgeEvidence(checkpoint["model"]["alpha"])
    evidence.load_state_dict(saved)
    return evidence


__all__ = ["CONFIDENCE", "INDIFFERENCE_SHARE", "MIN_STEPS", "WINDOW_STEPS", "EdgeEffect", "EdgeEvidence", "saved_evidence",
           "starts_window"]
