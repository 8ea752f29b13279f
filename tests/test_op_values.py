"""Values of every op of every set and every zoo module, against its definition restated here.

Each reference below is written from the op's definition (Wang et al., 2024 for the SASE ops; the
cited paper for each zoo module) with plain float64 tensor arithmetic: convolutions as sums of
shifted maps, adaptive pooling as explicit bins, BatchNorm as its formula. Only the learned numbers
come from the module under test, and each reference checks their shapes against the definition
(a kernel of 5 where the definition says 5). The tests iterate the registries, so an op or module
added without a reference fails here.

The autocast tests run the float32 modules under torch.autocast with inputs of magnitude 100-300,
where x^4 and sums of squares overflow float16, and compare them with the same references.
"""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sase import EDGES, Genotype, SASEBlock
from sase.attention import ATTENTIONS, create_attention
from sase.ops import OPS, create_op

ALL_OPS = [(s, n) for s, registry in OPS.items() for n in registry]
CASES = [(14, (5, 7)), (32, (12, 10)), (16, (1, 1))]  # (channels, (H, W)): below, above and at the 8x8 grid
Reference = Callable[[nn.Module, Tensor, bool], Tensor]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)  # the modules' own init, under randomise(): the same whatever ran before


def p64(t: Tensor) -> Tensor:
    return t.detach().double()


# -- building blocks, each written out
def corr1d(x: Tensor, w: Tensor) -> Tensor:
    """(B, L) cross-correlated with an odd kernel w (k,), zero padding k // 2: y_i = sum_j w_j x_{i+j-k//2}."""
    k, n = len(w), x.shape[1]
    xp = F.pad(x, (k // 2, k // 2))
    return sum(w[j] * xp[:, j:j + n] for j in range(k))


def corr2d(x: Tensor, w: Tensor) -> Tensor:
    """(B, H, W) cross-correlated with w (kh, kw), zero padding kh // 2, kw // 2 (same size out)."""
    kh, kw = w.shape
    h, wd = x.shape[-2:]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2))
    return sum(w[u, v] * xp[..., u:u + h, v:v + wd] for u in range(kh) for v in range(kw))


def adaptive_mean(x: Tensor, dim: int, size: int) -> Tensor:
    """Adaptive average pooling along one dim: bin i averages [floor(i n / m), ceil((i + 1) n / m))."""
    n = x.shape[dim]
    bins = [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
    return torch.cat([x.narrow(dim, a, b - a).mean(dim, keepdim=True) for a, b in bins], dim)


def batchnorm(v: Tensor, bn: nn.Module, train: bool) -> Tensor:
    """BatchNorm over dim 1: batch statistics (biased variance) in training, running ones in eval."""
    dims = [0, *range(2, v.dim())]
    shape = (1, -1) + (1,) * (v.dim() - 2)
    if train:
        mean, var = v.mean(dims, keepdim=True), v.var(dims, correction=0, keepdim=True)
    else:
        mean, var = p64(bn.running_mean).view(shape), p64(bn.running_var).view(shape)
    y = (v - mean) / torch.sqrt(var + bn.eps)
    return y * p64(bn.weight).view(shape) + p64(bn.bias).view(shape) if bn.affine else y


def conv_weights(module: nn.Module, kind: type) -> list[Tensor]:
    return [p64(m.weight) for m in module.modules() if isinstance(m, kind)]


def no_bias(*convs: nn.Module) -> None:
    assert all(c.bias is None for c in convs), "the definition has no bias here"


# -- channel squeeze: (B, C, H, W) -> (B, C, 1, 1), statistics over positions
HW = (2, 3)


def mixer(op: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """A 1x1 conv 2 -> 1 without bias over the two stacked statistics, then ReLU."""
    w = p64(op.mix.weight).flatten()
    assert w.shape == (2,)
    return torch.relu(w[0] * a + w[1] * b)


def fourth_root(t: Tensor) -> Tensor:
    """t^(1/4) for t >= 0, its slope taken as 0 at t = 0 where the power's is infinite (a map scaled to zero
    by the channel refinement has a 4-norm of 0, and its gradient would be NaN)."""
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, 1.0).pow(0.25), 0.0)


