"""Perturbation-based selection (DARTS-PT) on supernets where the right choice is known by design.

Every candidate of every edge is replaced by a stub: one candidate per edge passes a signal on,
the other six output zeros. The backbone classifies an image by where its cells' attention peaks
(the channel of s2's maximum and the position of s5's maximum), and the labels are the supernet's
own predictions. Removing the signal candidate of any edge moves those peaks; removing a zero
candidate changes nothing at all. So the signal candidate must be chosen on every edge, even where
a zero candidate holds the largest α (edges 1 and 5 below, where argmax selection goes wrong).
"""
from __future__ import annotations

import json
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sase.cell import EDGES
from sase.ops import OPS, Features
from sase.search import MixedOp, Supernet
from sase.search.select import perturbation_select
from test_search import TinyNet

# what the signal candidate of each edge computes
SIGNAL: dict[int, Callable] = {
    0: lambda s: s.hw.mean,  # channel squeeze: mean over positions, (B, C, 1, 1)
    1: lambda s: s,  # channel excitation
    2: lambda s: s,
    3: lambda s: s.x32[:, :1],  # spatial squeeze of s3: its channel 0, (B, 1, H, W)
    4: lambda s: s.x32[:, 1:2],  # spatial squeeze of s0: its channel 1
    5: lambda s: s,  # spatial excitation
}
# edges where a zero candidate gets the largest α: rescaling s2 or s5 never moves their peak, so
# giving the signal candidate all the weight when the edge is decided keeps the labels right
MISLEADING = (1, 5)


class Stub(nn.Module):
    def __init__(self, fn: Callable, zero: bool) -> None:
        super().__init__()
        self.fn, self.zero = fn, zero

    def forward(self, s: torch.Tensor | Features) -> torch.Tensor:
        out = self.fn(s)
        return torch.zeros_like(out) if self.zero else out


class Peaks(nn.Module):
    """Cells on positive feature maps of several widths; the class is where each cell's attention peaks.

    A cell gives Y = f (1 + (s2 + s5) / 2), so 2 (Y - f) / f = s2 + s5, whose argmax over
    (channel, position) is (argmax of s2, argmax of s5). With several cells the logits add one
    such map per cell along its own axis, so the class is the tuple of every cell's peak.
    """

    def __init__(self, attention: Callable, num_classes: int | None, widths: tuple[int, ...] = (4,)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, w, 3, padding=1, bias=False) for w in widths)
        self.cells = nn.ModuleList(attention(w) for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x.new_zeros(len(x), 1)
        for conv, cell in zip(self.convs, self.cells):
            f = torch.sigmoid(conv(x)) + 0.5
            peaks = (2 * (cell(f) - f) / f).flatten(1)  # (B, C*H*W): s2 + s5
            logits = (logits[:, :, None] + peaks[:, None, :]).flatten(1)  # every pair of classes
        return logits


def arranged(seed: int, per_stage: bool = False, widths: tuple[int, ...] = (4,)):
    """A stubbed supernet, its α, batches labelled by its own predictions, and the signal candidates."""
    torch.manual_seed(seed)
    model = Supernet(Peaks, per_stage=per_stage, widths=widths).double()
    g = torch.Generator().manual_seed(seed)
    groups = len(model.alpha)
    signal = torch.randint(0, 7, (groups, len(EDGES)), generator=g)  # (groups, 6)
    decoy = (signal + torch.randint(1, 7, signal.shape, generator=g)) % 7  # a zero candidate, != signal
    with torch.no_grad():
        model.alpha.zero_()
        for gr in range(groups):
            for e in range(len(EDGES)):
                if e in MISLEADING:  # softmax weight 0.23 for the signal, 0.62 for the decoy
                    model.alpha[gr, e, decoy[gr, e]], model.alpha[gr, e, signal[gr, e]] = 3.0, 2.0
                else:  # all the weight on the signal: deciding the edge changes nothing
                    model.alpha[gr, e, signal[gr, e]] = 20.0
        for m in model.modules():
            if isinstance(m, MixedOp):
                m.ops = nn.ModuleList(Stub(SIGNAL[m.edge], k != signal[m.group, m.edge]) for k in range(7))
            if hasattr(m, "merge"):  # M adds the two spatial maps; positive, so its ReLU passes them
                m.merge.conv.weight.fill_(1.0)
    x = torch.randn(48, 3, 3, 3, generator=g, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)], signal, decoy


def chosen_indices(result) -> torch.Tensor:
    return torch.tensor([[list(OPS[e.op_set]).index(op) for e, op in zip(EDGES, g.ops)] for g in result.genotypes])


