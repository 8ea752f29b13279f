"""`sase search`: find an attention block by DARTS on a backbone and a dataset.

With no arguments it runs offline on scikit-learn's bundled digits through the CIFAR ResNet-20
supernet, second order, in a few minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace

from ..data import DATASETS
from ..search import PRESETS, SearchConfig, SearchDiverged, run_search

# command-line flags for these config fields (the rest keep their defaults, or come from a preset)
FLAGS = {
    "dataset": "dataset: digits (bundled, offline) | cifar10 | cifar100 | imagefolder",
    "data": "dataset root folder (CIFAR python files, or an ImageFolder with train/ and val/)",
    "backbone": "supernet backbone: resnet20 | resnet56 | resnet110 | resnet18 | ... | timm/<resnet name>",
    "order": "architecture gradient: 1 (first order), 2 (second order, finite difference), exact",
    "epochs": "search epochs",
    "batch_size": "batch size of both the weight and the α steps",
    "seed": "random seed (split, init, data order)",
    "image_size": "input size (default: the dataset's own)",
    "lr": "initial weight learning rate",
    "warmup_epochs": "epochs that train the weights with α frozen",
    "steps_per_epoch": "cap on steps per epoch",
    "workers": "data loader worker processes",
    "out": "run folder (default: runs/search-<time>)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an attention block (DARTS)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    types = {f.name: f.type for f in fields(SearchConfig)}
    choices = {"dataset": sorted(DATASETS), "order": ["1", "2", "exact"]}
    for name, help_text in FLAGS.items():
        kind = int if "int" in str(types[name]) else float if "float" in str(types[name]) else str
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text,
                       choices=choices.get(name))
    p.add_argument("--per-stage", action="store_true", default=None, help="one α per stage instead of one shared")
    p.add_argument("--download", action="store_true", default=None, help="download CIFAR if missing (needs internet)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="the SPEC's reference settings (paper: CIFAR-10, "
                   "ResNet-20, 100 epochs, second order); flags given explicitly still win")
    p.add_argument("--resume", action="store_true", help="resume the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(command="search")


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    config = SearchConfig()
    if args.preset:
        config = config.with_preset(args.preset)
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(SearchConfig)} and v is not None}
    if args.resume and "out" not in given:
        raise ValueError("--resume needs --out, the folder of the run to resume")
    given.setdefault("out", time.strftime("runs/search-%Y%m%d-%H%M%S"))
    return replace(config, **given)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.resume:
        config = SearchConfig.resumed(config.out, workers=config.workers)  # the run's own settings
    print(f"searching: {config.backbone} supernet on {config.dataset}, order {config.order}, "
          f"{config.epochs} epochs, batch {config.batch_size} -> {config.out}")
    try:
        result = run_search(config, resume=args.resume, progress=not args.quiet)
    except SearchDiverged as err:
        print(f"sase search: {err}", file=sys.stderr)
        return 1
    print(f"genotype: {result.genotype.to_json(indent=None)}")
    if config.per_stage:
        for width, g in zip(result.widths, result.genotypes):
            print(f"  stage of width {width}: {g.to_json(indent=None)}")
    print(f"done: {config.epochs} epochs in {result.seconds:.0f} s, supernet val acc {result.val_acc:.3f}; "
          f"files in {result.out}/ (genotype.json, history.csv, alpha_heatmap.png, alpha_evolution.png, "
          "checkpoint.pt, config.json)")
    return 0