def moments(x: Tensor, dims) -> tuple[Tensor, Tensor, Tensor]:
    mean = x.mean(dims, keepdim=True)
    d = x - mean
    return mean, (d ** 2).mean(dims, keepdim=True), (d ** 3).mean(dims, keepdim=True)


def std(var: Tensor) -> Tensor:
    """The biased standard deviation, floored at 1e-6 so that a constant map keeps a finite gradient."""
    return var.clamp_min(1e-12).sqrt()


def instance_norm(op: nn.Module, x: Tensor) -> Tensor:
    """Each channel normalised over (H, W) (biased variance), then a per-channel scale and shift."""
    mean, var, _ = moments(x, HW)
    return (x - mean) / torch.sqrt(var + op.eps) * p64(op.weight).view(1, -1, 1, 1) + p64(op.bias).view(1, -1, 1, 1)


def covariance_head(head: nn.Module, z: Tensor, train: bool) -> Tensor:
    """z (B, R, N): covariance of the R rows / (R - 1), BatchNorm, row-wise conv, ReLU, 1x1 conv, no biases."""
    r = z.shape[1]
    no_bias(head.row_conv, head.proj)
    zc = z - z.mean(2, keepdim=True)
    cov = torch.einsum("bin,bjn->bij", zc, zc) / max(r - 1, 1)
    cov = batchnorm(cov.unsqueeze(-1), head.bn, train).squeeze(-1)  # row i is BatchNorm channel i
    row = p64(head.row_conv.weight)
    assert row.shape == (r, 1, r, 1)
    y = torch.relu((cov * row.view(1, r, r)).sum(-1))  # each row to one value by its own filter
    proj = p64(head.proj.weight).flatten(1)  # (out, R)
    return torch.einsum("or,br->bo", proj, y)[..., None, None]


