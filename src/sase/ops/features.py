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
from typing import Any, Callable, Generic, TypeVar

import torch
from torch import Tensor, nn

from .autograd import ChannelFourthSum, ChannelSum, FourthPower, MeanMax, weighted_channel_sum, wide

F = TypeVar("F", bound=Callable)
T = TypeVar("T")


class lazy(Generic[T]):  # noqa: N801 (a decorator, named like the property it stands for)
    """`functools.cached_property` without its lock: computed on first read, then kept in the instance.

    Python 3.11's cached_property takes an RLock on every first read, and torch.compile cannot enter
    it: each statistic would end the compiled graph there.
    """

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = obj.__dict__[self.name] = self.compute(obj)
        return value


class stat(lazy[T]):  # noqa: N801
    """A `lazy` statistic of `Moments`, kept on its `Features` (keyed by the axes), not on the Moments object.

    Features hands out a fresh Moments at each access and never holds one, so nothing refers back to the
    Features: no reference cycle, which only the garbage collector would free, keeping the map and every
    full-size statistic of it alive blocks after their last use (inference peak memory of ResNet-50 with
    the published block fell from 1.8x plain to 1.0x once the cycle was gone, counted in live tensors).
    """

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        cache = obj.features._stats
        key = (obj.dims, self.name)
        if key not in cache:
            cache[key] = self.compute(obj)
        return cache[key]


class Moments:
    """Lazily computed statistics of a map over `dims`, each kept with size-1 dims.

    The mean and the 4-norm come from power sums S_k = sum of x^k over `dims`, which the map's
    `Features` computes from powers of x written out once and shared by both axes and by the scaled
    map. The central moments (variance, third moment) are summed from the centred map d = x - mean
    in a second pass (two-pass, corrected for the rounding of the mean: Chan, Golub and LeVeque,
    "Algorithms for computing the sample variance", 1983). From raw moments, E[x^3] - 3 m E[x^2] + 2 m^3
    cancels terms of size m^3 and keeps an error of about 1e-7 * (|mean| / std)^3 times std^3 in
    float32 (a tenth of the third moment at |mean| / std = 100, a hundred times it at 1000), and
    E[x^2] - m^2 one of 1e-7 * (|mean| / std)^2 times the variance; centred, both stay near 1e-7.
    """

    def __init__(self, features: Features, dims: tuple[int, ...]) -> None:
        self.features = features
        self.dims = dims

    @stat
    def count(self) -> int:
        shape = self.features.shape
        return math.prod([shape[d] for d in self.dims])  # a list: torch.compile does not trace into a generator here

    def raw(self, k: int) -> Tensor:
        """E[x^k] over dims."""
        return self.features.power_sum(self.dims, k) / self.count

    @stat
    def mean(self) -> Tensor:
        return self.raw(1)

    @stat
    def max(self) -> Tensor:
        features = self.features
        if features.narrow:
            return wide(features.base.amax(self.dims, keepdim=True))  # exact in any dtype
        return features.x32.amax(self.dims, keepdim=True)

    @stat
    def mean_and_max(self) -> tuple[Tensor, Tensor]:
        """(mean, max), read together by the gap_gmp squeezes: in training, one autograd node for both."""
        if recording():
            return MeanMax.apply(self.features.kept, self.dims)
        return self.mean, self.max

    @stat
    def var(self) -> Tensor:
        """Biased variance E[(x - m)^2]: defined for a single value too.

        Summed from the centred map; the rounding r of m adds only r^2, some 1e-14 (mean / std)^2 of it.
        """
        return self.centred_mean(self.centred_sq)

    @stat
    def std(self) -> Tensor:
        # clamp, not +eps: exact wherever var > 0, and a finite (zero) gradient for a constant map
        return self.var.clamp_min(1e-12).sqrt()

    @stat
    def third_moment(self) -> Tensor:
        """Third central moment E[(x - m)^3], summed from the centred map d.

        The rounding r of m would add 3 r var; E[d] = r measures it, and the moment of d about its own
        mean, E[d^3] - 3 E[d] E[d^2] + 2 E[d]^3, removes it.
        """
        d = self.centred
        r = self.centred_mean(d)
        return self.centred_mean(self.centred_sq * d) - r * (3 * self.var - 2 * r * r)

    # -- the centred map of the second pass
    @stat
    def centred(self) -> Tensor:
        """d = x - mean, full size."""
        features = self.features
        if features.unscaled is not None and self.dims == (2, 3):
            # over (H, W) the scale is a constant per channel: s x - s m = s (x - m)
            return wide(features.scale) * features.unscaled.hw.centred
        # a narrow map minus its float32 mean is float32 (type promotion) without a float32 copy of the map
        return (features.base if features.narrow else features.x32) - self.mean

    @stat
    def centred_sq(self) -> Tensor:
        return self.centred * self.centred

    def centred_mean(self, t: Tensor) -> Tensor:
        return t.sum(self.dims, keepdim=True) / self.count

    @stat
    def pnorm4(self) -> Tensor:
        """(sum x^4)^(1/4)."""
        return root4(self.features.power_sum(self.dims, 4))


