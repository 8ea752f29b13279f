"""The architect's second-order hypergradient against autograd through an explicitly unrolled step.

DARTS (Liu et al., ICLR 2019) differentiates the validation loss after one virtual weight step,

    w'(α) = w − ξ (∇w L_train(w, α) + momentum · buffer + weight_decay · w),
    hypergradient = d L_val(w'(α), α) / dα.

Here that step is written out on a tiny float64 supernet and differentiated by plain autograd
(create_graph through ∇w L_train), with no Hessian-vector product anywhere. The architect's
`exact` mode must agree to rounding, its finite-difference mode (order 2) to the difference's error.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from sase.search import Architect, Supernet

MOMENTUM, WEIGHT_DECAY, LR = 0.9, 5e-4, 0.05


class TinyNet(nn.Module):
    """Conv, BatchNorm, tanh, one attention cell, mean, linear: a smooth backbone around few kinks."""

    def __init__(self, attention, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.attn = attention(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.attn(torch.tanh(self.bn(self.conv(x)))).mean((2, 3)))


def problem(seed: int):
    """A float64 supernet off its init, SGD holding momentum buffers, a training and a validation batch."""
    torch.manual_seed(seed)
    model = Supernet(TinyNet, num_classes=3).double()
    with torch.no_grad():
        model.alpha.normal_(0, 0.5)
        for p in model.weight_parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (4,), generator=gen))
    train, val = make(), make()
    opt = torch.optim.SGD(model.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    for _ in range(2):  # two steps: momentum buffers that differ from the last gradient
        opt.zero_grad()
        F.cross_entropy(model(train[0]), train[1]).backward()
        opt.step()
    return model, opt, train, val


def loss_at(model: Supernet, params: dict[str, Tensor], batch) -> Tensor:
    """The loss with the weights and α in `params`; BatchNorm in training mode updates copies of its buffers."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x, y = batch
    return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)


def unrolled_hypergradient(model: Supernet, opt: torch.optim.SGD, train, val, xi: float) -> Tensor:
    """d L_val(w'(α), α) / dα, the virtual step kept in the graph."""
    alpha = model.alpha.detach().clone().requires_grad_()
    named = list(model.named_weight_parameters())
    w = {n: p.detach().clone().requires_grad_() for n, p in named}
    grads = torch.autograd.grad(loss_at(model, {**w, "alpha": alpha}, train), list(w.values()),
                                create_graph=True, allow_unused=True)
    virtual = {}
    for (name, p), g in zip(named, grads):
        g = torch.zeros_like(p) if g is None else g  # a weight the training loss does not reach
        buf = opt.state[p]["momentum_buffer"]
        virtual[name] = w[name] - xi * (g + MOMENTUM * buf + WEIGHT_DECAY * w[name])
    return torch.autograd.grad(loss_at(model, {**virtual, "alpha": alpha}, val), alpha)[0]


def relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=[0, 1])
def case(request):
    return problem(request.param)


@pytest.mark.parametrize("xi", [None, 0.5], ids=["xi=lr", "xi=0.5"])
def test_exact_mode_is_the_unrolled_hypergradient(case, xi):
    model, opt, train, val = case
    expected = unrolled_hypergradient(model, opt, train, val, LR if xi is None else xi)
    got, _ = Architect(model, opt, order="exact").alpha_gradient(train, val, xi)
    assert relative(got, expected) < 1e-9
    # the second-order part is really there: the first-order gradient is far from it
    first, _ = Architect(model, opt, order=1).alpha_gradient(train, val)
    assert relative(first, expected) > 5e-2


@pytest.mark.parametrize("xi", [None, 0.5], ids=["xi=lr", "xi=0.5"])
def test_finite_difference_mode_approaches_the_unrolled_hypergradient(case, xi):
    model, opt, train, val = case
    expected = unrolled_hypergradient(model, opt, train, val, LR if xi is None else xi)
    # Liu et al.'s ε = 0.01 / ‖v‖: the central difference's O(ε²) error and any ReLU or max kink crossed
    got, _ = Architect(model, opt, order=2).alpha_gradient(train, val, xi)
    assert relative(got, expected) < 5e-2
    # a small ε crosses no kink: the difference is then as good as its rounding allows
    got, _ = Architect(model, opt, order=2, fd_scale=1e-5).alpha_gradient(train, val, xi)
    assert relative(got, expected) < 1e-8


def test_hypergradient_leaves_the_model_untouched(case):
    model, opt, train, val = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unrolled_hypergradient(model, opt, train, val, LR)
    Architect(model, opt, order="exact").alpha_gradient(train, val)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
