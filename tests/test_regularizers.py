"""Beta-Decay (β-DARTS): the loss, its gradient, its schedule, and its place in the α gradient."""
from __future__ import annotations

import pytest
import torch

from sase.search import Architect
from sase.search.regularizers import beta_decay_loss, beta_decay_weight
from test_search import tiny_problem


def closed_form_gradient(alpha: torch.Tensor) -> torch.Tensor:
    """∇ of the mean over edges of logsumexp: each edge's softmax over the number of edges."""
    edges = alpha.numel() // alpha.shape[-1]
    return torch.exp(alpha) / torch.exp(alpha).sum(-1, keepdim=True) / edges


@pytest.mark.parametrize("shape", [(1, 6, 7), (3, 6, 7)])
def test_loss_is_the_mean_logsumexp_and_its_gradient_the_scaled_softmax(shape):
    alpha = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = beta_decay_loss(alpha)
    edges = [a.exp().sum().log() for a in alpha.detach().reshape(-1, shape[-1])]
    torch.testing.assert_close(loss.detach(), sum(edges) / len(edges))
    (grad,) = torch.autograd.grad(loss, alpha)
    torch.testing.assert_close(grad, closed_form_gradient(alpha.detach()))


def test_loss_is_finite_for_large_alpha():
    assert torch.isfinite(beta_decay_loss(torch.full((1, 6, 7), 1e4)))


def test_schedule_rises_linearly_from_zero():
    assert [beta_decay_weight(10.0, e, 5) for e in range(5)] == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])
    # the official code's 0 + 50 * epoch / 100
    assert beta_decay_weight(50.0, 37, 100) == pytest.approx(50 * 37 / 100)
    assert beta_decay_weight(0.0, 3, 5) == 0.0


@pytest.mark.parametrize("epoch, epochs", [(-1, 5), (6, 5), (0, 0)])
def test_schedule_refuses_epochs_out_of_range(epoch, epochs):
    with pytest.raises(ValueError):
        beta_decay_weight(1.0, epoch, epochs)


@pytest.mark.parametrize("order", [1, 2, "exact"])
def test_alpha_gradient_adds_the_weighted_beta_decay_gradient(order):
    model, opt, train, val = tiny_problem(seed=1)
    plain, plain_loss = Architect(model, opt, order=order).alpha_gradient(train, val)
    arch = Architect(model, opt, order=order, beta_decay=3.0)
    assert arch.beta_weight == 3.0  # λ until a schedule sets it
    arch.beta_weight = 0.7
    grad, loss = arch.alpha_gradient(train, val)
    expected = plain + 0.7 * closed_form_gradient(model.alpha.detach())
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)
    assert float(loss) == pytest.approx(float(plain_loss), rel=1e-12)  # the reported loss has no regulariser in it
    assert not torch.allclose(grad, plain)  # the term is really there


def test_zero_weight_leaves_the_gradient_as_it_was():
    model, opt, train, val = tiny_problem(seed=2)
    plain, _ = Architect(model, opt, order=1).alpha_gradient(train, val)
    arch = Architect(model, opt, order=1, beta_decay=5.0)
    arch.beta_weight = 0.0
    torch.testing.assert_close(arch.alpha_gradient(train, val)[0], plain, rtol=0, atol=0)


def test_negative_beta_decay_is_refused():
    model, opt, _, _ = tiny_problem(seed=0)
    with pytest.raises(ValueError, match="beta_decay"):
        Architect(model, opt, beta_decay=-1.0)