def root4(t: Tensor) -> Tensor:
    """t^(1/4) for t >= 0, with value 0 and gradient 0 where t == 0 (a plain `** 0.25`, as in the authors'
    code, has an infinite slope there, and the gradient of an all-zero map becomes NaN)."""
    nonzero = t > 0
    return torch.where(nonzero, torch.where(nonzero, t, 1.0).sqrt().sqrt(), 0.0)


class Features:
    """A feature map `x` (B, C, H, W), optionally times a per-channel `scale` (B, C, 1, 1).

    The scaled form is s3 = CE_b(s1) * s0 of the cell. Its power sums follow from the unscaled
    map's: over (H, W) the scale is a constant per channel (its centred map too), over C a sum of
    s^k x^k is a batched matmul. Only its max and its central moments over C need the product
    written out (`x32`).
    """

    def __init__(self, x: Tensor, scale: Tensor | None = None, unscaled: Features | None = None) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        self.base = x
        self.scale = scale
        self.unscaled = unscaled if scale is not None else None
        self._sums: dict[tuple[tuple[int, ...], int], Tensor] = {}
        self._stats: dict[tuple[tuple[int, ...], str], Any] = {}  # what `Moments` computed, by (axes, name)

    @property
    def hw(self) -> Moments:
        """Statistics per channel, over positions: (B, C, 1, 1)."""
        return Moments(self, (2, 3))

    @property
    def c(self) -> Moments:
        """Statistics per position, over channels: (B, 1, H, W)."""
        return Moments(self, (1,))

    @classmethod
    def of(cls, x: Tensor | Features) -> Features:
        return x if isinstance(x, Features) else cls(x)

    def scaled(self, scale: Tensor) -> Features:
        """This map times `scale` (B, C, 1, 1), with statistics of its own (powers shared with this one)."""
        if self.scale is not None:
            raise ValueError("a scaled map cannot be scaled again")
        return Features(self.base, scale, unscaled=self)

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    @property
    def device(self) -> torch.device:
        return self.base.device

    @lazy
    def x32(self) -> Tensor:
        """The map itself in float32 (for a scaled map: the product, written out once)."""
        if self.unscaled is None:
            return wide(self.base)
        return self.unscaled.x32 * wide(self.scale)

    @property
    def narrow(self) -> bool:
        """An unscaled float16/bfloat16 map: statistics that can read it as it is do (float32-accumulated sums, the
        max) rather than keep a float32 copy twice its size (when exporting, every statistic reads `x32`)."""
        return self.unscaled is None and self.base.dtype in (torch.float16, torch.bfloat16) and not exporting()

    @property
    def kept(self) -> Tensor:
        """The map as the hand-written backward passes take it and keep it: the input itself, in its own dtype
        (they widen it where they compute), or for a scaled map the product."""
        return self.base if self.unscaled is None else self.x32

    # -- powers of the unscaled map, each written out once
    @lazy
    def x2(self) -> Tensor:
        return self.x32 * self.x32

    @lazy
    def x3(self) -> Tensor:
        return self.x2 * self.x32

    @lazy
    def x4(self) -> Tensor:
        if "x2" in self.__dict__ or exporting():
            return self.x2 * self.x2
        if recording():
            return FourthPower.apply(self.kept)
        # inference, nobody needs x^2: square it in place, one fresh full-size buffer instead of two
        if self.narrow and "x32" not in self.__dict__:
            x2 = self.base.float().square_()  # a fresh float32 copy, squared in place
        else:
            x2 = self.x32 * self.x32
        return x2.mul_(x2)

    def power(self, k: int) -> Tensor:
        return getattr(self, ("x32", "x2", "x3", "x4")[k - 1])  # only the power asked for is computed

    def spare_buffer(self, like: Tensor) -> Tensor | None:
        """Without autograd: a full-size buffer the statistics are done with, shaped and typed like `like`.

        The cell writes its output there once every edge has read this map, so inference allocates
        one full-size buffer per block, as an SE block does.
        """
        buf = self.__dict__.get("x4")
        if torch.is_grad_enabled() or exporting() or buf is None or buf.dtype != like.dtype or buf.shape != like.shape:
            return None
        del self.__dict__["x4"]
        return buf

    # -- power sums
    def power_sum(self, dims: tuple[int, ...], k: int) -> Tensor:
        """Sum of (this map)^k over `dims` (kept), k in 1..4, cached."""
        key = (dims, k)
        if key not in self._sums:
            self._sums[key] = self._power_sum(dims, k)
        return self._sums[key]

    def _power_sum(self, dims: tuple[int, ...], k: int) -> Tensor:
        if k == 1 and self.narrow:
            return self.base.sum(dims, keepdim=True, dtype=torch.float32)
        source = self.unscaled or self
        if dims == (1,):
            weights = None if self.unscaled is None else _powers(wide(self.scale).flatten(1), k)
            if k == 4 and "x4" not in source.__dict__ and recording():
                # in training, a map whose x^4 no other statistic has asked for: summed without keeping it
                return ChannelFourthSum.apply(source.kept, weights)
            return source.channel_sum(source.power(k), weights)
        if self.unscaled is not None:  # over (H, W) the scale is a per-channel constant
            return _powers(wide(self.scale), k) * self.unscaled.power_sum(dims, k)
        return self.power(k).sum(dims, keepdim=True)

    def channel_sum(self, values: Tensor, weights: Tensor | None = None) -> Tensor:
        """Sum over C of weights (B, C) * values (B, C, H, W) -> (B, 1, H, W) (`weighted_channel_sum`)."""
        if weights is None and recording():
            return ChannelSum.apply(values)
        return weighted_channel_sum(values, weights)

    def channel_affine_sq_sum(self, scale: Tensor, shift: Tensor) -> Tensor:
        """Sum over C of (scale * d + shift)^2, d = this map centred per channel over (H, W), for per-channel
        (B or 1, C, 1, 1) scale and shift: the sum of squares of an instance-normalised map.

        Expanded as scale^2 d^2 + 2 scale shift d + shift^2: two matmuls over d^2 and d, which the variance
        over (H, W) has written out already. Centred, each term is about the size of the sum; expanded
        around x instead, scale^2 x^2 grows with (mean / std)^2 and the sum drowns in its rounding.
        """
        hw = self.hw
        b, c = self.shape[:2]
        a, s = scale.expand(b, c, 1, 1).flatten(1), shift.expand(b, c, 1, 1).flatten(1)
        return (self.channel_sum(hw.centred_sq, a * a) + self.channel_sum(hw.centred, 2 * a * s)
                + (s * s).sum(1).view(b, 1, 1, 1))


def _powers(t: Tensor, k: int) -> Tensor:
    """t^k by multiplies (k in 1..4)."""
    if k == 1:
        return t
    t2 = t * t
    return t2 if k == 2 else t2 * (t if k == 3 else t2)


def exporting() -> bool:
    """True while the forward is traced into a graph: torch.jit.trace, torch.compile, torch.export (and the
    ONNX export built on it). The eager tricks that reuse buffers in place, fold the batch into conv groups
    or cache tensors by size give way there to plain ops of the same values, which every tracer can
    carry with dynamic batch and spatial sizes."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def recording() -> bool:
    """True while autograd records an eager forward: the statistics with hand-written backward passes
    (`sase.ops.autograd`) serve there; without autograd, or traced, the plain ops do."""
    return torch.is_grad_enabled() and not exporting()


def at_least_one(n: int | Tensor) -> int | Tensor:
    """max(n, 1) for a product of sizes that torch.export keeps symbolic and torch.jit.trace records as a
    tensor, without fixing it to the traced input's value."""
    if isinstance(n, Tensor):
        return n.clamp_min(1)
    return torch.sym_max(n, 1)


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
