"""`sase train`: train a backbone with an attention module in every residual block.

With no arguments it trains ResNet-20 with the published SASE block on the bundled digits, offline,
in well under a minute of compute on two CPU cores. `--preset imagenet` is the ImageNet recipe of the
SASE paper (Wang et al., 2024).

--resume continues the run in --out, wherever that folder was first written (a copied run folder
resumes into the copy), with the settings saved in it. Flags given with --resume are applied when they
cannot change the result (--workers, --device, --checkpoint-every, --download), --epochs may grow (the
cosine is re-stretched over the new total from where the run stands), and any other flag that differs
from the saved run is refused.

Several GPUs: `torchrun --nproc_per_node 4 -m sase train ...` trains one run on 4 processes (one GPU
each; gloo processes with --device cpu). --batch-size stays the global batch, each process taking
batch-size / 4 of it, so the learning rate needs no change; gradients are averaged, rank 0 writes the
files. Across nodes add torchrun's --nnodes and --rdzv-backend c10d --rdzv-endpoint HOST:PORT, with --out
on a file system every node sees. --sync-bn computes BatchNorm statistics over the global batch. A run
resumes (--resume) on any number of processes.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from typing import Any

from ..train import PRESETS, TrainConfig, TrainingDiverged, run_train
from ..train.export import resolve_genotype
from ..train.plots import si
from ..train.recipe import resolve_device
from ..utils.config import AMP_MODES
from ..utils.distributed import broadcast_object, check_batch, setup, world
from ..utils.folders import check_out
from .commands import HELP

# command-line flags for these config fields (the rest keep their defaults, or come from a preset)
FLAGS = {
    "model": "backbone (ResNet, He et al., 2016): resnet20 | resnet56 | resnet110 (CIFAR style) | resnet18 | "
             "resnet34 | resnet50 | resnet101",
    "attention": "none | se | eca | cbam | srm | gct | fca | gsop | simam | sase | paper | PATH/TO/genotype.json",
    "dataset": "dataset: digits, cluttered-digits (bundled, offline) | cifar10 | cifar100 | imagefolder",
    "data": "dataset root folder (CIFAR python files, or an ImageFolder with train/ and val/)",
    "epochs": "training epochs",
    "batch_size": "batch size; under torchrun the global batch, split evenly over the processes",
    "lr": "peak learning rate (SGD)",
    "lr_min": "learning rate at the end of the cosine",
    "momentum": "SGD momentum, in [0, 1)",
    "weight_decay": "weight decay",
    "warmup_epochs": "epochs of linear learning-rate warm-up before the cosine decay",
    "label_smoothing": "label smoothing of the training loss",
    "grad_clip": "max gradient norm (0 disables clipping)",
    "seed": "random seed (initialisation, data order, augmentation)",
    "image_size": "input size (default: the dataset's own)",
    "steps_per_epoch": "cap on training steps per epoch",
    "checkpoint_every": "steps between checkpoints within an epoch",
    "workers": "data loader worker processes",
    "device": "auto | cpu | cuda | cuda:N",
    "out": "run folder",
}


def add_recipe_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The TrainConfig flags (all but `skip`), each defaulting to None so that presets can fill them."""
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    for name, help_text in FLAGS.items():
        if name not in skip:
            kind = int if "int" in types[name] else float if "float" in types[name] else str
            p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="mixed precision: bf16 autocast, or fp16 autocast with a gradient scaler (default: float32)")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the training step's model (backend: inductor unless named); the first step "
                   "compiles, evaluation stays eager")
    p.add_argument("--download", action="store_true", default=None, help="download CIFAR if missing (needs internet)")
    p.add_argument("--sync-bn", action="store_true", default=None, help="under torchrun: BatchNorm statistics over "
                   "the global batch (SyncBatchNorm, CUDA only), not over each process's share of it")
    p.add_argument("--preset", choices=sorted(PRESETS), help="imagenet: the SASE paper's ImageNet recipe (Wang et "
                   "al., 2024: ResNet-50, 100 epochs, lr 0.1, wd 1e-4, label smoothing 0.1, clip 5); cifar: the common "
                   "CIFAR ResNet recipe (He et al., 2016, in cosine form: ResNet-56, 200 epochs); flags given "
                   "explicitly still win")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=HELP["train"], description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_flags(p)
    p.add_argument("--resume", action="store_true", help="resume the run in --out from its checkpoint, with its saved "
                   "settings; --epochs may grow, other recipe flags must match (see above)")
    p.set_defaults(command="train")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig settings named by flags on the command line (unset flags are None)."""
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """TrainConfig defaults, then the preset, then the flags given, then `overrides`."""
    config = TrainConfig()
    if args.preset:
        config = config.with_preset(args.preset)
    return replace(config, **{**given_settings(args), **overrides})


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out, the folder of the run to resume")
        config = TrainConfig.resumed(args.out, given_settings(args), preset=args.preset)
    else:
        config = config_from_args(args)
        resolve_genotype(config.attention)  # a ValueError for an unknown attention, before anything is printed
    check_batch(config.batch_size)  # before the processes meet and anything is printed
    if args.out is None:
        config = replace(config, out=default_out(config))
    check_out(config.out)
    w = world()  # under torchrun the command line prints rank 0's lines alone
    split = f" over {w.size} processes" if w.distributed else ""
    print(f"training: {config.model} + {config.attention} on {config.dataset}, {config.epochs} epochs, batch "
          f"{config.batch_size}{split}, lr {config.lr}, {config.amp or 'float32'} -> {config.out}")
    try:
        result = run_train(config, resume=args.resume, progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"sase train: {err}", file=sys.stderr)
        return 1
    print(f"done: val top-1 {result.top1:.4f}, top-{result.k} {result.topk:.4f}, loss {result.loss:.4f}; "
          f"{result.parameters:,} parameters, {si(result.flops // 2)} MACs per image; {result.seconds:.0f} s of "
          f"training; files in {result.out}/ (model.safetensors, checkpoint.pt, history.csv, summary.json, "
          "config.json)")
    return 0


def default_out(config: TrainConfig, command: str = "train") -> str:
    """runs/<command>-<date>-<time>; under torchrun rank 0's, so that every process writes into one folder."""
    setup(resolve_device(config.device))  # join the others (nothing without torchrun)
    return broadcast_object(time.strftime(f"runs/{command}-%Y%m%d-%H%M%S"))