@pytest.mark.parametrize("seed", range(3))
def test_the_candidate_whose_removal_destroys_accuracy_is_chosen_on_every_edge(seed):
    model, batches, signal, _ = arranged(seed)
    result = perturbation_select(model, batches, seed=seed)
    assert torch.equal(chosen_indices(result), signal)
    assert result.base_accuracy == 1.0 and result.final_accuracy == 1.0
    removed_signal = result.accuracy.gather(-1, signal[..., None])[..., 0]  # (groups, 6)
    assert (removed_signal < 0.8).all(), "removing the signal candidate should cost accuracy"
    others = torch.ones_like(result.accuracy, dtype=torch.bool).scatter_(-1, signal[..., None], False)
    assert (result.accuracy[others] == 1.0).all(), "removing a zero candidate changes nothing"
    # where a zero candidate holds the largest α, argmax selection picks it and DARTS-PT does not
    argmax = model.alpha.argmax(-1)
    assert all((argmax[:, e] != signal[:, e]).all() for e in MISLEADING)


def test_per_stage_groups_are_selected_separately():
    model, batches, signal, _ = arranged(seed=5, per_stage=True, widths=(4, 6))
    assert model.alpha.shape[0] == 2
    result = perturbation_select(model, batches, seed=1)
    assert len(result.genotypes) == 2
    assert torch.equal(chosen_indices(result), signal)
    # every (group, edge) decided once; the groups take turns
    assert sorted(result.order) == [(g, e) for g in range(2) for e in range(len(EDGES))]
    assert [g for g, _ in result.order] == [0, 1] * len(EDGES)


def test_edges_are_taken_in_a_seeded_random_order():
    model, batches, _, _ = arranged(seed=0)
    orders = {tuple(perturbation_select(model, batches, seed=s).order) for s in range(4)}
    assert len(orders) > 1
    assert perturbation_select(model, batches, seed=2).order == perturbation_select(model, batches, seed=2).order


def test_removal_keeps_the_other_weights_unless_renormalised():
    """Removing a zero candidate leaves the network as it was (the paper's masking); renormalising
    instead rescales the signal, by a factor that depends on the removed candidate's α."""
    model, batches, signal, decoy = arranged(seed=0)
    e = MISLEADING[0]
    zeros = [k for k in range(7) if k != signal[0, e]]
    masked = perturbation_select(model, batches).loss[0, e, zeros]
    assert torch.equal(masked, masked[:1].expand_as(masked))
    renormalised = perturbation_select(model, batches, renormalize=True)
    other = next(k for k in zeros if k != decoy[0, e])
    assert renormalised.loss[0, e, decoy[0, e]] != renormalised.loss[0, e, other]
    assert torch.equal(chosen_indices(renormalised), signal)  # rescaling never moves a peak


def test_each_edge_is_scored_with_the_edges_before_it_discretised():
    """The loss left by removing a zero candidate is that of the network as it stands: edges
    decided so far one-hot (here through α = -inf elsewhere, the supernet's own forward), the rest
    as trained. Deciding a misleading edge moves the signal's weight from 0.23 to 1, which the
    cross-entropy sees."""
    model, batches, signal, _ = arranged(seed=2)
    result = perturbation_select(model, batches, seed=3)
    alpha = model.alpha.detach().clone()
    levels = set()
    for g, e in result.order:
        with torch.no_grad():
            expected = sum(F.cross_entropy(functional_call(model, {"alpha": alpha}, (x,)), y, reduction="sum")
                           for x, y in batches) / sum(len(y) for _, y in batches)
        zero = (int(signal[g, e]) + 1) % 7
        assert float(result.loss[g, e, zero]) == pytest.approx(float(expected), rel=1e-9)
        levels.add(round(float(expected), 6))
        alpha[g, e] = float("-inf")
        alpha[g, e, signal[g, e]] = 0.0
    assert len(levels) > 1, "no decision changed the network: the check above would prove nothing"


@pytest.mark.parametrize("batch_statistics", [False, True])
def test_model_is_left_untouched(batch_statistics):
    torch.manual_seed(0)
    model = Supernet(TinyNet, num_classes=3).double()  # the real candidate ops
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = perturbation_select(model, batches, batch_statistics=batch_statistics)
    assert all(m.training for m in model.modules()), "train/eval flags were not restored"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.normalize for m in model.modules() if isinstance(m, MixedOp)), "softmax not restored"
    assert torch.isfinite(result.loss).all() and result.accuracy.shape == (1, len(EDGES), 7)


def test_record_is_json_ready():
    model, batches, signal, _ = arranged(seed=1)
    result = perturbation_select(model, batches)
    record = json.loads(json.dumps(result.to_dict()))
    group = record["groups"][0]
    assert group["genotype"] == result.genotypes[0].to_dict()
    assert sorted(edge["decided_at"] for edge in group["edges"].values()) == list(range(len(EDGES)))
    edge = group["edges"][EDGES[0].name]
    assert list(edge["removed"]) == list(OPS[EDGES[0].op_set])
    assert edge["chosen"] == list(OPS[EDGES[0].op_set])[int(signal[0, 0])]


def test_no_batches_is_refused():
    model, _, _, _ = arranged(seed=0)
    with pytest.raises(ValueError, match="batch"):
        perturbation_select(model, [])
