"""The supernet and the architect: α bookkeeping, hypergradients, the virtual step."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sase import EDGES, OPS, Genotype
from sase.search import Architect, MixedOp, Supernet, derive_genotype


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs) -> Supernet:
    torch.manual_seed(seed)
    return Supernet("resnet20", num_classes=3, **kwargs).to(dtype)


def batches(dtype: torch.dtype = torch.float32, n: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(1)
    make = lambda: (torch.randn(n, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g))
    return make(), make()


def sgd(model: Supernet, lr: float = 0.05) -> torch.optim.SGD:
    return torch.optim.SGD(model.weight_parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def warm_momentum(model: Supernet, opt: torch.optim.SGD, batch) -> None:
    """One weight step, so the optimiser holds momentum buffers the virtual step must use."""
    opt.zero_grad()
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    opt.step()


def test_alpha_is_a_registered_parameter_apart_from_the_weights():
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    assert "alpha" in names and "alpha" in model.state_dict()
    assert model.alpha.shape == (1, len(EDGES), 7)
    assert model.arch_parameters() == [model.alpha]
    weight_ids = {id(p) for p in model.weight_parameters()}
    assert id(model.alpha) not in weight_ids
    assert len(weight_ids) + 1 == len(list(model.parameters()))
    assert model.to(torch.float64).alpha.dtype == torch.float64


def test_every_attention_slot_holds_a_cell_of_mixed_ops():
    model = tiny()
    mixed = [m for m in model.modules() if isinstance(m, MixedOp)]
    assert len(mixed) == 9 * len(EDGES)  # resnet20: nine residual blocks
    assert all(len(m.ops) == len(OPS[EDGES[m.edge].op_set]) for m in mixed)
    assert all(not m.merge.bn.affine for m in model.modules() if hasattr(m, "merge"))  # SPEC §2


def test_per_stage_alpha_has_one_group_per_width():
    model = tiny(per_stage=True)
    assert model.alpha.shape == (3, len(EDGES), 7) and model.stage_widths == [16, 32, 64]
    groups = {(m.ops[0].__class__, m.group) for m in model.modules() if isinstance(m, MixedOp)}
    assert {g for _, g in groups} == {0, 1, 2}
    assert len(model.genotypes()) == 3


def test_a_forward_is_a_pure_function_of_parameters_and_input():
    """functional_call with another α gives what a supernet holding that α gives: no hidden edge weights."""
    model, (x, _) = tiny(dtype=torch.float64), batches(torch.float64)[0]
    other = torch.randn_like(model.alpha)
    model.eval()
    swapped = torch.func.functional_call(model, {"alpha": other}, (x,))
    with torch.no_grad():
        model.alpha.copy_(other)
    torch.testing.assert_close(swapped, model(x))
    # and α's gradient flows through the swapped tensor, not the module's own
    other.requires_grad_()
    torch.func.functional_call(model, {"alpha": other}, (x,)).sum().backward()
    assert other.grad is not None and other.grad.abs().sum() > 0 and model.alpha.grad is None


@pytest.mark.parametrize("convert", [lambda m: m.to(torch.float64), copy.deepcopy], ids=["to", "deepcopy"])
def test_alpha_is_one_tensor_tied_into_every_mixed_op(convert):
    model = convert(tiny())
    ops = [m for m in model.modules() if isinstance(m, MixedOp)]
    assert len(ops) == 9 * len(EDGES) and all(m.alpha is model.alpha for m in ops)
    assert [n for n, _ in model.named_parameters() if n.endswith("alpha")] == ["alpha"]
    state = model.state_dict()
    assert [k for k in state if k.endswith("alpha")] == ["alpha"]
    # a strict load of that state dict sets the one α every mixed op reads
    fresh = tiny(seed=1).to(model.alpha.dtype)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.alpha, model.alpha)
    assert all(m.alpha is fresh.alpha for m in fresh.modules() if isinstance(m, MixedOp))


def test_derived_genotype_is_the_per_edge_argmax():
    model = tiny()
    with torch.no_grad():
        model.alpha.normal_()
    expected = tuple(list(OPS[e.op_set])[int(model.alpha[0, i].argmax())] for i, e in enumerate(EDGES))
    assert model.genotype() == Genotype(expected) == derive_genotype(model.alpha[0])


def test_mixed_op_is_the_softmax_weighted_sum_of_its_candidates():
    model = tiny()
    with torch.no_grad():
        model.alpha.normal_()
    op = next(m for m in model.modules() if isinstance(m, MixedOp) and m.edge == 5)
    x = torch.randn(2, 1, 5, 5)
    w = torch.exp(model.alpha[0, 5]) / torch.exp(model.alpha[0, 5]).sum()
    torch.testing.assert_close(op(x), sum(wi * o(x) for wi, o in zip(w, op.ops)))


def test_timm_backbone_becomes_a_supernet():
    torch.manual_seed(0)
    model = Supernet("timm/resnet18", num_classes=3)
    assert sum(isinstance(m, MixedOp) for m in model.modules()) == 8 * len(EDGES)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.alpha.grad is not None and torch.isfinite(model.alpha.grad).all()


def test_first_order_is_the_validation_gradient():
    model = tiny()
    train, val = batches()
    grad, _ = Architect(model, sgd(model), order=1).alpha_gradient(train, val)
    # the same forward without torch.func: BatchNorm in training mode, as in the search
    direct = torch.autograd.grad(F.cross_entropy(model(val[0]), val[1]), model.alpha)[0]
    torch.testing.assert_close(grad, direct)


@pytest.mark.parametrize("order", [1, 2, "exact"])
def test_alpha_step_leaves_weights_and_buffers_bit_identical(order):
    model = tiny()
    train, val = batches()
    opt = sgd(model)
    warm_momentum(model, opt, train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Architect(model, opt, order=order).step(train, val)
    after = model.state_dict()
    for k, v in before.items():
        if k == "alpha":
            assert not torch.equal(v, after[k]), "α did not move"
        else:
            assert torch.equal(v, after[k]), k


def test_virtual_step_moves_every_weight_with_momentum_and_decay():
    model = tiny()
    with torch.no_grad():  # off the init, where a zero bias can have an exactly zero gradient
        for p in model.weight_parameters():
            p.add_(0.01 * torch.randn_like(p))
    train, _ = batches()
    opt = sgd(model)
    warm_momentum(model, opt, train)
    arch = Architect(model, opt, order=2)
    weights = {n: p.detach() for n, p in model.named_weight_parameters()}
    xi = 0.05
    virtual = arch.virtual_step(weights, model.alpha.detach(), train, xi)
    assert set(virtual) == set(weights) and len(virtual) == len(model.weight_parameters())
    assert all(not torch.equal(virtual[n], w) for n, w in weights.items()), "a weight was left out of w'"
    # w' = w - ξ(g + momentum * buf + wd * w), checked against autograd on the module itself
    opt.zero_grad()
    loss = F.cross_entropy(model(train[0]), train[1])
    grads = torch.autograd.grad(loss, model.weight_parameters(), allow_unused=True)
    for (name, p), g in zip(model.named_weight_parameters(), grads):
        g = torch.zeros_like(p) if g is None else g
        expected = p - xi * (g + 0.9 * opt.state[p]["momentum_buffer"] + 5e-4 * p)
        torch.testing.assert_close(virtual[name], expected, rtol=1e-5, atol=1e-6, msg=name)


class TinyNet(torch.nn.Module):
    """A one-cell backbone with a smooth activation: few units, so few ReLU/max kinks inside the cell."""

    def __init__(self, attention, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.attn = attention(8)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(torch.tanh(self.bn(self.conv(x)))).mean((2, 3)))


def tiny_problem(seed: int):
    torch.manual_seed(seed)
    model = Supernet(TinyNet, num_classes=3).double()
    with torch.no_grad():
        model.alpha.normal_(0, 0.5)
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))
    train, val = make(), make()
    opt = sgd(model)
    warm_momentum(model, opt, train)
    return model, opt, train, val


def relative_error(order_kwargs: dict, model, opt, train, val) -> float:
    exact, _ = Architect(model, opt, order="exact").alpha_gradient(train, val)
    approx, _ = Architect(model, opt, **order_kwargs).alpha_gradient(train, val)
    return float((approx - exact).norm() / exact.norm())


def test_finite_difference_hypergradient_matches_exact_in_float64():
    """SPEC's ε = 0.01/‖v‖ on a tiny supernet, against the double-backward Hessian-vector product."""
    problem = tiny_problem(seed=4)
    assert relative_error(dict(order=2), *problem) < 1e-2
    assert relative_error(dict(order=1), *problem) > 5e-2  # the second-order term is really there


