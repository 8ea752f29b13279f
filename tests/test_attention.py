"""Every attention module of the zoo: shapes at odd sizes, finite gradients, factory keywords.

Values against restated definitions, and autocast, are in test_op_values.py.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sase.attention import ATTENTIONS, create_attention
from sase.attention.fca import TOP16_U, TOP16_V, dct_filters
from sase.attention.gsop import covariance

NAMES = list(ATTENTIONS)
# 24 is not a multiple of 16 (FcaNet's frequency groups, the C/16 reductions)
CHANNELS = (32, 24)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _build(name: str, channels: int) -> nn.Module:
    return create_attention(name, channels)


def _check_grads(module: nn.Module, x: Tensor) -> None:
    y = module(x)
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (7, 5), (33, 47)])
def test_shape_any_size_batch1_eval(name: str, channels: int, size: tuple[int, int]) -> None:
    module = _build(name, channels).eval()
    x = torch.randn(1, channels, *size)
    with torch.no_grad():
        y = module(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("name", NAMES)
def test_finite_gradients_train(name: str, channels: int) -> None:
    module = _build(name, channels).train()
    _check_grads(module, torch.randn(2, channels, 8, 8, requires_grad=True))


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_input(name: str) -> None:
    # sqrt at 0 and variance 0 are where a NaN gradient would come from
    module = _build(name, 32).train()
    _check_grads(module, torch.zeros(2, 32, 8, 8, requires_grad=True))


@pytest.mark.parametrize("name", NAMES)
def test_create_attention_device_dtype(name: str) -> None:
    module = create_attention(name, 32, device="cpu", dtype=torch.float32)
    assert module(torch.randn(2, 32, 5, 5)).shape == (2, 32, 5, 5)
    # dtype must reach every parameter and buffer, not just be swallowed
    module = create_attention(name, 32, device="cpu", dtype=torch.float64)
    for t in [*module.parameters(), *module.buffers()]:
        assert t.device.type == "cpu"
        assert not t.is_floating_point() or t.dtype == torch.float64
    assert module.eval()(torch.randn(1, 32, 5, 5, dtype=torch.float64)).dtype == torch.float64


def test_gct_identity_at_init() -> None:
    module = create_attention("gct", 32)
    x = torch.randn(2, 32, 7, 5)
    assert torch.equal(module(x), x)


def test_simam_matches_formula() -> None:
    module = create_attention("simam", 8)
    x = torch.randn(2, 8, 5, 6)
    n = 5 * 6 - 1
    d = (x - x.mean(dim=[2, 3], keepdim=True)) ** 2
    energy = d / (4 * (d.sum(dim=[2, 3], keepdim=True) / n + 1e-4)) + 0.5
    torch.testing.assert_close(module(x), x * torch.sigmoid(energy))


def test_fca_dct_filters_orthonormal() -> None:
    basis = dct_filters(16).flatten(1)  # (16, 49): one top16 frequency per channel
    torch.testing.assert_close(basis @ basis.T, torch.eye(16), atol=1e-5, rtol=0)
    # the DC filter is the constant 1/7, so its coefficient is 7x the mean of the pooled map
    torch.testing.assert_close(basis[0], torch.full((49,), 1 / 7))
    assert (TOP16_U[0], TOP16_V[0]) == (0, 0)


@pytest.mark.parametrize("channels", [24, 40, 8])
def test_fca_groups_even(channels: int) -> None:
    filters = dct_filters(channels).flatten(1)
    num_freq = min(16, channels)
    distinct = torch.unique(filters, dim=0)
    assert len(distinct) == num_freq
    sizes = [int((filters == f).all(1).sum()) for f in distinct]
    assert max(sizes) - min(sizes) <= 1


def test_srm_matches_formula() -> None:
    channels = 6
    module = create_attention("srm", channels).eval()
    with torch.no_grad():
        module.cfc.copy_(torch.randn(channels, 2))
        module.bn.weight.copy_(torch.rand(channels) + 0.5)
        module.bn.bias.copy_(torch.randn(channels))
        module.bn.running_mean.copy_(torch.randn(channels))
        module.bn.running_var.copy_(torch.rand(channels) + 0.5)
    x = torch.randn(3, channels, 4, 5)
    mean = x.mean((2, 3))
    std = (x.var((2, 3), correction=0) + module.eps).sqrt()
    z = module.cfc[:, 0] * mean + module.cfc[:, 1] * std  # (B, C)
    bn = module.bn
    z_hat = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(module(x), x * torch.sigmoid(z_hat)[:, :, None, None])


def test_gsop_covariance_known() -> None:
    # channel 1 = 2 * channel 0, positions 1..4: var 1.25, so cov = [[1.25, 2.5], [2.5, 5]]
    a = torch.arange(1.0, 5.0).view(1, 1, 2, 2)
    x = torch.cat([a, 2 * a], dim=1)
    expected = torch.tensor([[[1.25, 2.5], [2.5, 5.0]]])
    torch.testing.assert_close(covariance(x), expected)
    y = torch.randn(3, 5, 4, 6)
    torch.testing.assert_close(covariance(y)[1], torch.cov(y[1].flatten(1), correction=0))


def test_gsop_reduced_channels_keyword() -> None:
    module = create_attention("gsop", 32, reduced_channels=16)
    assert module.row_conv.weight.shape == (64, 1, 16, 1)
    assert module(torch.randn(2, 32, 3, 3)).shape == (2, 32, 3, 3)


def test_registry_has_the_zoo() -> None:
    # the eight compared modules, the no-attention baseline and SASE, one name each
    assert {"none", "se", "eca", "cbam", "srm", "gct", "fca", "gsop", "simam", "sase"} <= set(ATTENTIONS)
