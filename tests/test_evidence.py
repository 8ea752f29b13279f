"""The α gradients' evidence: the switch effects against their definition, the test against scipy, the states."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn
from torch.func import functional_call

from sase.search import Architect, Supernet, judge
from sase.search.evidence import CONFIDENCE, INDIFFERENCE_SHARE, MIN_STEPS, WINDOW_STEPS, EdgeEvidence, starts_window
from sase.search.supernet import edge_weights_mode

K = 7


class TinyNet(nn.Module):
    def __init__(self, attention, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = attention(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.attn(torch.tanh(self.conv(x))).mean((2, 3)))


def test_gradient_over_probability_differences_are_the_loss_slopes_of_the_edge_weights():
    """g_k / p_k - g_j / p_j = ∂L/∂w_k - ∂L/∂w_j, with w the edge weights given directly (no softmax)."""
    torch.manual_seed(0)
    model = Supernet(TinyNet, num_classes=3).double()
    with torch.no_grad():
        model.alpha.normal_(0, 0.7)  # far from uniform: p differs between candidates
    x, y = torch.randn(6, 3, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    architect = Architect(model, torch.optim.SGD(model.weight_parameters(), lr=0.1), order=1)
    g, _ = architect.hypergradient((x, y), (x, y))
    weights = torch.softmax(model.alpha.detach(), -1).requires_grad_()
    with edge_weights_mode(model):
        loss = F.cross_entropy(functional_call(model, {"alpha": weights}, (x,)), y)
    slope = torch.autograd.grad(loss, weights)[0]  # ∂L/∂w, the independent statement
    d = g / torch.softmax(model.alpha.detach(), -1)
    torch.testing.assert_close(d - d[..., :1], slope - slope[..., :1], rtol=1e-9, atol=1e-12)


def fed(steps: np.ndarray, probs: np.ndarray) -> EdgeEvidence:
    """Evidence fed per-step loss slopes d (steps, groups, edges, K) at fixed α = log(probs)."""
    alpha = torch.tensor(np.log(probs))
    evidence = EdgeEvidence(alpha)
    for d in steps:
        evidence.add(torch.tensor(probs * (d - (probs * d).sum(-1, keepdims=True))), alpha)  # the α gradient
    return evidence


def test_effects_and_their_bounds_match_scipy_paired_intervals():
    rng = np.random.default_rng(0)
    n = 30
    steps = rng.normal(0, 1, (n, 1, 6, K)) + rng.normal(0, 0.3, (1, 1, 6, K))  # shared offsets: true effects
    steps += rng.normal(0, 2, (n, 1, 6, 1))  # noise common to every candidate of a batch: pairing removes it
    probs = np.full((1, 6, K), 1 / K)
    chosen = torch.tensor(rng.integers(0, K, (1, 6)))
    effects = fed(steps, probs).effects(chosen)
    means = steps.mean(0)
    tolerance = INDIFFERENCE_SHARE * (means.max(-1) - means.min(-1)).max()
    level = 1 - 2 * (1 - CONFIDENCE) / (K - 1)  # the two one-sided tests' interval, Bonferroni over K - 1
    for e in range(6):
        c = int(chosen[0, e])
        effect = effects[0][e]
        assert effect.steps == n and effect.tolerance == pytest.approx(tolerance)
        for k in range(K):
            diff = steps[:, 0, e, k] - steps[:, 0, e, c]
            assert effect.effects[k] == pytest.approx(diff.mean(), abs=1e-9)
            if k == c:
                assert effect.bounds[k] == 0
                continue
            low, high = stats.ttest_1samp(diff, 0).confidence_interval(level)
            assert effect.bounds[k] == pytest.approx(max(abs(low), abs(high)), rel=1e-7)


def test_an_edge_whose_candidates_do_the_same_is_indifferent_and_noise_alone_is_not():
    rng = np.random.default_rng(1)
    n, probs = 40, np.full((1, 6, K), 1 / K)
    steps = rng.normal(0, 0.01, (n, 1, 6, K))  # every edge: tiny noise, no effect...
    steps[:, 0, 0, 2] += 1.0  # ...but edge 0, where candidate 2 costs a whole unit of loss
    verdict = judge(torch.tensor(np.log(probs)), evidence=fed(steps, probs))
    states = [e.state for e in verdict.edges]
    assert states[0] == "undecided"  # its choice matters, and α has not moved: undecided
    assert states[1:] == ["indifferent"] * 5 and not verdict.decided
    assert verdict.edges[1].effect_bound < verdict.edges[1].tolerance == pytest.approx(0.1, rel=0.05)
    # the same noise, with nothing on any edge to measure it against: nothing is indifferent
    noise = rng.normal(0, 0.01, (n, 1, 6, K))
    assert [e.state for e in judge(torch.tensor(np.log(probs)), evidence=fed(noise, probs)).edges] == ["undecided"] * 6
    # too few steps to tell
    assert all(e.state == "undecided" for e in judge(torch.tensor(np.log(probs)),
                                                     evidence=fed(steps[:MIN_STEPS - 1], probs)).edges[1:])


def test_a_search_is_decided_when_every_edge_is_decided_or_indifferent():
    rng = np.random.default_rng(2)
    probs = np.full((1, 6, K), 1 / K)
    probs[0, 0] = [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]  # edge 0 decided by α: a lead of 0.3
    steps = rng.normal(0, 0.01, (40, 1, 6, K))
    steps[:, 0, 0, 1:] += 1.0  # on edge 0 the chosen candidate is a whole unit better: the reference scale
    verdict = judge(torch.tensor(np.log(probs)), evidence=fed(steps, probs))
    assert [e.state for e in verdict.edges] == ["decided"] + ["indifferent"] * 5
    assert verdict.decided and verdict.to_dict()["indifferent_edges"] == [e.edge for e in verdict.edges[1:]]
    assert "5 indifferent" in verdict.summary() and verdict.warning() == ""
    table = verdict.table().splitlines()
    assert len(table) == 6 and table[0].split()[-1] == "decided" and "indifferent (switch effect <=" in table[1]
    # without the evidence the same α is undecided on five edges
    assert len(judge(torch.tensor(np.log(probs))).undecided) == 5


def test_evidence_survives_a_state_dict_round_trip_and_resets_in_place():
    rng = np.random.default_rng(3)
    probs = np.full((2, 6, K), 1 / K)
    evidence = fed(rng.normal(0, 1, (12, 2, 6, K)), probs)
    again = EdgeEvidence(torch.zeros(2, 6, K))
    again.load_state_dict(evidence.state_dict())
    chosen = torch.zeros(2, 6, dtype=torch.long)
    assert again.effects(chosen) == evidence.effects(chosen)
    sums = evidence.sum
    evidence.reset()
    assert evidence.sum is sums and float(evidence.count) == 0 and not math.isnan(sums.sum())


@pytest.mark.parametrize("steps, starts", [
    (46, [2]),  # the pipeline's search: two α epochs of 46 steps make one window of 92
    (11, list(range(15, 60, 5))),  # 60 epochs, 15 of warm-up: windows of 5 epochs, 55 steps
    (60, [2, 3]),  # an epoch holds 50 steps: every epoch is a window
])
def test_windows_are_whole_epochs_of_at_least_50_steps_counted_back_from_the_end(steps, starts):
    warmup, epochs = (15, 60) if steps == 11 else (2, 4)
    got = [e for e in range(warmup, epochs) if starts_window(e, warmup, epochs, steps)]
    assert got == starts
    last = starts[-1]
    assert (epochs - last) * steps >= WINDOW_STEPS  # the final window, the verdict's, holds enough steps
