"""Float32 statistics of a feature map, computed once and shared by every op that reads them.

Squeeze ops reduce a (B, C, H, W) map to a descriptor: channel squeeze over (H, W), spatial squeeze
over C. Several candidates need the same statistic (mean, max, ...), and two edges of the cell
squeeze the same map, so the statistics live on a `Features` object that computes each one the
first time an op asks for it. A lone op wraps its input in a fresh `Features`; the cell and the
supernet pass one `Features` to every op that reads the same map.

Statistics are computed in float32 (float64 for a float64 map) outside autocast: x^4 of 300 is
8.1e9, far beyond float16.
"""
from __future__ import annotations

import functools
import math
from functools import cached_property
from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

F = TypeVar("F", bound=Callable)


class Moments:
    """Lazily computed statistics of a map over `dims`, each kept with size-1 dims.

    Built from multiplies and plain sums only: on CPU, torch's `var`, `pow` and `vector_norm` are
    one to two orders of magnitude slower than `x * x` followed by `sum` on the same map.
    """

    def __init__(self, features: Features, dims: tuple[int, ...]) -> None:
        self.features = features
        self.dims = dims

    @property
    def x(self) -> Tensor:
        return self.features.x32

    def _mean(self, t: Tensor) -> Tensor:
        return t.mean(self.dims, keepdim=True)

    @cached_property
    def count(self) -> int:
        return math.prod(self.features.shape[d] for d in self.dims)

    @cached_property
    def mean(self) -> Tensor:
        return self.features.reduce_mean(self.dims)

    @cached_property
    def max(self) -> Tensor:
        return self.x.amax(self.dims, keepdim=True)

    @cached_property
    def centered(self) -> Tensor:
        return self.x - self.mean

    @cached_property
    def centered_sq(self) -> Tensor:
        return self.centered * self.centered

    @cached_property
    def var(self) -> Tensor:
        """Biased variance, from the centred map (no cancellation): defined for a single value too."""
        return self.features.reduce_var(self.dims, self)

    @cached_property
    def std(self) -> Tensor:
        # clamp, not +eps: exact wherever var > 0, and a finite (zero) gradient for a constant map
        return self.var.clamp_min(1e-12).sqrt()

    @cached_property
    def third_moment(self) -> Tensor:
        """Third central moment, mean of (x - mean)^3."""
        return self._mean(self.centered_sq * self.centered)

    @cached_property
    def pnorm4(self) -> Tensor:
        """(sum x^4)^(1/4)."""
        return root4(self.features.reduce_sum4(self.dims))


def root4(t: Tensor) -> Tensor:
    """t^(1/4) for t >= 0, with value 0 and gradient 0 (not NaN) where t == 0."""
    nonzero = t > 0
    return torch.where(nonzero, torch.where(nonzero, t, 1.0).sqrt().sqrt(), 0.0)


