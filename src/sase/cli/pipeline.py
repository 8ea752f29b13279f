"""`sase pipeline`: search an attention block, then compare it with the published block, SE, CBAM, ECA and none.

With no arguments it runs offline on the bundled digits in about four minutes on two CPU cores: the
default search (ResNet-20 supernet, second order) into OUT/search, then `sase compare` of the found
block (OUT/search/genotype.json) against paper, se, cbam, eca and none into OUT. Rerunning with the
same --out skips what is finished and resumes what is not.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

from ..genotype import Genotype
from ..search import SearchConfig, SearchDiverged, run_search
from ..train import TrainConfig, TrainingDiverged
from ..train.compare import markdown_table, parse_entries, run_compare
from ..utils.checkpoint import load_checkpoint
from .compare import parse_seeds

EPOCHS = 6  # compare epochs per run: digits reach ~97% top-1 by then, and the pipeline stays within ~5 min
SEEDS = "0,1"
BASELINES = ("paper", "se", "cbam", "eca", "none")
SPEED_KNOBS = ("out", "workers", "checkpoint_every", "download")  # may differ between a search and its rerun


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="search a block, then compare it with paper, se, cbam, eca and none",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pipeline", help="pipeline folder (default: runs/pipeline)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs of each compared run "
                   f"(default: {EPOCHS})")
    p.add_argument("--seeds", default=SEEDS, help=f"comma-separated seeds of the comparison (default: {SEEDS})")
    p.add_argument("--search-epochs", type=int, help=f"search epochs (default: {SearchConfig.epochs})")
    p.add_argument("--batch-size", type=int, help="batch size of the search and of the training runs "
                   f"(default: search {SearchConfig.batch_size}, training {TrainConfig.batch_size})")
    p.add_argument("--steps-per-epoch", type=int, help="cap on steps per epoch, search and training (for quick "
                   "trials)")
    p.add_argument("--image-size", type=int, help="input size, search and training (default: the dataset's)")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(command="pipeline")


def _shared(args: argparse.Namespace) -> dict:
    names = ("batch_size", "steps_per_epoch", "image_size")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None} | {"workers": args.workers}


def search(config: SearchConfig, progress: bool) -> Genotype:
    """The genotype of the search in config.out: read if it finished, resumed if it started, else run."""
    out = Path(config.out)
    if not (out / "checkpoint.pt").exists():
        return run_search(config, progress=progress).genotype
    saved = SearchConfig.load(out / "config.json")
    mine, theirs = asdict(config), asdict(saved)
    if {k: v for k, v in mine.items() if k not in SPEED_KNOBS} != {k: v for k, v in theirs.items()
                                                                   if k not in SPEED_KNOBS}:
        raise ValueError(f"{out} holds a search with other settings; use another --out")
    if load_checkpoint(out / "checkpoint.pt")["epoch"] >= config.epochs and (out / "genotype.json").exists():
        print(f"search: finished, read from {out}")
        return Genotype.from_json(out / "genotype.json")
    print(f"search: resuming {out}")
    return run_search(config, resume=True, progress=progress).genotype


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    search_config = replace(SearchConfig(out=str(out / "search")), **_shared(args),
                            **({"epochs": args.search_epochs} if args.search_epochs is not None else {}))
    base = TrainConfig(epochs=args.epochs, out=str(out), **_shared(args))
    seeds = parse_seeds(args.seeds)
    print(f"pipeline: search ({search_config.epochs} epochs, order {search_config.order}) -> {search_config.out}; "
          f"then compare searched, {', '.join(BASELINES)} ({base.epochs} epochs x seeds {args.seeds}) -> {out}")
    try:
        genotype = search(search_config, progress=not args.quiet)
        print(f"searched genotype: {genotype.to_json(indent=None)}")
        entries = parse_entries([f"searched={out / 'search' / 'genotype.json'}", *BASELINES])
        rows = run_compare(base, entries, seeds, out, progress=not args.quiet)
    except (SearchDiverged, TrainingDiverged) as err:
        print(f"sase pipeline: {err}", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    print(f"wrote {out}/comparison.md, comparison.json and comparison.png; search files in {out / 'search'}/")
    return 0
