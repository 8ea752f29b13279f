"""The dominant eigenvalue of the α Hessian, against the full Hessian of a tiny float64 supernet."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from sase.search import Supernet
from sase.search.hessian import alpha_hvp, dominant_eigenvalue
from test_search import TinyNet


def problem(seed: int = 2):
    """A tiny float64 supernet; at seed 2 its α Hessian's two largest |eigenvalues| differ 1.8-fold
    (the largest positive), so 60 power iterations settle far below the tests' tolerance."""
    torch.manual_seed(seed)
    model = Supernet(TinyNet, num_classes=3).double()
    with torch.no_grad():
        model.alpha.normal_(0, 0.5)
    g = torch.Generator().manual_seed(seed)
    # unequal batch sizes: the mean over samples weights each batch by its size
    batches = [(torch.randn(n, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
               for n in (3, 5)]
    return model, batches


@pytest.fixture(scope="module")
def reference():
    """The problem and its full Hessian (42 x 42), computed once: it costs 42 double backwards."""
    model, batches = problem()
    return model, batches, full_hessian(model, batches)


def full_hessian(model: Supernet, batches) -> torch.Tensor:
    """∇²α of the sample-mean loss by torch.autograd.functional.hessian, BatchNorm in training mode."""
    weights = {n: p.detach() for n, p in model.named_weight_parameters()}
    total = sum(len(y) for _, y in batches)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        alpha = flat.view_as(model.alpha)
        out = 0
        for x, y in batches:
            buffers = {n: b.clone() for n, b in model.named_buffers()}
            logits = functional_call(model, ({**weights, "alpha": alpha}, buffers), (x,))
            out = out + F.cross_entropy(logits, y) * len(y) / total
        return out

    model.train()
    return torch.autograd.functional.hessian(loss, model.alpha.detach().flatten())


def largest_magnitude(hessian: torch.Tensor) -> float:
    eig = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    return float(eig[eig.abs().argmax()])


def negated(logits, y):
    return -F.cross_entropy(logits, y)


def test_hessian_vector_product_is_the_full_hessian_times_v(reference):
    model, batches, hessian = reference
    v = torch.randn(model.alpha.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(alpha_hvp(model, batches, v).flatten(), hessian @ v.flatten())


@pytest.mark.parametrize("sign", [1, -1], ids=["loss", "negated loss"])
def test_dominant_eigenvalue_matches_the_full_hessian(reference, sign):
    """With the loss negated every eigenvalue flips sign: the largest-magnitude one is then negative."""
    model, batches, hessian = reference
    loss_fn = F.cross_entropy if sign == 1 else negated
    expected = largest_magnitude(sign * hessian)
    found = dominant_eigenvalue(model, batches, iters=60, tol=1e-10, loss_fn=loss_fn)
    assert found == pytest.approx(expected, rel=1e-6)
    assert (found < 0) == (expected < 0) and (expected < 0) == (sign == -1)  # the largest magnitude, sign kept


def test_few_iterations_still_give_a_rayleigh_quotient_within_the_spectrum(reference):
    model, batches, hessian = reference
    eig = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    found = dominant_eigenvalue(model, batches, iters=2)
    assert float(eig.min()) <= found <= float(eig.max())


def test_model_is_left_untouched():
    model, batches = problem(seed=0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dominant_eigenvalue(model, batches, iters=3)
    assert not any(m.training for m in model.modules()), "train/eval flags were not restored"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.alpha.grad is None and all(p.grad is None for p in model.weight_parameters())


def test_seeded_start_gives_the_same_estimate():
    model, batches = problem(seed=0)
    assert dominant_eigenvalue(model, batches, iters=2, seed=1) == dominant_eigenvalue(model, batches, iters=2, seed=1)


def test_bad_arguments_are_refused():
    model, batches = problem(seed=0)
    with pytest.raises(ValueError, match="iters"):
        dominant_eigenvalue(model, batches, iters=0)
    with pytest.raises(ValueError, match="batch"):
        dominant_eigenvalue(model, [])
