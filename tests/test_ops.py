"""Every op of every set, from the registries: shapes, finiteness, gradients, precision of the statistics.

Values against restated definitions, and autocast, are in test_op_values.py.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from sase.ops import OPS, Features, create_op
from sase.ops.common import adaptive_resize

CHANNELS = 16
SIZES = [(1, 1), (2, 2), (7, 5), (32, 32), (33, 47)]
ALL_OPS = [(s, n) for s, registry in OPS.items() for n in registry]


def op_input(op_set: str, h: int, w: int, batch: int = 1, channels: int = CHANNELS) -> torch.Tensor:
    """A random input of the shape each set reads: squeeze (B,C,H,W), channel exc. (B,C,1,1), spatial exc. (B,1,H,W)."""
    shape = {
        "channel_squeeze": (batch, channels, h, w),
        "spatial_squeeze": (batch, channels, h, w),
        "channel_excitation": (batch, channels, 1, 1),
        "spatial_excitation": (batch, 1, h, w),
    }[op_set]
    return torch.randn(shape)


def out_shape(op_set: str, x: torch.Tensor) -> tuple[int, ...]:
    b, c, h, w = x.shape
    return {
        "channel_squeeze": (b, c, 1, 1),
        "spatial_squeeze": (b, 1, h, w),
        "channel_excitation": (b, c, 1, 1),
        "spatial_excitation": (b, 1, h, w),
    }[op_set]


def test_registries_hold_the_28_spec_names():
    assert {s: list(r) for s, r in OPS.items()} == {
        "channel_squeeze": ["gap", "l2", "pnorm", "gap_gmp", "gap_std", "gap_skew", "cov"],
        "channel_excitation": ["fc", "conv1d_3", "conv1d_5", "conv1d_7", "conv1d_3x2", "conv1d_3x3", "affine"],
        "spatial_squeeze": ["gap", "l2", "pnorm", "gap_gmp", "gap_std", "gap_skew", "cov"],
        "spatial_excitation": ["sep_3", "sep_5", "conv_3", "conv_5", "conv_7", "conv_3x2", "affine"],
    }


@pytest.mark.parametrize("op_set,name", ALL_OPS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_shape_any_size_batch_one_eval(op_set, name, size):
    op = create_op(op_set, name, CHANNELS).eval()
    x = op_input(op_set, *size)
    with torch.no_grad():
        y = op(x)
    assert y.shape == out_shape(op_set, x)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("op_set,name", ALL_OPS)
@pytest.mark.parametrize("kind", ["random", "zero"])
def test_finite_values_and_gradients(op_set, name, kind):
    op = create_op(op_set, name, CHANNELS).train()
    x = op_input(op_set, 6, 5, batch=2)
    if kind == "zero":
        x = torch.zeros_like(x)
    x.requires_grad_()
    y = op(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    for pname, p in op.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_unknown_names_are_named():
    with pytest.raises(ValueError, match="valid choices: gap, l2"):
        create_op("channel_squeeze", "max", 8)
    with pytest.raises(ValueError, match="valid sets"):
        create_op("temporal_squeeze", "gap", 8)


@pytest.mark.parametrize("op_set", ["channel_squeeze", "spatial_squeeze"])
def test_squeeze_ops_accept_shared_features(op_set):
    """A Features passed in gives the same result as the raw tensor (the cell and supernet rely on it)."""
    x = torch.randn(2, CHANNELS, 5, 6)
    features = Features(x)
    for name, factory in OPS[op_set].items():
        op = factory(CHANNELS).eval()
        torch.testing.assert_close(op(features), op(x), msg=name)


def test_channel_l2_closed_form_equals_instance_norm_route():
    op = create_op("channel_squeeze", "l2", CHANNELS)
    with torch.no_grad():
        op.weight.uniform_(0.5, 2)
        op.bias.uniform_(-1, 1)
    x = torch.randn(3, CHANNELS, 7, 9) * 4 + 2
    y = F.instance_norm(x, weight=op.weight, bias=op.bias, eps=op.eps)
    expected = y.square().sum((2, 3), keepdim=True).sqrt()
    torch.testing.assert_close(op(x), expected, rtol=1e-4, atol=1e-4)


def test_spatial_l2_is_instance_norm_then_norm_over_channels():
    op = create_op("spatial_squeeze", "l2", CHANNELS)
    with torch.no_grad():
        op.weight.uniform_(0.5, 2)
        op.bias.uniform_(-1, 1)
    x = torch.randn(2, CHANNELS, 5, 4)
    y = F.instance_norm(x, weight=op.weight, bias=op.bias, eps=op.eps)
    torch.testing.assert_close(op(x), y.square().sum(1, keepdim=True).sqrt(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op_set,dims", [("channel_squeeze", (2, 3)), ("spatial_squeeze", (1,))])
def test_parameter_free_squeezes_match_their_definitions(op_set, dims):
    x = torch.randn(2, CHANNELS, 5, 6)
    gap = create_op(op_set, "gap", CHANNELS)
    pnorm = create_op(op_set, "pnorm", CHANNELS)
    torch.testing.assert_close(gap(x), x.mean(dims, keepdim=True))
    torch.testing.assert_close(pnorm(x), x.pow(4).sum(dims, keepdim=True).pow(0.25))


@pytest.mark.parametrize("op_set,dims", [("channel_squeeze", (2, 3)), ("spatial_squeeze", (1,))])
def test_mixed_statistics_match_their_definitions(op_set, dims):
    x = torch.randn(2, CHANNELS, 5, 6)
    mean = x.mean(dims, keepdim=True)
    seconds = {
        "gap_gmp": x.amax(dims, keepdim=True),
        "gap_std": x.std(dims, correction=0, keepdim=True),
        "gap_skew": (x - mean).pow(3).mean(dims, keepdim=True),
    }
    for name, second in seconds.items():
        op = create_op(op_set, name, CHANNELS)
        with torch.no_grad():
            op.mix.weight.copy_(torch.tensor([0.7, -0.3]))
        torch.testing.assert_close(op(x), torch.relu(0.7 * mean - 0.3 * second), msg=name)


def test_scaled_features_statistics_equal_those_of_the_product():
    """The cell's s3 = scale * s0: mean and 4-norm over C read without writing the product must agree."""
    x = torch.randn(2, CHANNELS, 5, 6, dtype=torch.float64).float()
    scale = torch.rand(2, CHANNELS, 1, 1) + 0.1
    lazy, product = Features(x).scaled(scale), Features(x * scale)
    for stat in ["mean", "pnorm4", "max", "std", "third_moment"]:
        torch.testing.assert_close(getattr(lazy.c, stat), getattr(product.c, stat), msg=stat)
        torch.testing.assert_close(getattr(lazy.hw, stat), getattr(product.hw, stat), msg=stat)


