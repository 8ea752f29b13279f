"""`sase pipeline`: search an attention block, then compare it with known blocks and random ones, with statistics.

With no arguments it runs offline on the bundled cluttered digits (one digit among fragments of others on
a 16x16 canvas, where a block has clutter to suppress) in about a quarter of an hour on two CPU cores:
a first-order search (ResNet-20 supernet: two epochs that train the weights alone, then two that also
move α) into OUT/search, its verdict (decided or not), then `sase compare` of the found block (`found`,
or `found (undecided)`) against the published block, SE, CBAM, ECA, no attention and two random
genotypes over three seeds, two cells at a time on two cores, with 95% confidence intervals and
differences paired by seed, into OUT. Rerunning with the same --out skips what is finished and resumes
what is not.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..search import SearchConfig, SearchDiverged, ensure_search
from ..train import TrainConfig, TrainingDiverged
from ..train.compare import markdown_table, parse_entries, run_compare
from ..utils.folders import check_out
from .commands import HELP
from .compare import add_jobs_flag, jobs_from_args, parse_seeds

# The default budget: a search and 24 training runs (8 blocks x 3 seeds) in about 15 min on 2 CPU cores.
DATASET = "cluttered-digits"
IMAGE_SIZE = 16  # canvas side: 16x16 costs a quarter of the dataset's own 32x32 per image
EPOCHS = 2  # training epochs of each compared run (6,000 images each)
WARMUP_EPOCHS = 0.2  # a short warm-up: a whole epoch would be half of the run
SEEDS = "0,1,2"
# Two epochs of weight steps to give α a supernet that has learned something (α steps on an untrained one are
# noise, and the budgeted α lr spends the run's whole α travel on them), then two epochs of first-order steps of
# both: 46 steps an epoch on cluttered-digits (its 3,000-image halves in batches of 64), 92 + 92 steps
SEARCH = dict(order="1", epochs=4, steps_per_epoch=60)  # and the first half of the epochs a warm-up
SEARCH_LR = 0.05  # twice the paper's weight lr: the supernet must learn within 92 steps
BASELINES = ("paper", "se", "cbam", "eca", "none", "random:2")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help=HELP["pipeline"], description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pipeline", help="pipeline folder (default: runs/pipeline)")
    p.add_argument("--dataset", default=DATASET, help=f"dataset of the search and the comparison (default: {DATASET})")
    p.add_argument("--data", help="dataset root (not needed for the bundled datasets)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs of each compared run "
                   f"(default: {EPOCHS})")
    p.add_argument("--seeds", default=SEEDS, help=f"comma-separated seeds of the comparison (default: {SEEDS})")
    p.add_argument("--search-epochs", type=int, default=SEARCH["epochs"],
                   help=f"search epochs (default: {SEARCH['epochs']})")
    p.add_argument("--search-warmup", type=int, help="search epochs that train the weights only, α frozen "
                   "(default: the first half of the search epochs, rounded down)")
    p.add_argument("--search-order", choices=["1", "2", "exact"], default=SEARCH["order"],
                   help=f"architecture gradient of the search (default: {SEARCH['order']}, first order, for time)")
    p.add_argument("--search-steps", type=int, default=SEARCH["steps_per_epoch"],
                   help=f"cap on search steps per epoch (default: {SEARCH['steps_per_epoch']})")
    p.add_argument("--per-stage", action="store_true", help="one α per stage; the comparison then trains the "
                   "per-stage genotypes")
    p.add_argument("--batch-size", type=int, help="batch size of the search and of the training runs "
                   f"(default: search {SearchConfig.batch_size}, training {TrainConfig.batch_size})")
    p.add_argument("--steps-per-epoch", type=int, help="cap on training steps per epoch (for quick trials)")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help=f"input size, search and training "
                   f"(default: {IMAGE_SIZE})")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random genotypes (default: 0)")
    add_jobs_flag(p)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(command="pipeline")


def configs(args: argparse.Namespace) -> tuple[SearchConfig, TrainConfig]:
    """The search and the training recipe of the pipeline, from its flags."""
    shared = dict(dataset=args.dataset, data=args.data, image_size=args.image_size, workers=args.workers)
    if args.batch_size is not None:
        shared["batch_size"] = args.batch_size
    out = Path(args.out)
    warmup = args.search_epochs // 2 if args.search_warmup is None else args.search_warmup
    search = replace(SearchConfig(), **shared, order=args.search_order, epochs=args.search_epochs,
                     warmup_epochs=warmup, lr=SEARCH_LR, steps_per_epoch=args.search_steps, per_stage=args.per_stage,
                     out=str(out / "search"))
    train = replace(TrainConfig(), **shared, epochs=args.epochs, warmup_epochs=min(WARMUP_EPOCHS, args.epochs),
                    steps_per_epoch=args.steps_per_epoch, out=str(out))
    return search, train


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out)  # before the search: a pipeline folder that cannot be written fails at once
    search_config, base = configs(args)
    seeds = parse_seeds(args.seeds)
    jobs = jobs_from_args(args, base.device)
    print(f"pipeline: search ({search_config.epochs} epochs, {search_config.warmup_epochs} of them a warm-up, order "
          f"{search_config.order}) on {base.dataset} -> "
          f"{search_config.out}; then compare found, {', '.join(BASELINES)} ({base.epochs} epochs x seeds "
          f"{args.seeds}, {jobs} at a time) -> {out}", flush=True)
    try:
        result = ensure_search(search_config, progress=not args.quiet)
        print(f"searched genotype: {result.genotype.to_json(indent=None)}")
        print(result.verdict.summary())
        print(result.verdict.table())
        if not result.verdict.decided:
            print(result.verdict.warning(), file=sys.stderr)
        found = out / "search" / ("genotypes_per_stage.json" if search_config.per_stage else "genotype.json")
        entries = parse_entries([f"found={found}", *BASELINES], out=out, random_seed=args.random_seed)
        rows = run_compare(base, entries, seeds, out, progress=not args.quiet, random_seed=args.random_seed, jobs=jobs)
    except (SearchDiverged, TrainingDiverged) as err:
        print(f"sase pipeline: {err}", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    print(f"wrote {out}/comparison.md, comparison.json and comparison.png; search files in {out / 'search'}/")
    return 0
