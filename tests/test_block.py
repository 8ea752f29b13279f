"""The cell's wiring and the fixed SASE block (values and autocast against the definitions: test_op_values.py)."""
from __future__ import annotations

import pytest
import torch

from sase import EDGES, OPS, Genotype, SASEBlock

SIZES = [(1, 1), (2, 2), (7, 5), (32, 32), (33, 47)]


def spec_forward(block: SASEBlock, x: torch.Tensor) -> torch.Tensor:
    """The cell (Wang et al., 2024) transcribed literally, with the block's own edge modules, every tensor
    written out."""
    cs, ce_a, ce_b, ss_a, ss_b, se = block.edges
    s1 = cs(x)
    s2 = ce_a(s1)
    s3 = ce_b(s1) * x
    stacked = torch.cat([ss_a(s3), ss_b(x)], dim=1)  # (B, 2, H, W)
    m = block.merge
    s4 = torch.relu(m.bn(torch.nn.functional.conv2d(stacked, m.conv.weight)))
    s5 = se(s4)
    return x * (1 + (s2 + s5) / 2)


def randomise(block: SASEBlock) -> SASEBlock:
    """Move every parameter off its init so that a wiring mistake cannot hide behind ones and zeros."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return block


@pytest.mark.parametrize("edge", EDGES, ids=lambda e: e.name)
def test_wiring_matches_spec_for_every_op_on_every_edge(edge):
    for op in OPS[edge.op_set]:
        g = Genotype.from_dict({**Genotype.paper().to_dict(), edge.name: op})
        block = randomise(SASEBlock(16, genotype=g)).eval()
        x = torch.randn(2, 16, 7, 5)
        with torch.no_grad():
            torch.testing.assert_close(block(x), spec_forward(block, x), rtol=1e-4, atol=1e-5, msg=op)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_paper_block_any_size(size):
    block = SASEBlock(32).eval()
    x = torch.randn(1, 32, *size)
    with torch.no_grad():
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("size", [(4, 4), (7, 5), (16, 12)], ids=str)
def test_paper_block_backward(size):
    block = SASEBlock(32).train()
    x = torch.randn(2, 32, *size, requires_grad=True)
    block(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_block_in_bfloat16_parameters():
    block = SASEBlock(16).to(torch.bfloat16).eval()
    y = block(torch.randn(2, 16, 5, 5, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_accepts_timm_factory_keywords_and_specs(tmp_path):
    block = SASEBlock(8, genotype="paper", device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in block.parameters())
    path = tmp_path / "g.json"
    Genotype.paper().to_json(path)
    assert SASEBlock(8, genotype=str(path)).genotype == Genotype.paper()
    assert SASEBlock(8, genotype=Genotype.paper().to_json()).genotype == Genotype.paper()
    assert block.merge.bn.affine  # the final block's merge BatchNorm is affine


@pytest.mark.parametrize("channels", [0, -3, 2.5, "64"])
def test_bad_channels(channels):
    with pytest.raises(ValueError, match="channels must be a positive int"):
        SASEBlock(channels)

