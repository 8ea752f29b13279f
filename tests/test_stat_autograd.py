"""The statistics' hand-written backward passes (`sase.ops.autograd`): derivatives, ties, second derivatives.

The ops and the block built on them are checked against their definitions, gradients included, in
test_op_values.py; here each function is checked on its own by finite differences (first and second
order, as the search's Hessian-vector products need), at ties of a maximum against autograd's own
convention, and for what it keeps for the backward pass.
"""
from __future__ import annotations

import weakref

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from sase import SASEBlock
from sase.ops.autograd import ChannelFourthSum, ChannelSum, FourthPower, Gated, MeanMax


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # the same checks on a GPU where there is one


def rand(*shape: int, seed: int = 0, requires_grad: bool = True, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_(requires_grad)


CASES = {
    "fourth_power": (FourthPower.apply, lambda: (rand(2, 3, 4, 5),)),
    "channel_fourth_sum": (ChannelFourthSum.apply, lambda: (rand(2, 3, 4, 5), rand(2, 3, seed=1))),
    "channel_fourth_sum_unweighted": (lambda x: ChannelFourthSum.apply(x, None), lambda: (rand(2, 3, 4, 5),)),
    "channel_sum": (ChannelSum.apply, lambda: (rand(2, 3, 4, 5),)),
    "mean_max_hw": (lambda x: MeanMax.apply(x, (2, 3)), lambda: (rand(2, 3, 4, 5),)),
    "mean_max_c": (lambda x: MeanMax.apply(x, (1,)), lambda: (rand(2, 3, 4, 5),)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CASES))
def test_first_and_second_derivatives_by_finite_differences(name, device):
    fn, inputs = CASES[name]
    on = lambda: tuple(t.detach().to(device).requires_grad_() for t in inputs())
    assert gradcheck(fn, on())
    assert gradgradcheck(fn, on())


DEFINITIONS = {
    "fourth_power": lambda x, w: x ** 4,
    "channel_fourth_sum": lambda x, w: (w[..., None, None] * x ** 4).sum(1, keepdim=True),
    "channel_fourth_sum_unweighted": lambda x, w: (x ** 4).sum(1, keepdim=True),
    "channel_sum": lambda x, w: x.sum(1, keepdim=True),
    "mean_max_hw": lambda x, w: (x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)),
    "mean_max_c": lambda x, w: (x.mean(1, keepdim=True), x.amax(1, keepdim=True)),
}


def tied_map(device: str = "cpu") -> torch.Tensor:
    """Maxima tied within a channel and within a position, and one constant channel (all tied)."""
    x = rand(2, 3, 4, 5, requires_grad=False, device=device).round()
    x[0, 1] = 2.0
    x[1, :, 1, 2] = x[1].max() + 1
    return x.requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("map_kind", ["random", "ties"])
def test_gradients_equal_autograd_of_the_definition_ties_included(name, map_kind, device):
    """At a tie autograd splits a maximum's gradient evenly among the maxima: so must these."""
    fn, _ = CASES[name]
    x = rand(2, 3, 4, 5, device=device) if map_kind == "random" else tied_map(device)
    w = rand(2, 3, seed=1, device=device)
    args = (x, w) if name == "channel_fourth_sum" else (x,)
    got, want = fn(*args), DEFINITIONS[name](x, w)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    weights = [rand(*t.shape, seed=2 + i, requires_grad=False, device=device) for i, t in enumerate(want)]
    for g, v in zip(got, want):
        torch.testing.assert_close(g, v)
    grads = torch.autograd.grad(sum((g * r).sum() for g, r in zip(got, weights)), args)
    expected = torch.autograd.grad(sum((v * r).sum() for v, r in zip(want, weights)), args)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("name", list(CASES))
def test_a_second_backward_pass_gives_the_same_gradient(name):
    """The backward passes work in place on buffers of their own: nothing they keep is overwritten."""
    fn, inputs = CASES[name]
    args = inputs()
    out = fn(*args)
    loss = sum(o.sum() for o in out) if isinstance(out, tuple) else (out * out).sum()
    first = torch.autograd.grad(loss, args, retain_graph=True)
    second = torch.autograd.grad(loss, args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(args, inputs())), "an input was changed in place"