def test_scaled_pnorm_gradient_is_finite_at_zero():
    x = torch.zeros(1, CHANNELS, 3, 3, requires_grad=True)
    scale = torch.rand(1, CHANNELS, 1, 1, requires_grad=True)
    Features(x).scaled(scale).c.pnorm4.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(scale.grad).all()


def test_batchnorm_ops_say_why_batch_one_fails_in_training():
    op = create_op("channel_squeeze", "cov", 4).train()  # one pooled row: BatchNorm sees a single value
    x = op_input("channel_squeeze", 1, 1, batch=1, channels=4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        op(x)


def test_single_channel_conv_equals_a_plain_conv():
    from sase.ops.spatial_excitation import SingleChannelConv2d

    for kernel in [(3, 3), (1, 5), (7, 1)]:
        conv = SingleChannelConv2d(kernel)
        x = torch.randn(3, 1, 9, 6)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, padding=conv.padding))


@pytest.mark.parametrize("ratio", [5, 100, 1000])
@pytest.mark.parametrize("axis", ["hw", "c"])
def test_central_moments_stay_accurate_far_from_zero(axis, ratio):
    """Variance and third moment of a float32 map with |mean| / std = ratio, against float64 numpy / scipy.

    Summed from raw powers, E[x^3] - 3 m E[x^2] + 2 m^3 keeps an error of about 1e-7 * ratio^3 times
    std^3: a tenth of the skewness at 100, a hundred times it at 1000.
    """
    b, c, h, w = 2, 32, 9, 7
    z = np.random.default_rng(ratio).standard_normal((b, c, h, w))
    z = z + 0.5 * z * z  # skewed: a third moment to get right
    axes = (2, 3) if axis == "hw" else (1,)
    z = (z - z.mean(axes, keepdims=True)) / z.std(axes, keepdims=True)
    x = (ratio + z).astype(np.float32)  # mean = ratio, std = 1 along the axis
    stats = getattr(Features(torch.from_numpy(x)), axis)
    samples = x.astype(np.float64).reshape(b, c, h * w) if axis == "hw" else x.astype(np.float64)
    along = -1 if axis == "hw" else 1
    var = np.var(samples, axis=along)  # biased, as the statistic
    skew = scipy.stats.skew(samples, axis=along, bias=True)
    got_var = stats.var.double().numpy().reshape(var.shape)
    got_skew = (stats.third_moment.double() / stats.var.double().pow(1.5)).numpy().reshape(skew.shape)
    # near float32's own rounding at any offset: the rounding of the mean, uncorrected, would add
    # 3e-7 * ratio to the skewness
    assert np.abs(got_var / var - 1).max() < 1e-5
    assert np.abs(got_skew - skew).max() < 2e-5