def channel_cov(op: nn.Module, x: Tensor, train: bool) -> Tensor:
    b, c, h, w = x.shape
    rows = max(1, c // 4)
    z = adaptive_mean(x.reshape(b, c, h * w), 1, rows)  # (B, C/4, HW)
    return covariance_head(op.head, z, train)


CHANNEL_SQUEEZE: dict[str, Reference] = {
    "gap": lambda op, x, train: x.mean(HW, keepdim=True),
    "l2": lambda op, x, train: instance_norm(op, x).pow(2).sum(HW, keepdim=True).sqrt(),
    "pnorm": lambda op, x, train: fourth_root(x.pow(4).sum(HW, keepdim=True)),
    "gap_gmp": lambda op, x, train: mixer(op, x.mean(HW, keepdim=True), x.amax(HW, keepdim=True)),
    "gap_std": lambda op, x, train: mixer(op, moments(x, HW)[0], std(moments(x, HW)[1])),
    "gap_skew": lambda op, x, train: mixer(op, moments(x, HW)[0], moments(x, HW)[2]),
    "cov": channel_cov,
}


# -- spatial squeeze: (B, C, H, W) -> (B, 1, H, W), statistics over channels
def spatial_cov(op: nn.Module, x: Tensor, train: bool) -> Tensor:
    b, c, h, w = x.shape
    pooled = adaptive_mean(adaptive_mean(x, 2, 8), 3, 8)  # (B, C, 8, 8)
    z = pooled.flatten(2).transpose(1, 2)  # (B, 64, C): position rows observed over channels
    y = covariance_head(op.head, z, train).view(b, 1, 8, 8)
    return adaptive_mean(adaptive_mean(y, 2, h), 3, w)  # back to (B, 1, H, W)


SPATIAL_SQUEEZE: dict[str, Reference] = {
    "gap": lambda op, x, train: x.mean(1, keepdim=True),
    "l2": lambda op, x, train: instance_norm(op, x).pow(2).sum(1, keepdim=True).sqrt(),
    "pnorm": lambda op, x, train: fourth_root(x.pow(4).sum(1, keepdim=True)),
    "gap_gmp": lambda op, x, train: mixer(op, x.mean(1, keepdim=True), x.amax(1, keepdim=True)),
    "gap_std": lambda op, x, train: mixer(op, moments(x, 1)[0], std(moments(x, 1)[1])),
    "gap_skew": lambda op, x, train: mixer(op, moments(x, 1)[0], moments(x, 1)[2]),
    "cov": spatial_cov,
}


# -- channel excitation: (B, C, 1, 1) -> (B, C, 1, 1)
def fc(op: nn.Module, x: Tensor, train: bool) -> Tensor:
    w1, w2 = (w.flatten(1) for w in conv_weights(op, nn.Conv2d))
    c = x.shape[1]
    assert w1.shape == (max(1, c // 16), c) and w2.shape == (c, max(1, c // 16))
    no_bias(*(m for m in op.modules() if isinstance(m, nn.Conv2d)))
    return (w2 @ torch.relu(w1 @ x.flatten(1).T)).T[..., None, None]  # no sigmoid (Wang et al.)


def conv1d_gate(kernel: int, depth: int) -> Reference:
    def ref(op: nn.Module, x: Tensor, train: bool) -> Tensor:
        weights = conv_weights(op, nn.Conv1d)
        assert [w.shape for w in weights] == [(1, 1, kernel)] * depth
        no_bias(*(m for m in op.modules() if isinstance(m, nn.Conv1d)))
        y = x.flatten(1)  # the channels as a 1-D signal
        for i, w in enumerate(weights):
            y = corr1d(torch.relu(y) if i else y, w.flatten())
        return torch.sigmoid(y)[..., None, None]

    return ref


def affine(op: nn.Module, x: Tensor, train: bool) -> Tensor:
    return torch.sigmoid(p64(op.weight) * x + p64(op.bias))


CHANNEL_EXCITATION: dict[str, Reference] = {
    "fc": fc,
    "conv1d_3": conv1d_gate(3, 1),
    "conv1d_5": conv1d_gate(5, 1),
    "conv1d_7": conv1d_gate(7, 1),
    "conv1d_3x2": conv1d_gate(3, 2),
    "conv1d_3x3": conv1d_gate(3, 3),
    "affine": affine,
}


# -- spatial excitation: (B, 1, H, W) -> (B, 1, H, W)
def conv_gate(kernels: list[tuple[int, int]], relu_between: bool) -> Reference:
    def ref(op: nn.Module, x: Tensor, train: bool) -> Tensor:
        weights = conv_weights(op, nn.Conv2d)
        assert [tuple(w.shape) for w in weights] == [(1, 1, *k) for k in kernels]
        no_bias(*(m for m in op.modules() if isinstance(m, nn.Conv2d)))
        y = x[:, 0]
        for i, w in enumerate(weights):
            y = corr2d(torch.relu(y) if i and relu_between else y, w[0, 0])
        return torch.sigmoid(y)[:, None]

    return ref


def spatial_affine(op: nn.Module, x: Tensor, train: bool) -> Tensor:
    assert op.weight.numel() == 1 and op.bias.numel() == 1  # size-free: one a, one b
    return torch.sigmoid(p64(op.weight) * x + p64(op.bias))


SPATIAL_EXCITATION: dict[str, Reference] = {
    "sep_3": conv_gate([(1, 3), (3, 1)], relu_between=False),
    "sep_5": conv_gate([(1, 5), (5, 1)], relu_between=False),
    "conv_3": conv_gate([(3, 3)], relu_between=False),
    "conv_5": conv_gate([(5, 5)], relu_between=False),
    "conv_7": conv_gate([(7, 7)], relu_between=False),
    "conv_3x2": conv_gate([(3, 3), (3, 3)], relu_between=True),
    "affine": spatial_affine,
}

OP_REFERENCES: dict[str, dict[str, Reference]] = {
    "channel_squeeze": CHANNEL_SQUEEZE,
    "channel_excitation": CHANNEL_EXCITATION,
    "spatial_squeeze": SPATIAL_SQUEEZE,
    "spatial_excitation": SPATIAL_EXCITATION,
}


# -- the zoo: (B, C, H, W) -> (B, C, H, W)
def se(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Hu et al. 2018: GAP, FC C -> C/16, ReLU, FC, sigmoid, scale."""
    c = x.shape[1]
    w1, w2 = p64(m.fc1.weight).flatten(1), p64(m.fc2.weight).flatten(1)
    assert w1.shape[1] == c and abs(w1.shape[0] - c / 16) <= 0.5  # C/16, to the nearest unit
    hidden = torch.relu(x.mean(HW) @ w1.T + p64(m.fc1.bias))
    return x * torch.sigmoid(hidden @ w2.T + p64(m.fc2.bias))[..., None, None]


def eca(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Wang et al. 2020: GAP, 1-D conv across channels with k = |log2(C) / 2 + 1/2| made odd, sigmoid, scale."""
    c = x.shape[1]
    t = int(abs(math.log2(c) / 2 + 0.5))
    k = t if t % 2 else t + 1
    w = p64(m.conv.weight)
    assert w.shape == (1, 1, k)
    return x * torch.sigmoid(corr1d(x.mean(HW), w.flatten()))[..., None, None]


def cbam(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Woo et al. 2018: channel gate (shared MLP on GAP and GMP, summed, sigmoid), then spatial gate."""
    ch = m.channel
    no_bias(ch.fc1, ch.fc2)
    w1, w2 = p64(ch.fc1.weight).flatten(1), p64(ch.fc2.weight).flatten(1)
    mlp = lambda v: torch.relu(v @ w1.T) @ w2.T
    x = x * torch.sigmoid(mlp(x.mean(HW)) + mlp(x.amax(HW)))[..., None, None]
    conv = m.spatial.conv
    w = p64(conv.conv.weight)  # (1, 2, 7, 7): over the stacked (mean, max) maps
    assert w.shape == (1, 2, 7, 7)
    a = corr2d(x.mean(1), w[0, 0]) + corr2d(x.amax(1), w[0, 1])
    a = batchnorm(a[:, None], conv.bn, train)
    return x * torch.sigmoid(a)


def srm(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Lee et al. 2019: per-channel (mean, std), channel-wise FC, BatchNorm, sigmoid, scale."""
    mean, var, _ = moments(x, HW)
    cfc = p64(m.cfc)
    z = cfc[:, 0].view(1, -1, 1, 1) * mean + cfc[:, 1].view(1, -1, 1, 1) * torch.sqrt(var + m.eps)
    return x * torch.sigmoid(batchnorm(z, m.bn, train))


def gct(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Yang et al. 2020: embedding s = a sqrt(sum x^2 + eps), channel normalisation, tanh gate."""
    c, eps = x.shape[1], m.eps
    s = p64(m.alpha) * torch.sqrt(x.pow(2).sum(HW, keepdim=True) + eps)
    s_hat = math.sqrt(c) * s / torch.sqrt(s.pow(2).sum(1, keepdim=True) + eps)
    return x * (1 + torch.tanh(p64(m.gamma) * s_hat + p64(m.beta)))


# FcaNet's 'top16' frequencies on the 7x7 grid, (u along H, v along W), Qin et al. 2021
FCA_TOP16 = [(0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0),
             (5, 0), (1, 6), (3, 0), (0, 4), (0, 6), (0, 3), (3, 5), (2, 2)]


def fca(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Qin et al. 2021: pool to 7x7, one 2-D DCT coefficient per channel group, FC, ReLU, FC, sigmoid."""
    c = x.shape[1]
    n = 7
    pos = torch.arange(n, dtype=torch.float64)

    def basis(f: int) -> Tensor:  # orthonormal DCT-II
        return torch.cos(math.pi * f * (pos + 0.5) / n) * math.sqrt((1 if f == 0 else 2) / n)

    freqs = FCA_TOP16[:min(16, c)]
    group = [i * len(freqs) // c for i in range(c)]  # contiguous groups of channels per frequency
    filters = torch.stack([torch.outer(basis(freqs[g][0]), basis(freqs[g][1])) for g in group])  # (C, 7, 7)
    pooled = adaptive_mean(adaptive_mean(x, 2, n), 3, n)
    y = (pooled * filters).sum(HW)  # (B, C)
    w1, w2 = p64(m.fc[0].weight), p64(m.fc[2].weight)
    assert w1.shape == (max(1, c // 16), c) and m.fc[0].bias is None and m.fc[2].bias is None
    return x * torch.sigmoid(torch.relu(y @ w1.T) @ w2.T)[..., None, None]


def gsop(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Gao et al. 2019: 1x1 conv (BN, ReLU), channel covariance over positions, row-wise conv, FC, sigmoid."""
    conv, bn = m.reduce[0], m.reduce[1]
    d = conv.out_channels
    z = torch.einsum("oc,bchw->bohw", p64(conv.weight).flatten(1), x) + p64(conv.bias).view(1, -1, 1, 1)
    z = torch.relu(batchnorm(z, bn, train)).flatten(2)  # (B, D, HW)
    zc = z - z.mean(2, keepdim=True)
    cov = torch.einsum("bin,bjn->bij", zc, zc) / z.shape[2]  # (B, D, D)
    row = p64(m.row_conv.weight)  # (4D, 1, D, 1): 4 filters per row, each spanning its row
    assert row.shape == (4 * d, 1, d, 1)
    y = torch.einsum("bij,ikj->bik", cov, row.view(d, 4, d)).reshape(x.shape[0], 4 * d)
    y = torch.relu(y + p64(m.row_conv.bias))
    gate = torch.sigmoid(y @ p64(m.fc.weight).flatten(1).T + p64(m.fc.bias))
    return x * gate[..., None, None]


def simam(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    """Yang et al. 2021: E = d / (4 (v + lambda)) + 0.5, d = (x - mu)^2, v = sum d / (HW - 1)."""
    h, w = x.shape[2:]
    d = (x - x.mean(HW, keepdim=True)) ** 2
    v = d.sum(HW, keepdim=True) / max(h * w - 1, 1)
    return x * torch.sigmoid(d / (4 * (v + 1e-4)) + 0.5)


def sase_block(block: nn.Module, x: Tensor, train: bool) -> Tensor:
    """The SASE cell (Wang et al. 2024) from the op references: six edges, merge, Y = X (1 + (s2 + s5) / 2)."""
    refs = [OP_REFERENCES[e.op_set][name] for e, name in zip(EDGES, block.genotype.ops)]
    op = lambda i, v: refs[i](block.edges[i], v, train)
    s1 = op(0, x)
    s2 = op(1, s1)
    s3 = op(2, s1) * x
    w = p64(block.merge.conv.weight).flatten()  # 1x1 conv 2 -> 1, no bias
    no_bias(block.merge.conv)
    s4 = torch.relu(batchnorm(w[0] * op(3, s3) + w[1] * op(4, x), block.merge.bn, train))
    s5 = op(5, s4)
    return x * (1 + (s2 + s5) / 2)


ZOO_REFERENCES: dict[str, Reference] = {
    "none": lambda m, x, train: x,
    "se": se, "eca": eca, "cbam": cbam, "srm": srm, "gct": gct, "fca": fca, "gsop": gsop, "simam": simam,
    "sase": sase_block,
}


# -- inputs and parameters
def input_shape(op_set: str, batch: int, channels: int, size: tuple[int, int]) -> tuple[int, ...]:
    """What each set reads: channel excitation (B, C, 1, 1), spatial excitation (B, 1, H, W), else (B, C, H, W)."""
    shape = {"channel_excitation": (batch, channels, 1, 1), "spatial_excitation": (batch, 1, *size)}
    return shape.get(op_set, (batch, channels, *size))


def op_input(op_set: str, batch: int, channels: int, size: tuple[int, int], gen: torch.Generator) -> Tensor:
    """Skewed values with a random offset and scale per channel: every statistic differs between channels."""
    shape = input_shape(op_set, batch, channels, size)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    offset = torch.randn(1, shape[1], 1, 1, generator=gen, dtype=torch.float64)
    scale = 0.5 + torch.rand(1, shape[1], 1, 1, generator=gen, dtype=torch.float64)
    return offset + scale * (z + 0.5 * z * z)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and running statistic off its init, so no formula hides behind ones and zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5 + p.double())
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64) * 0.5)
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=torch.float64))
    return module


def assert_matches(out: Tensor, ref: Tensor, rtol: float, msg: str) -> None:
    assert out.shape == ref.shape, msg
    assert torch.isfinite(out).all(), msg
    out = out.detach()
    err = float((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    assert err <= rtol, f"{msg}: relative error {err:.2e} > {rtol:.0e}"


# -- float64 values
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels,size", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("op_set,name", ALL_OPS)
def test_op_matches_its_definition(op_set, name, channels, size, train):
    reference = OP_REFERENCES[op_set][name]  # a new op fails here until its definition is restated
    op = randomise(create_op(op_set, name, channels).double(), seed=ALL_OPS.index((op_set, name))).train(train)
    if hasattr(op, "mix"):  # ReLU follows the mixer: positive weights keep most outputs above zero
        with torch.no_grad():
            op.mix.weight.abs_()
    x = op_input(op_set, 3, channels, size, torch.Generator().manual_seed(channels))
    expected = reference(op, x, train)
    assert (expected != 0).any(), "a degenerate case: the reference is zero everywhere"
    assert_matches(op(x), expected, 1e-10, f"{op_set}/{name}")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels,size", [(32, (6, 5)), (24, (9, 11))], ids=str)
@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_zoo_module_matches_its_definition(name, channels, size, train):
    reference = ZOO_REFERENCES[name]  # a new module fails here until its definition is restated
    module = randomise(create_attention(name, channels, dtype=torch.float64), seed=len(name)).train(train)
    x = op_input("zoo", 3, channels, size, torch.Generator().manual_seed(channels))
    assert_matches(module(x), reference(module, x, train), 1e-10, name)


@pytest.mark.parametrize("edge", range(len(EDGES)), ids=[e.name for e in EDGES])
def test_block_matches_the_cell_definition_for_every_op_on_every_edge(edge):
    e = EDGES[edge]
    x = op_input("block", 2, 16, (7, 5), torch.Generator().manual_seed(edge))
    for name in OPS[e.op_set]:
        genotype = Genotype.from_dict({**Genotype.paper().to_dict(), e.name: name})
        block = randomise(SASEBlock(16, genotype=genotype, dtype=torch.float64), seed=edge).eval()
        assert_matches(block(x), sase_block(block, x, False), 1e-10, name)


def assert_same_input_gradient(out: Tensor, ref: Tensor, x: Tensor, msg: str) -> None:
    """d/dx of sum(out * r) against d/dx of sum(ref * r), for one fixed random r."""
    r = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (got,) = torch.autograd.grad((out * r).sum(), x)
    (want,) = torch.autograd.grad((ref * r).sum(), x)
    assert_matches(got, want, 1e-9, f"{msg}: input gradient")


# -- float64 input gradients in training: the statistics' hand-written backward passes (sase.ops.autograd)
# against autograd's derivative of each definition above
@pytest.mark.parametrize("channels,size", CASES[:2], ids=lambda v: str(v))
@pytest.mark.parametrize("op_set,name", [(s, n) for s, n in ALL_OPS if s.endswith("squeeze")])
def test_squeeze_op_input_gradient_matches_its_definition(op_set, name, channels, size):
    op = randomise(create_op(op_set, name, channels).double(), seed=ALL_OPS.index((op_set, name))).train()
    if hasattr(op, "mix"):
        with torch.no_grad():
            op.mix.weight.abs_()
    x = op_input(op_set, 3, channels, size, torch.Generator().manual_seed(channels)).requires_grad_()
    assert_same_input_gradient(op(x), OP_REFERENCES[op_set][name](op, x, True), x, f"{op_set}/{name}")


@pytest.mark.parametrize("edge", range(len(EDGES)), ids=[e.name for e in EDGES])
def test_block_input_gradient_in_training_matches_the_cell_definition_for_every_op_on_every_edge(edge):
    """Through every path of the cell: s3's scale and the merge depend on x too, so the weights' gradient
    of a weighted sum over channels is checked here as well."""
    e = EDGES[edge]
    x = op_input("block", 2, 16, (7, 5), torch.Generator().manual_seed(edge)).requires_grad_()
    for name in OPS[e.op_set]:
        genotype = Genotype.from_dict({**Genotype.paper().to_dict(), e.name: name})
        block = randomise(SASEBlock(16, genotype=genotype, dtype=torch.float64), seed=edge).train()
        assert_same_input_gradient(block(x), sase_block(block, x, True), x, name)


SQUEEZE_OPS = [(s, n) for s, n in ALL_OPS if s.endswith("squeeze")]


@pytest.mark.parametrize("ratio", [100, 1000])
@pytest.mark.parametrize("op_set,name", SQUEEZE_OPS)
def test_squeeze_op_in_float32_keeps_its_precision_far_from_zero(op_set, name, ratio):
    """A float32 map with |mean| / std = ratio along both axes, against the float64 definition.

    Rounding a value of size `ratio` in float32 costs 6e-8 * ratio of the std, so a few such roundings
    are allowed. Whatever an op computes from raw powers (E[x^2] - m^2, an affine map expanded around
    x) loses about 1e-7 * ratio^2 of the result instead: ratio / 4 times more.
    """
    op = randomise(create_op(op_set, name, 16), seed=ALL_OPS.index((op_set, name))).float().eval()
    if hasattr(op, "mix"):
        with torch.no_grad():
            op.mix.weight.abs_()
    gen = torch.Generator().manual_seed(ratio)
    z = torch.randn(2, 16, 9, 7, generator=gen, dtype=torch.float64)
    x = (ratio + z + 0.5 * z * z).float()  # float32, as the op reads it; the reference sees the same values
    with torch.no_grad():
        out = op(x)
    assert_matches(out, OP_REFERENCES[op_set][name](op, x.double(), False), 4e-7 * ratio, f"{op_set}/{name}")


# -- autocast: float32 modules, inputs of magnitude 100-300, against the float64 definitions
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
ROUNDING = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}  # the relative error of one rounding
# max |out - ref| / max |ref| allowed, in roundings of the autocast dtype:
# - the SASE ops compute in float32 whatever the autocast and return float32: a quarter of a
#   rounding, which a statistic computed in the low dtype misses (and in float16 overflows)
# - modules that compute in float32 and hand back the input's dtype: gate and product rounded once each
# - timm's SE, ECA and CBAM run their convs in the autocast dtype by design, on inputs in the
#   hundreds: a gate logit that is a sum of such terms cancelling to near zero is off by (terms x
#   rounding), and its gate by up to a quarter of that. Seeds give up to 80 roundings; only an
#   overflow or a wrong code path under autocast shows beyond 100.
OP_ROUNDINGS, MODULE_ROUNDINGS, LOW_PRECISION_ROUNDINGS = 0.25, 3, 100
LOW_PRECISION_MODULES = {"se", "eca", "cbam"}


def large(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Uniform in [100, 300] with random signs: x^4 reaches 8e9, sums of squares pass float16's 65504."""
    sign = torch.randint(0, 2, shape, generator=gen).double() * 2 - 1
    return sign * (100 + 200 * torch.rand(shape, generator=gen, dtype=torch.float64))


def autocast_case(module: nn.Module, reference: Reference, x64: Tensor, dtype: torch.dtype,
                  low_input: bool, roundings: float) -> Tensor:
    """module (float32, eval) under autocast on x (float32, or `dtype` as a conv under autocast hands it on)."""
    x = x64.to(dtype) if low_input else x64.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = module(x)
    expected = reference(module, x.double(), False)  # the input as the module saw it, rounding included
    assert expected.abs().max() < torch.finfo(out.dtype).max, "the true output is beyond the output dtype's range"
    assert_matches(out, expected, roundings * ROUNDING[dtype], f"{dtype}, {x.dtype} input")
    return out


@pytest.mark.parametrize("low_input", [False, True], ids=["fp32_in", "low_in"])
@pytest.mark.parametrize("dtype", list(LOW.values()), ids=list(LOW))
@pytest.mark.parametrize("op_set,name", ALL_OPS)
def test_op_under_autocast_matches_float64(op_set, name, dtype, low_input):
    op = randomise(create_op(op_set, name, 16), seed=3).float().eval()
    x = large(input_shape(op_set, 2, 16, (9, 11)), torch.Generator().manual_seed(0))
    autocast_case(op, OP_REFERENCES[op_set][name], x, dtype, low_input, OP_ROUNDINGS)


@pytest.mark.parametrize("low_input", [False, True], ids=["fp32_in", "low_in"])
@pytest.mark.parametrize("dtype", list(LOW.values()), ids=list(LOW))
@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_zoo_module_under_autocast_matches_float64(name, dtype, low_input):
    module = randomise(create_attention(name, 32), seed=3).float().eval()
    x = large((2, 32, 8, 8), torch.Generator().manual_seed(0))
    roundings = LOW_PRECISION_ROUNDINGS if name in LOW_PRECISION_MODULES else MODULE_ROUNDINGS
    out = autocast_case(module, ZOO_REFERENCES[name], x, dtype, low_input, roundings)
    assert out.dtype == (dtype if low_input else torch.float32)  # a module hands on the dtype it was given


# every op of each set on some edge: the squeeze ops that overflow first on both squeeze edges
# (`fc`, without a sigmoid, stays off edge 1: there it scales the output by a factor in the thousands
# at these magnitudes, past float16's range in the true value too)
HEAVY = [("cov", "affine", "fc", "gap_skew", "pnorm", "conv_3x2"),
         ("pnorm", "conv1d_3x3", "fc", "cov", "l2", "sep_5"),
         ("gap_skew", "affine", "conv1d_5", "gap_std", "cov", "affine")]


@pytest.mark.parametrize("low_input", [False, True], ids=["fp32_in", "low_in"])
@pytest.mark.parametrize("dtype", list(LOW.values()), ids=list(LOW))
@pytest.mark.parametrize("ops", HEAVY, ids=lambda ops: "-".join(ops))
def test_block_under_autocast_matches_float64(ops, dtype, low_input):
    block = randomise(SASEBlock(32, genotype=Genotype(ops)), seed=5).eval()
    x = large((2, 32, 9, 11), torch.Generator().manual_seed(0))
    out = autocast_case(block, sase_block, x, dtype, low_input, MODULE_ROUNDINGS)
    assert out.dtype == (dtype if low_input else torch.float32)  # the block hands on the dtype it was given