class Features:
    """A feature map `x` (B, C, H, W), optionally times a per-channel `scale` (B, C, 1, 1).

    The scaled form is s3 = CE_b(s1) * s0 of the cell. Its mean and 4-norm over C are weighted sums
    of x and x^4, so they are computed from the unscaled map's own x^4 without writing the product
    out; any other statistic materialises the product once (`x32`).
    """

    def __init__(self, x: Tensor, scale: Tensor | None = None, unscaled: Features | None = None) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        self.base = x
        self.scale = scale
        self.unscaled = unscaled if scale is not None else None
        self.hw = Moments(self, (2, 3))  # per channel, over positions: (B, C, 1, 1)
        self.c = Moments(self, (1,))  # per position, over channels: (B, 1, H, W)

    @classmethod
    def of(cls, x: Tensor | Features) -> Features:
        return x if isinstance(x, Features) else cls(x)

    def scaled(self, scale: Tensor) -> Features:
        """This map times `scale` (B, C, 1, 1), with statistics of its own (x^4 shared with this one)."""
        if self.scale is not None:
            raise ValueError("a scaled map cannot be scaled again")
        return Features(self.base, scale, unscaled=self)

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    @property
    def device(self) -> torch.device:
        return self.base.device

    @cached_property
    def x32(self) -> Tensor:
        """The map itself in float32 (for a scaled map: the product, written out once)."""
        if self.unscaled is None:
            return wide(self.base)
        return self.unscaled.x32 * wide(self.scale)

    @cached_property
    def x4(self) -> Tensor:
        """x^4 of this map, as two multiplies."""
        x2 = self.x32 * self.x32
        # without autograd, square in place: one fresh full-size buffer instead of two
        return x2.mul_(x2) if not torch.is_grad_enabled() else x2 * x2

    def spare_buffer(self, like: Tensor) -> Tensor | None:
        """Without autograd: a full-size buffer the statistics are done with, shaped and typed like `like`.

        The cell writes its output there once every edge has read this map, so inference allocates
        one full-size buffer per block, as an SE block does.
        """
        buf = self.__dict__.get("x4")
        if torch.is_grad_enabled() or buf is None or buf.dtype != like.dtype or buf.shape != like.shape:
            return None
        del self.__dict__["x4"]
        return buf

    def _channel_sum(self, values: Tensor, power: int) -> Tensor:
        """Sum over C of scale^power * values (values: a map of the unscaled x), as one batched matmul.

        A matmul reads the map faster than a strided sum over C, and for a scaled map it weighs the
        channels without writing scale * x out.
        """
        b, c, h, w = values.shape
        if self.unscaled is None:
            weights = values.new_ones(b, 1, c)
        else:
            weights = wide(self.scale).flatten(1)  # (B, C)
            for _ in range(power.bit_length() - 1):  # power 1, 2 or 4: square it up
                weights = weights * weights
            weights = weights.unsqueeze(1)
        # (B, 1, C) @ (B, C, HW) -> (B, 1, HW)
        return torch.bmm(weights, values.reshape(b, c, h * w)).view(b, 1, h, w)

    # Statistics of a scaled map s * x that follow from x's without writing s * x out:
    # over (H, W), s is a constant per channel; over C, sums of s^k x^k are batched matmuls.
    def reduce_mean(self, dims: tuple[int, ...]) -> Tensor:
        if dims == (1,):
            return self._channel_sum((self.unscaled or self).x32, 1) / self.shape[1]
        if self.unscaled is not None:
            return wide(self.scale) * self.unscaled.hw.mean
        return self.x32.mean(dims, keepdim=True)

    def reduce_sum4(self, dims: tuple[int, ...]) -> Tensor:
        """Sum of x^4 over `dims`."""
        if dims == (1,):
            return self._channel_sum((self.unscaled or self).x4, 4)
        return self.x4.sum(dims, keepdim=True)

    def reduce_var(self, dims: tuple[int, ...], moments: Moments) -> Tensor:
        if self.unscaled is not None and dims == (2, 3):
            s = wide(self.scale)
            return s * s * self.unscaled.hw.var
        return moments._mean(moments.centered_sq)

    def channel_affine(self, scale: Tensor, shift: Tensor) -> Tensor:
        """scale * map + shift with (B or 1, C, 1, 1) scale and shift, in one pass over the unscaled map."""
        if self.unscaled is None:
            return torch.addcmul(shift, self.x32, scale)
        return torch.addcmul(shift, self.unscaled.x32, scale * wide(self.scale))



def wide(t: Tensor) -> Tensor:
    """`t` in float32, or as it is when already float32 or float64 (a float64 model keeps its precision)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def no_autocast(forward: F) -> F:
    """Run a forward outside autocast, so statistics and the small learned layers stay in their own dtype."""

    @functools.wraps(forward)
    def wrapper(self: nn.Module, x, *args, **kwargs):
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return forward(self, x, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return forward(self, x, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
