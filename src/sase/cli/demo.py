"""`sase demo`: build an attention block in a ResNet, print its parameters and run a forward pass."""
from __future__ import annotations

import argparse
import time

import torch

from ..attention import create_attention
from ..genotype import Genotype
from ..models import create_model
from .args import positive_int
from .commands import HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=HELP["demo"],
                       description=__doc__)
    p.add_argument("--model", default="resnet50", help="backbone name (ResNet, He et al., 2016; default: resnet50)")
    p.add_argument("--attention", default="paper",
                   help="attention: a zoo name, a preset or a genotype JSON file (default: paper)")
    p.add_argument("--image-size", type=positive_int, default=224, help="input height and width (default: 224)")
    p.add_argument("--batch-size", type=positive_int, default=2, help="batch size of the forward pass (default: 2)")
    p.set_defaults(command="demo")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    try:
        print(f"genotype: {Genotype.resolve(args.attention).to_json(indent=None)}")
    except ValueError:
        pass  # a zoo name, not a genotype
    for channels in (64, 256, 2048):
        block = create_attention(args.attention, channels)
        print(f"{args.attention} block at {channels:>4} channels: {count(block):,} parameters")
    plain = create_model(args.model, attention="none")
    # train mode: BatchNorm normalises with batch statistics, as it does in training. An untrained network in
    # eval mode runs on BatchNorm's initial statistics, and the unbounded `fc` excitation of the published
    # block (Wang et al., 2024: no sigmoid) can then amplify activations block after block.
    model = create_model(args.model, attention=args.attention).train()
    extra = count(model) - count(plain)
    print(f"{args.model} + {args.attention}: {count(model):,} parameters "
          f"({extra:+,} over plain {args.model}, {100 * extra / count(plain):+.2f}%)")
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    with torch.inference_mode():
        start = time.perf_counter()
        y = model(x)
        elapsed = time.perf_counter() - start
    print(f"forward (train mode) {tuple(x.shape)} -> {tuple(y.shape)} in {elapsed:.2f} s; "
          f"finite: {bool(torch.isfinite(y).all())}")
    return 0
