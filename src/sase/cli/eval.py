"""`sase eval`: evaluate a trained model on the test / validation split of a dataset.

The model is rebuilt from the file alone: a checkpoint.pt carries its spec, a model.safetensors
carries it in its metadata (a run folder works too). Prints and writes top-1, top-k, loss,
parameters and FLOPs; FLOPs are counted on one image at the evaluation size.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import DataSpec, build_dataset
from ..train import ModelSpec, TrainConfig, count_flops, count_parameters, evaluate, load_model
from ..train.export import locate
from ..train.metrics import nonfinite_message
from ..train.plots import si
from ..train.recipe import resolve_device
from ..utils.config import AMP_MODES
from .args import count, device, positive_int
from .commands import HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=HELP["eval"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="CHECKPOINT_OR_SAFETENSORS", help="checkpoint.pt, model.safetensors, or a run "
                   "folder holding one")
    p.add_argument("--dataset", help="dataset (default: the one the model was trained on)")
    p.add_argument("--data", help="dataset root (default: the training run's, when its config.json is beside the "
                   "model file)")
    p.add_argument("--image-size", type=positive_int, help="input size (default: the training size)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="evaluation batch size (default: 128)")
    p.add_argument("--amp", choices=AMP_MODES, help="evaluate under autocast (default: float32)")
    p.add_argument("--workers", type=count, default=0, help="data loader worker processes")
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", help="JSON file for the results (default: eval_<dataset>.json beside the model file)")
    p.set_defaults(command="eval")


def _training_data_root(path: Path, dataset: str) -> str | None:
    """The --data of the run that wrote `path`, when its config.json is beside it and names `dataset`."""
    saved = path.parent / "config.json"
    if not saved.exists():
        return None
    config = TrainConfig.load(saved)
    return config.data if config.dataset == dataset else None


@dataclass(frozen=True)
class Evaluated:
    """A trained model and the split it is evaluated on, as `sase eval` and `sase maps` read them from their flags."""

    path: Path  # the model file
    model: nn.Module
    spec: ModelSpec
    dataset: str
    image_size: int
    split: Dataset
    data_spec: DataSpec


def model_and_split(args: argparse.Namespace) -> Evaluated:
    """The model file of `args.model`, rebuilt, and the test / validation split of `args.dataset` (default: the
    model's own) at `args.image_size` (default: the training size), checked to have the model's classes."""
    path = locate(args.model)
    model, spec = load_model(path)
    dataset = args.dataset or spec.dataset
    data = args.data if args.data is not None else _training_data_root(path, dataset)
    image_size = args.image_size or spec.image_size
    split, data_spec = build_dataset(dataset, data, train=False, image_size=image_size)
    if data_spec.num_classes != spec.num_classes:
        raise ValueError(f"{path} classifies {spec.num_classes} classes but {dataset} has {data_spec.num_classes}")
    return Evaluated(path, model, spec, dataset, image_size, split, data_spec)


def run(args: argparse.Namespace) -> int:
    loaded = model_and_split(args)
    path, model, spec, dataset, image_size = loaded.path, loaded.model, loaded.spec, loaded.dataset, loaded.image_size
    val_set = loaded.split
    device = resolve_device(args.device)
    model.to(device)
    loader = DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)
    result = evaluate(model, loader, device, args.amp)
    flops = count_flops(model, image_size, spec.in_chans)
    report = {
        "model_file": str(path), "model": spec.model, "attention": spec.attention, "genotype": spec.genotype,
        "dataset": dataset, "split": "val" if dataset == "imagefolder" else "test", "images": result.images,
        "image_size": image_size, "top1": result.top1, f"top{result.k}": result.topk, "loss": result.loss,
        "nonfinite_images": result.nonfinite,
        "parameters": count_parameters(model), "flops": flops, "macs": flops // 2,
        "flops_note": "FlopCounterMode on one image: 2 FLOPs per multiply-add of convolutions and matrix products; "
                      "macs = flops / 2 (what papers call FLOPs for ResNets)",
    }
    out = Path(args.out) if args.out else path.parent / f"eval_{dataset}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{spec.model} + {spec.attention} on {dataset} ({report['split']} split, {result.images} images, "
          f"{image_size}x{image_size}): top-1 {result.top1:.4f}, top-{result.k} {result.topk:.4f}, "
          f"loss {result.loss:.4f}")
    print(f"{report['parameters']:,} parameters; {si(flops // 2)} MACs ({si(flops)} FLOPs) per image; wrote {out}")
    if result.nonfinite:
        print(f"warning: {nonfinite_message(result)}", file=sys.stderr)
    return 0
