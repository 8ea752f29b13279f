"""The α optimisers: EdgeAdam against a NumPy statement of its update, its step count, and Adam's capturable flag."""
import copy

import numpy as np
import pytest
import torch

from sase.search.optim import EdgeAdam, arch_optimizer


def edge_adam_reference(p0, grads, lr, betas, eps, weight_decay):
    """Adam (Kingma & Ba, 2015) whose second moment is the mean of the squared gradients over the last axis."""
    b1, b2 = betas
    p = p0.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros(p.shape[:-1] + (1,))
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g ** 2).mean(-1, keepdims=True)
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def run_edge_adam(opt, p, grads):
    for g in grads:
        p.grad = torch.from_numpy(g).to(p.dtype)
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_edge_adam_matches_its_definition(weight_decay):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(2, 6, 7))
    grads = [rng.normal(scale=s, size=p0.shape) for s in (1.0, 0.1, 3.0, 0.5, 2.0)]
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    run_edge_adam(EdgeAdam([p], lr=0.1, betas=(0.5, 0.999), weight_decay=weight_decay), p, grads)
    expected = edge_adam_reference(p0, grads, 0.1, (0.5, 0.999), 1e-8, weight_decay)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_a_candidate_with_a_larger_gradient_moves_further_than_under_adam():
    # Adam would move both candidates by lr; EdgeAdam keeps the ratio of their gradients
    grad = torch.tensor([[[2.0, 1.0, 0, 0, 0, 0, 0]]])
    p = torch.zeros(1, 1, 7, requires_grad=True)
    p.grad = grad
    EdgeAdam([p], lr=0.1, betas=(0.5, 0.999)).step()
    moved = -p.detach()[0, 0]
    assert float(moved[0]) == pytest.approx(2 * float(moved[1]), rel=1e-6)
    assert moved[2:].abs().max() == 0


def test_edge_adam_step_count_lives_on_the_parameter_device_and_old_int_counts_load():
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(1, 6, 7)) for _ in range(4)]
    p = torch.zeros(1, 6, 7, dtype=torch.float64, requires_grad=True)
    opt = EdgeAdam([p], lr=0.05, betas=(0.5, 0.999))
    run_edge_adam(opt, p, grads[:2])
    step = opt.state[p]["step"]
    assert torch.is_tensor(step) and step.device == p.device and float(step) == 2
    # a checkpoint of an earlier version held the count as a Python int: it continues the same
    state = copy.deepcopy(opt.state_dict())  # a saved copy, not the live moments
    state["state"][0]["step"] = 2
    q = p.detach().clone().requires_grad_()
    reloaded = EdgeAdam([q], lr=0.05, betas=(0.5, 0.999))
    reloaded.load_state_dict(state)
    run_edge_adam(opt, p, grads[2:])
    run_edge_adam(reloaded, q, grads[2:])
    assert torch.equal(p, q)


def test_capturable_adam_is_asked_for_and_edge_adam_needs_no_flag():
    p = torch.zeros(1, 6, 7, requires_grad=True)
    assert arch_optimizer("adam", [p], 0.1, (0.5, 0.999), 0.0, capturable=True).defaults["capturable"] is True
    assert arch_optimizer("adam", [p], 0.1, (0.5, 0.999), 0.0).defaults["capturable"] is False
    assert isinstance(arch_optimizer("edge_adam", [p], 0.1, (0.5, 0.999), 0.0, capturable=True), EdgeAdam)
