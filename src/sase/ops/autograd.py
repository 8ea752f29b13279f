"""Statistics of a map with hand-written backward passes, for training in eager mode.

Each full-size pass over a map costs about the same on a CPU, and in the published block's training
step autograd made most of them: x^4 = (x * x) * (x * x) differentiated through two products (x^2
and x^4 kept for the backward pass, two pairs of full-size gradients added there), a sum over
channels as a matmul whose gradient is written out in full, and the mean and the max of `gap_gmp`
each landing on the map as its own full-size gradient (the max's after a float copy of its mask),
then added. The functions below give the same values and gradients (autograd's own, ties of a
maximum included) from fewer passes, and keep only the map itself for the backward pass: the
block's training step went from 1.28-1.31x to 1.20-1.26x plain ResNet-20 (docs/bench.md). `Gated`, the
cell's output x * (channel + spatial), adds the full-size gate again in its backward pass instead of
keeping it: the block keeps its input alone, as an SE block does.

Their backward passes are differentiable (out of place where the graph of a gradient keeps a buffer,
as for the Hessian-vector products of the search); `Features` uses them only while autograd records
an eager forward (`recording()`).

Each takes the map in its own dtype and computes in float32 (`wide`), as all statistics are: a float16
or bfloat16 map under mixed precision is kept for the backward pass as it is, and widened again there,
instead of a float32 copy twice its size being kept (the published block's training memory under bf16
autocast fell from 2.04x to 1.5x plain ResNet-50 on an H100, docs/gpu.md). Their gradients are
returned in the map's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def wide_dtype(t: Tensor) -> torch.dtype:
    """The dtype statistics of `t` are computed in: float32, or float64 for a float64 model (it keeps its precision)."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def wide(t: Tensor) -> Tensor:
    """`t` in `wide_dtype(t)`: itself when it is already there, else a float32 copy."""
    return t.to(wide_dtype(t))


def weighted_channel_sum(values: Tensor, weights: Tensor | None) -> Tensor:
    """Sum over C of weights (B, C) * values (B, C, H, W) -> (B, 1, H, W), weights None meaning all ones,
    as one batched matmul: it reads the map faster than a strided sum over C on a CPU, and weighs the
    channels without writing the weighted map out."""
    b, c, h, w = values.shape
    rows = values.new_ones(b, 1, c) if weights is None else weights.unsqueeze(1)  # (B, 1, C)
    return torch.bmm(rows, values.reshape(b, c, h * w)).view(b, 1, h, w)


class FourthPower(torch.autograd.Function):
    """x^4, keeping x (not x^2 and x^4) for d/dx = 4 x^3."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        xw = wide(x)  # one float32 copy of a narrow map, not two
        x4 = xw * xw
        return x4.mul_(x4)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (narrow,) = ctx.saved_tensors
        x = wide(narrow)
        return (x * x).mul_(x).mul_(grad).mul_(4).to(narrow.dtype)  # one fresh buffer, three passes in place


class ChannelFourthSum(torch.autograd.Function):
    """sum_c w[b, c] x[b, c]^4 for x (B, C, H, W) and w (B, C) or None (all ones): (B, 1, H, W), without
    x^4 kept.

    d/dx = x^3 (4 g) w and d/dw = sum over (H, W) of x (x^3 (4 g)) / 4: one fresh buffer and two or three
    passes in place (and one more for w's gradient), where autograd's route through x^2, x^4 and a
    batched matmul writes six fresh maps and keeps two for the backward pass.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        xw = wide(x)
        x4 = xw * xw
        return weighted_channel_sum(x4.mul_(x4), w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        narrow, w = ctx.saved_tensors
        x = wide(narrow)
        grad4 = 4 * grad  # (B, 1, H, W): the factor 4 on the small tensor, not in a pass over the map
        building = torch.is_grad_enabled()  # a graph of this gradient is built: grad_w's keeps x3g
        x3g = x * x * x * grad4 if building else (x * x).mul_(x).mul_(grad4)
        grad_w = (x * x3g).sum((2, 3)) / 4 if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_w
        if w is None:
            return x3g.to(narrow.dtype), grad_w
        w = w.view(*w.shape, 1, 1)
        return (x3g * w if building else x3g.mul_(w)).to(narrow.dtype), grad_w


class ChannelSum(torch.autograd.Function):
    """sum over C of x (B, C, H, W) -> (B, 1, H, W) as a batched matmul, whose gradient is g broadcast
    over C as a view: autograd's matmul backward writes that broadcast out in full first."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return weighted_channel_sum(wide(x), None)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.expand(ctx.shape).to(ctx.dtype)


class MeanMax(torch.autograd.Function):
    """(mean, amax) over `dims` (kept) of one map, as the `gap_gmp` squeezes read them.

    Their gradients land on the map in one pass, g_mean / n everywhere plus g_max / count at the
    maxima, instead of one pass each and a third adding them.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        n = math.prod([x.shape[d] for d in dims])
        # summed in float32 without a float32 copy of the map; the max is exact in any dtype
        mean, m = x.sum(dims, keepdim=True, dtype=wide_dtype(x)) / n, x.amax(dims, keepdim=True)
        ctx.save_for_backward(x, m)
        ctx.dims, ctx.n = dims, n
        return mean, wide(m)

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_max: Tensor) -> tuple[Tensor, None]:
        x, m = ctx.saved_tensors
        top = x == m
        spread = grad_mean / ctx.n
        peak = grad_max / _count(top, ctx.dims, grad_max.dtype)
        return torch.where(top, spread + peak, spread).to(x.dtype), None


def _count(mask: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """How many entries of a bool map are true along `dims` (kept), summed as bytes: a third faster on a
    CPU than summed as bools."""
    return mask.view(torch.uint8).sum(dims, keepdim=True, dtype=dtype)


class Gated(torch.autograd.Function):
    """x * (channel + spatial) for x (B, C, H, W), channel (B, C, 1, 1) and spatial (B, 1, H, W): the cell's
    output, keeping x and the two small factors for the backward pass instead of x and the full-size gate
    (the gate is added again there, one pass over the map: the block then keeps one map, as an SE block does).

    d/dx = g (channel + spatial); d/dchannel = sum over (H, W) of g x; d/dspatial = sum over C of g x.
    """

    @staticmethod
    def forward(ctx, x: Tensor, channel: Tensor, spatial: Tensor) -> Tensor:
        ctx.save_for_backward(x, channel, spatial)
        return x * (channel + spatial)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, channel, spatial = ctx.saved_tensors
        building = torch.is_grad_enabled()  # a graph of this gradient is built (the search's second order)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gate = channel + spatial
            grad_x = gate * grad if building else gate.mul_(grad)
        grad_channel = grad_spatial = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gx = grad * x
            if ctx.needs_input_grad[1]:
                grad_channel = gx.sum((2, 3), keepdim=True)
            if ctx.needs_input_grad[2]:
                grad_spatial = weighted_channel_sum(gx, None)
        return grad_x, grad_channel, grad_spatial