def gate_inputs(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return rand(2, 3, 4, 5, device=device), rand(2, 3, 1, 1, seed=1, device=device), rand(2, 1, 4, 5, seed=2, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_the_gate_s_derivatives_equal_the_definition_s(device):
    """The cell's output x * (channel + spatial): first and second derivatives by finite differences, and the
    gradients of autograd's own route, a second backward pass included."""
    assert gradcheck(Gated.apply, gate_inputs(device))
    assert gradgradcheck(Gated.apply, gate_inputs(device))
    got_inputs, want_inputs = gate_inputs(device), gate_inputs(device)
    got, want = Gated.apply(*got_inputs), (lambda x, c, s: x * (c + s))(*want_inputs)
    torch.testing.assert_close(got, want)
    weights = rand(*want.shape, seed=3, requires_grad=False, device=device)
    first = torch.autograd.grad((got * weights).sum(), got_inputs, retain_graph=True)
    second = torch.autograd.grad((got * weights).sum(), got_inputs)
    expected = torch.autograd.grad((want * weights).sum(), want_inputs)
    for a, b, e in zip(first, second, expected):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, e)


def saved_full_size_maps(module: torch.nn.Module, x: torch.Tensor) -> dict[int, torch.dtype]:
    """The distinct full-size tensors the forward keeps for the backward pass (storage -> dtype)."""
    seen: dict[int, torch.dtype] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.numel() >= x.numel():
            seen[t.untyped_storage().data_ptr()] = t.dtype
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x * 1)  # a non-leaf input, as in a network
    return seen


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_the_published_block_keeps_one_map_for_its_backward_pass(amp):
    """Its input, as an SE block does: x^2 and x^4 of the map and the full-size gate are recomputed in the
    backward pass, not kept (autograd's own route kept all three, four maps per block). Under mixed
    precision it stays in the map's own dtype: no float32 copy of the map is kept for the statistics
    computed in float32."""
    block = SASEBlock(16).train()
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        x = x.to(amp or torch.float32)
        kept = saved_full_size_maps(block, x)
    assert list(kept.values()) == [x.dtype]


class PeakBytes(TorchDispatchMode):
    """The most bytes of tensors made inside it that were alive at once (each storage counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            key = t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None
            if key is None or key in self.storages:
                continue
            size = t.untyped_storage().nbytes()
            self.storages.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.storages.discard(key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_published_block_in_inference_holds_at_most_three_maps_of_its_input_s_size(dtype):
    """x^4 (float32) and the output: a bfloat16 map's float32 copy is not kept beside its x^4 (which made five
    maps' worth of bytes); a float32 map writes its output into the buffer of x^4 (two)."""
    block = SASEBlock(64).eval()
    x = torch.randn(2, 64, 16, 16).to(dtype)  # 64 channels: the (B, 1, H, W) descriptors are small beside the map
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        counter = PeakBytes()
        with counter:
            block(x)
    maps = counter.peak / (x.numel() * x.element_size())
    assert maps <= (3.25 if dtype == torch.bfloat16 else 2.25), maps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(CASES))
def test_a_low_precision_map_is_kept_as_it_is_and_computed_in_float32(name, dtype, device):
    """The statistics of a float16 or bfloat16 map are those of its float32 copy (x^4 of a float16 map
    overflows at |x| > 16), yet the map is kept for the backward pass in its own dtype and its gradient
    comes back in that dtype."""
    fn, _ = CASES[name]
    narrow = (rand(2, 3, 4, 5, requires_grad=False, device=device) * 30).to(dtype).requires_grad_()  # x^4 ~1e7
    copy = narrow.detach().float().requires_grad_()
    w = rand(2, 3, seed=1, requires_grad=False, device=device).float()
    args, ref_args = ((narrow, w), (copy, w)) if name == "channel_fourth_sum" else ((narrow,), (copy,))
    kept: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        got = fn(*args)
    want = DEFINITIONS[name](copy, w)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, v in zip(got, want):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        torch.testing.assert_close(g, v, rtol=1e-5, atol=1e-3)
    assert all(t.dtype != torch.float32 for t in kept if t.numel() >= narrow.numel()), "a float32 copy was kept"
    weights = [rand(*t.shape, seed=2 + i, requires_grad=False, device=device).float() for i, t in enumerate(want)]
    (grad,) = torch.autograd.grad(sum((g * r).sum() for g, r in zip(got, weights)), narrow)
    (expected,) = torch.autograd.grad(sum((v * r).sum() for v, r in zip(want, weights)), copy)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, expected.to(dtype))