def test_importing_the_package_builds_nothing_and_draws_no_random_numbers():
    """In a fresh interpreter: the global RNG stream is where it was, and the supernet is not loaded."""
    code = ("import sys, torch\n"
            "before = torch.random.get_rng_state()\n"
            "import sase, sase.search, sase.attention, sase.ops\n"
            "assert torch.equal(before, torch.random.get_rng_state()), 'importing sase drew random numbers'\n"
            "assert 'sase.search.supernet' not in sys.modules, 'importing sase.search loaded the supernet'\n"
            "from sase.search import SearchConfig\n"
            "assert torch.equal(before, torch.random.get_rng_state()), 'loading SearchConfig drew random numbers'\n"
            "from sase.search import Supernet, parameter_free\n"
            "assert parameter_free('channel_squeeze', 'gap') and not parameter_free('channel_excitation', 'fc')\n"
            "assert torch.equal(before, torch.random.get_rng_state()), 'loading the supernet drew random numbers'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_statistics_write_out_only_the_powers_they_need():
    with torch.no_grad():
        features = Features(torch.randn(2, 8, 5, 5))
        features.hw.mean, features.c.mean, features.hw.max
        assert not {"x2", "x3", "x4"} & set(vars(features)), "a power of the map was written out needlessly"
        features.c.pnorm4
        assert "x4" in vars(features) and "x3" not in vars(features)


def test_in_training_a_lone_pnorm_over_channels_keeps_no_power_of_the_map():
    features = Features(torch.randn(2, 8, 5, 5, requires_grad=True))
    features.scaled(torch.rand(2, 8, 1, 1)).c.pnorm4, features.c.pnorm4
    assert not {"x2", "x3", "x4"} & set(vars(features))
    features.hw.pnorm4  # a sum over (H, W) reads x^4 itself: written out once, then shared
    assert "x4" in vars(features) and "x2" not in vars(features)


@pytest.mark.parametrize("size,out", [((16, 16), (8, 8)), ((8, 8), (16, 16)), ((5, 7), (8, 8)), ((8, 8), (7, 5)),
                                      ((13, 9), (8, 8)), ((1, 1), (8, 8)), ((8, 8), (1, 1))])
def test_adaptive_resize_is_adaptive_average_pooling(size, out):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, *out, dtype=torch.float64)
    got, want = adaptive_resize(x, out), F.adaptive_avg_pool2d(x, out)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0], rtol=0, atol=1e-12)
