"""The backbones, from the registry: shapes at several sizes, gradients, where the attention sits,
torchvision compatibility, and the timm route (`attn_layer=partial(SASEBlock, ...)`)."""
from __future__ import annotations

import functools

import pytest
import timm
import torch
import torchvision
from torch import nn

import sase
from sase.attention import ATTENTIONS
from sase.models import MODELS, BasicBlock, Bottleneck, create_model

CIFAR = ["resnet20", "resnet56", "resnet110"]
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101"]
SIZES = {name: [(32, 32), (20, 28)] for name in CIFAR} | {name: [(64, 64), (72, 56)] for name in IMAGENET}
BLOCKS = {"resnet20": 9, "resnet56": 27, "resnet110": 54,  # residual blocks per model
          "resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33}


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def check_forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    y = model(x)
    assert y.shape == (x.shape[0], num_classes)
    assert torch.isfinite(y).all()
    model.zero_grad()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_registry_names():
    assert set(MODELS) == set(CIFAR) | set(IMAGENET) == set(BLOCKS)
    assert sase.MODELS is MODELS and sase.create_model is create_model


@pytest.mark.parametrize("attention", ["none", "paper"])
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_at_two_sizes(name, attention):
    model = create_model(name, attention=attention, num_classes=5)
    assert len(residual_blocks(model)) == BLOCKS[name]
    for h, w in SIZES[name]:
        check_forward_backward(model, torch.randn(2, 3, h, w), num_classes=5)


@pytest.mark.parametrize("attention", list(ATTENTIONS))
def test_every_zoo_attention_in_resnet20(attention):
    model = create_model("resnet20", attention=attention, num_classes=5)
    check_forward_backward(model, torch.randn(2, 3, 32, 32), num_classes=5)


@pytest.mark.parametrize("name,size", [("resnet20", (7, 5)), ("resnet18", (33, 47))])
def test_eval_batch_one_odd_size_and_bf16_autocast(name, size):
    model = create_model(name, attention="paper", num_classes=5).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
    assert y.shape == (1, 5) and torch.isfinite(y.float()).all()


def test_defaults_and_cifar_options():
    assert create_model("resnet20").fc.out_features == 10
    assert create_model("resnet18").fc.out_features == 1000
    model = create_model("resnet20", num_classes=3, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert not hasattr(model, "maxpool")
    assert [m.downsample is not None for m in residual_blocks(model)] == [False] * 3 + [True, False, False] * 2


def test_no_attention_adds_no_parameters():
    for attention in ("none", None):
        model = create_model("resnet20", attention=attention)
        assert not any(".attn" in k for k in model.state_dict())
        assert all(isinstance(b.attn, nn.Identity) for b in residual_blocks(model))
    with_sase = create_model("resnet20", attention="paper")
    assert sum(p.numel() for p in with_sase.parameters()) > sum(p.numel() for p in model.parameters())


def marked_attention(channels: int) -> nn.Module:
    """An attention with a norm without affine parameters (as in the supernet) and a recognisable init."""
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    nn.init.constant_(conv.weight, 1.0 / channels)
    return nn.Sequential(nn.BatchNorm2d(channels, affine=False), conv)


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_attention_keeps_its_own_initialisation(name):
    model = create_model(name, attention=marked_attention, num_classes=5)
    for block in residual_blocks(model):
        conv = block.attn[1]
        assert torch.equal(conv.weight, torch.full_like(conv.weight, 1.0 / conv.in_channels))
    check_forward_backward(model, torch.randn(2, 3, 32, 32), num_classes=5)


@pytest.mark.parametrize("name", IMAGENET)
def test_torchvision_compatible(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    torch.manual_seed(0)
    ours = create_model(name).eval()
    ref_sd, our_sd = reference.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    # same construction order and initialisation: a seeded model draws torchvision's exact weights
    assert all(torch.equal(our_sd[k], ref_sd[k]) for k in ref_sd)
    torch.manual_seed(1)
    other = create_model(name).eval()
    other.load_state_dict(ref_sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(other(x), reference(x))


def test_attention_keeps_backbone_keys():
    plain = create_model("resnet50").state_dict()
    with_sase = create_model("resnet50", attention="paper").state_dict()
    assert [k for k in with_sase if ".attn." not in k] == list(plain)
    assert {k.split(".attn.")[0] for k in with_sase if ".attn." in k} == {
        f"layer{i}.{j}" for i, n in enumerate((3, 4, 6, 3), 1) for j in range(n)}


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_attention_sits_after_last_bn_before_residual_add(name):
    model = create_model(name, attention="paper", num_classes=5).eval()
    blocks = residual_blocks(model)
    assert all(sum(isinstance(m, sase.SASEBlock) for m in b.modules()) == 1 for b in blocks)
    assert all(isinstance(b.attn, sase.SASEBlock) for b in blocks)
    seen: dict[str, torch.Tensor] = {}

    def record(key: str):
        return lambda module, args, out: seen.update({f"{key}_in": args[0], key: out})

    handles = []
    for i, block in enumerate(blocks):
        last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        handles += [block.register_forward_hook(record(f"block{i}")),
                    last_bn.register_forward_hook(record(f"bn{i}")),
                    block.attn.register_forward_hook(record(f"attn{i}"))]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        for i, block in enumerate(blocks):
            assert seen[f"attn{i}_in"] is seen[f"bn{i}"]  # attn reads the last BN's output ...
            x = seen[f"block{i}_in"]
            shortcut = x if block.downsample is None else block.downsample(x)
            # ... and its output is what meets the shortcut
            torch.testing.assert_close(seen[f"block{i}"], torch.relu(seen[f"attn{i}"] + shortcut))
    for h in handles:
        h.remove()


@pytest.mark.parametrize("name,blocks", [("resnet50", 16), ("resnet18", 8)])
def test_timm_resnet_with_sase_attn_layer(name, blocks):
    model = timm.create_model(name, pretrained=False, num_classes=5,
                              block_args=dict(attn_layer=functools.partial(sase.SASEBlock, genotype="paper")))
    timm_blocks = [m for m in model.modules() if hasattr(m, "se")]
    assert len(timm_blocks) == blocks
    assert all(isinstance(b.se, sase.SASEBlock) for b in timm_blocks)
    assert sum(isinstance(m, sase.SASEBlock) for m in model.modules()) == blocks
    check_forward_backward(model, torch.randn(2, 3, 64, 64), num_classes=5)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="nope.*resnet20.*resnet101"):
        create_model("nope")


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_unknown_attention_raises(name):
    with pytest.raises(ValueError, match="unknown attention"):
        create_model(name, attention="not_an_attention")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_matches_torchvision(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(zero_init_residual=True).state_dict()
    torch.manual_seed(0)
    ours = create_model(name, zero_init_residual=True).state_dict()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    last_bn = "bn3" if name == "resnet50" else "bn2"
    assert not ours[f"layer1.0.{last_bn}.weight"].any()