@pytest.mark.parametrize("seed", range(4))
def test_finite_difference_converges_to_exact(seed):
    """With a smaller ε no ReLU or max kink is crossed and the central difference is O(ε²) exact.

    (At SPEC's ε some seeds cross a kink, where the exact product, the Hessian almost everywhere,
    and the finite difference, an average across the kink, legitimately differ.)
    """
    assert relative_error(dict(order=2, fd_scale=1e-4), *tiny_problem(seed)) < 1e-6


def test_supernet_from_a_builder_callable():
    model = tiny_problem(0)[0]
    assert sum(isinstance(m, MixedOp) for m in model.modules()) == len(EDGES)


def test_bad_order_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="order must be 1, 2 or 'exact'"):
        Architect(model, sgd(model), order=3)  # type: ignore[arg-type]


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="resnet20"):
        Supernet("vgg16")


@pytest.mark.parametrize("order", [1, 2, "exact"])
def test_fp16_loss_scaling_gives_the_same_alpha_gradient(order):
    """Every gradient is taken at the scaler's scale and divided back: a power of two, so exactly the same."""
    model, opt, train, val = tiny_problem(seed=3)
    plain, plain_loss = Architect(model, opt, order=order).alpha_gradient(train, val)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaled, loss = Architect(model, opt, order=order, scaler=scaler).alpha_gradient(train, val)
    torch.testing.assert_close(scaled, plain, rtol=1e-12, atol=1e-15)
    assert float(loss) == float(plain_loss)  # the loss reported is the unscaled one


def test_an_overflowing_fp16_alpha_step_is_skipped():
    model, opt, train, val = tiny_problem(seed=4)
    before = model.alpha.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))  # the scaled gradients are not finite
    Architect(model, opt, order=1, scaler=scaler).step(train, val)
    assert torch.equal(model.alpha, before)
    Architect(model, opt, order=1).step(train, val)  # without the overflow the same step moves α
    assert not torch.equal(model.alpha, before)
