"""`sase export`: write a model as ONNX, TorchScript or a torch.export program with dynamic batch, height and
width, then run the file back and compare it with the PyTorch model.

    sase export runs/train --format onnx                        # the trained model of a run folder
    sase export runs/train/model.safetensors --format torchscript
    sase export resnet50 --attention paper --format exported     # a model by name, freshly initialised (seed 0)

The file is checked at two inputs: batch 2 at the model's image size, and batch 3 at a non-square size
(height 5/4, width 3/4 of it). The largest absolute difference from PyTorch is printed for each; the exit
code is 1 when one exceeds 1e-5 + 1e-4 times the largest output. ONNX is run back with onnxruntime.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from torch import nn

from ..export.formats import FORMATS, export_model, get_format, verify
from ..models import MODELS, CifarResNet, create_model
from ..train.export import load_model, locate
from .args import positive_int
from .commands import HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=HELP["export"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                   help=f"checkpoint.pt, model.safetensors, a run folder holding one, or a model name "
                        f"({', '.join(MODELS)}) with --attention")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="onnx, torchscript or exported (.pt2)")
    p.add_argument("--opset", type=positive_int, help="ONNX opset version (default: torch's)")
    p.add_argument("--attention", help="with a model name: a zoo name, a preset or a genotype JSON path "
                   "(default: none)")
    p.add_argument("--num-classes", type=positive_int, help="with a model name: classes (default: the model's)")
    p.add_argument("--image-size", type=positive_int, help="side of the first check input (default: the training "
                   "size of a checkpoint; 224, or 32 for the CIFAR ResNets, for a model name)")
    p.add_argument("--out", help="file to write (default: model.<suffix> beside a checkpoint, "
                   "<model>-<attention>.<suffix> here for a model name)")
    p.set_defaults(command="export")


def resolve(args: argparse.Namespace) -> tuple[nn.Module, str, int, int, Path]:
    """The model, its description, input channels, image size and the default output path (no suffix)."""
    if args.model in MODELS:
        attention = args.attention or "none"
        torch.manual_seed(0)
        model = create_model(args.model, attention=attention, num_classes=args.num_classes)
        size = 32 if MODELS[args.model].func is CifarResNet else 224
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(attention).stem if attention.endswith(".json") else attention)
        return model, f"{args.model} + {attention}", 3, args.image_size or size, Path(f"{args.model}-{slug}")
    if not Path(args.model).exists():
        raise ValueError(f"{args.model!r} is neither a model file, a run folder nor a model name "
                         f"({', '.join(MODELS)})")
    for flag in ("attention", "num_classes"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} goes with a model name; {args.model} carries its own")
    path = locate(args.model)
    model, spec = load_model(path)
    return model, f"{spec.model} + {spec.attention} from {path}", spec.in_chans, args.image_size or spec.image_size, \
        path.parent / "model"


def check_shapes(in_chans: int, size: int) -> list[tuple[int, int, int, int]]:
    """Batch 2 at size x size, and batch 3 at a non-square size."""
    return [(2, in_chans, size, size), (3, in_chans, size + size // 4, max(1, size - size // 4))]


def run(args: argparse.Namespace) -> int:
    fmt = get_format(args.format)
    model, described, in_chans, size, stem = resolve(args)
    out = Path(args.out) if args.out else stem.with_name(stem.name + fmt.suffix)
    shapes = check_shapes(in_chans, size)
    generator = torch.Generator().manual_seed(0)
    example, second = (torch.randn(*s, generator=generator) for s in shapes)
    export_model(model, args.format, out, example, second, opset=args.opset)
    megabytes = out.stat().st_size / 2**20
    print(f"wrote {out} ({fmt.what}{f', opset {args.opset}' if args.opset else ''}; dynamic batch, height and "
          f"width; {megabytes:.1f} MiB): {described}")
    checks = verify(model, out, args.format, shapes)
    print("max abs difference from PyTorch: " + ", ".join(
        f"{c.max_abs_diff:.2e} at {'x'.join(map(str, c.shape))} (outputs up to {c.max_abs_output:.3g})"
        for c in checks))
    bad = [c for c in checks if not c.close()]
    if bad:
        print(f"sase export: {out} differs from the PyTorch model by more than 1e-4 of its output at "
              f"{', '.join('x'.join(map(str, c.shape)) for c in bad)}", file=sys.stderr)
        return 1
    return 0
