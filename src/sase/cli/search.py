"""`sase search`: find an attention block by DARTS (Liu et al., ICLR 2019) on a backbone and a dataset.

With no arguments it runs offline on the bundled digits through the CIFAR ResNet-20
supernet, second order, in a few minutes on two CPU cores. Every search ends with a verdict: α is
*decided* when on every edge the top candidate leads the runner-up by at least --decided-margin in
probability; an undecided search warns, and its verdict.json says "decided": false.

With --seeds 0,1,2 it runs one search per seed (OUT/seed-<k>/, each resumable) and writes a
stability report to OUT: how often each edge's choice recurs, and the consensus genotype.

--resume continues the search in --out, wherever that folder was first written (a copied run folder
resumes into the copy), with the settings saved in it. Flags given with --resume are applied when they
cannot change the result (--workers, --checkpoint-every, --download, --device, --no-cuda-graphs),
--epochs may grow (the weights' cosine is re-stretched over the new total; α keeps the learning rate it
started with), and any other flag that differs from the saved search is refused.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from typing import Any

from ..data import DATASETS
from ..search import PRESETS, SearchConfig, SearchDiverged, run_search, run_seeds, write_stability
from ..search.config import SAMPLINGS, SELECTIONS
from ..search.optim import ARCH_OPTIMIZERS
from ..utils.config import AMP_MODES
from ..utils.distributed import world
from ..utils.folders import check_out
from .commands import HELP
from .compare import parse_seeds

# command-line flags for these config fields (the rest keep their defaults, or come from a preset)
FLAGS = {
    "dataset": "dataset: digits, cluttered-digits (bundled, offline) | cifar10 | cifar100 | imagefolder",
    "data": "dataset root folder (CIFAR python files, or an ImageFolder with train/ and val/)",
    "backbone": "supernet backbone (ResNet, He et al., 2016): resnet20 | resnet56 | resnet110 | resnet18 | ... | "
                "timm/<resnet name>",
    "order": "architecture gradient of DARTS (Liu et al., ICLR 2019): 1 (first order), 2 (second order, finite "
             "difference), exact",
    "epochs": "search epochs",
    "batch_size": "batch size of both the weight and the α steps",
    "seed": "random seed (split, init, data order)",
    "image_size": "input size (default: the dataset's own)",
    "lr": "initial weight learning rate (SGD, cosine decay)",
    "lr_min": "weight learning rate at the end of the cosine",
    "momentum": "SGD momentum of the weights, in [0, 1)",
    "grad_clip": "max gradient norm of the weights (0 disables clipping)",
    "arch_lr": "α learning rate (Adam). Default: 3e-4 x 19,500 / (this run's α steps), the α travel of the "
               "100-epoch search of the SASE paper (Wang et al., 2024) spread over this run; the paper preset uses "
               "3e-4",
    "arch_optimizer": "α optimiser: adam (the paper's) or edge_adam (default: Adam with one second moment per edge, "
                      "so candidates with larger gradients move faster instead of in lockstep)",
    "warmup_epochs": "epochs that train the weights with α frozen",
    "steps_per_epoch": "cap on steps per epoch",
    "eval_images": "cap on the images of the α half evaluated at each epoch end, and on those of the weights' "
                   "half that recalibrate BatchNorm before it (default: all of the α half, up to 1,024 for "
                   "BatchNorm); for quick trials: the search itself does not depend on it",
    "decided_margin": "an edge is decided when its top candidate leads the runner-up by this much probability "
                      "(default 0.1)",
    "select": "how the genotype is derived: argmax of α (DARTS) or perturbation (DARTS-PT, Wang et al., ICLR "
              "2021: the candidate whose removal costs the supernet most validation accuracy)",
    "beta_decay": "λ of the Beta-Decay regulariser on α (β-DARTS, Ye et al., CVPR 2022); 0 disables",
    "sampling": "none (default: every candidate of every edge runs, DARTS) | gumbel: one candidate per edge drawn "
                "from softmax(α) by hard Gumbel-softmax (GDAS, Dong & Yang, CVPR 2019), about half the cost of a "
                "first-order step on a CPU; α's gradient is the relaxed sample's; first order only (the default "
                "--order with it)",
    "tau_max": "with --sampling gumbel: the sample's temperature in the first epoch (default 10, GDAS')",
    "tau_min": "with --sampling gumbel: the temperature in the last epoch, linear in between (default 0.1)",
    "checkpoint_every": "steps between checkpoints within an epoch",
    "workers": "data loader worker processes",
    "device": "auto (default: cuda when available, else cpu) | cpu | cuda | cuda:N",
    "out": "run folder (default: runs/search-<time>)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help=HELP["search"], description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    types = {f.name: f.type for f in fields(SearchConfig)}
    choices = {"dataset": sorted(DATASETS), "order": ["1", "2", "exact"], "select": list(SELECTIONS), "arch_optimizer": list(ARCH_OPTIMIZERS),
               "sampling": list(SAMPLINGS)}
    for name, help_text in FLAGS.items():
        kind = int if "int" in str(types[name]) else float if "float" in str(types[name]) else str
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text,
                       choices=choices.get(name))
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="mixed precision: bf16 autocast, or fp16 autocast with a gradient scaler for the weights' and "
                        "α's gradients (default: float32; the attention cells run in float32 either way)")
    p.add_argument("--seeds", help="comma-separated seeds: one search per seed in OUT/seed-<k>, then a stability "
                   "report and the consensus genotype in OUT")
    p.add_argument("--per-stage", action="store_true", default=None, help="one α per stage instead of one shared")
    p.add_argument("--track-hessian", action="store_true", default=None, help="track the dominant eigenvalue of the "
                   "α Hessian of the validation loss every epoch (Zela et al., ICLR 2020: its growth signals "
                   "collapse); written to history.csv and hessian.png")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                   help="on a GPU, run every search step eagerly instead of replaying it from a CUDA graph (the "
                        "default on one CUDA device with float32 or bf16: the step is bound by kernel launches)")
    p.add_argument("--download", action="store_true", default=None, help="download CIFAR if missing (needs internet)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="paper: the search of the SASE paper (Wang et al., 2024: "
                   "CIFAR-10, ResNet-20, 100 epochs, second order, α lr 3e-4); flags given explicitly still win")
    p.add_argument("--resume", action="store_true", help="resume the run in --out from its checkpoint, with its saved "
                   "settings; --epochs may grow, other recipe flags must match (see above)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(command="search")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The SearchConfig settings named by flags on the command line (unset flags are None)."""
    names = {f.name for f in fields(SearchConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """SearchConfig defaults, then the preset, then the flags given; a timestamped --out when none is."""
    config = SearchConfig()
    if args.preset:
        config = config.with_preset(args.preset)
    given = given_settings(args)
    given.setdefault("out", time.strftime("runs/search-%Y%m%d-%H%M%S"))
    if given.get("sampling", "none") != "none":
        given.setdefault("order", "1")  # a sampled search is first order (GDAS); a given --order 2 is refused
    return replace(config, **given)


def run(args: argparse.Namespace) -> int:
    if args.seeds is not None and args.seed is not None:
        raise ValueError("give --seed for one search or --seeds for several, not both")
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out, the folder of the run to resume")
    if args.resume and args.seeds is None:
        config = SearchConfig.resumed(args.out, given_settings(args), preset=args.preset)
    else:  # several seeds resume each search that has a checkpoint, with or without --resume
        config = config_from_args(args)
    check_out(config.out)  # before anything is announced
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    print(f"searching: {config.backbone} supernet on {config.dataset}, order {config.order}, "
          f"{config.epochs} epochs, batch {config.batch_size}, {config.amp or 'float32'} -> {config.out}")
    try:
        if seeds is not None:
            return _run_seeds(config, seeds, progress=not args.quiet)
        result = run_search(config, resume=args.resume, progress=not args.quiet)
    except SearchDiverged as err:
        print(f"sase search: {err}", file=sys.stderr)
        return 1
    print(f"genotype: {result.genotype.to_json(indent=None)}")
    if config.per_stage:
        for width, g in zip(result.widths, result.genotypes):
            print(f"  stage of width {width}: {g.to_json(indent=None)}")
    print(f"{result.verdict.summary()}; α lr {result.arch_lr:.3g}")
    print(result.verdict.table())
    if not result.verdict.decided:
        print(result.verdict.warning(), file=sys.stderr)
    print(f"done: {config.epochs} epochs in {result.seconds:.0f} s, supernet val acc {result.val_acc:.3f}; "
          f"files in {result.out}/ (genotype.json, verdict.json, history.csv, alpha_heatmap.png, "
          "alpha_evolution.png, checkpoint.pt, config.json)")
    return 0


def _run_seeds(config: SearchConfig, seeds: list[int], progress: bool) -> int:
    stability, _ = run_seeds(config, seeds, progress=progress)
    if not world().main:
        return 0  # rank 0 writes the report
    report = write_stability(stability, config.out)
    for seed, g, decided in zip(stability.seeds, stability.genotypes, stability.decided):
        print(f"  seed {seed}: {g.to_json(indent=None)} ({'decided' if decided else 'UNDECIDED'})")
    print(f"consensus genotype: {stability.consensus().to_json(indent=None)}; agreement with the modal op "
          f"{100 * report['agreement']:.0f}% per edge; {sum(stability.decided)}/{len(seeds)} searches decided")
    if not report["all_decided"]:
        print("warning: some searches ended undecided; their choices are close to random picks. Search longer "
              "(--epochs) or give α a larger learning rate (--arch-lr).", file=sys.stderr)
    print(f"files in {config.out}/ (stability.md, stability.json, stability.png, genotype.json, verdict.json, "
          "seed-<k>/)")
    return 0
