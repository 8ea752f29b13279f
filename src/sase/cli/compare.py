"""`sase compare`: train several attention modules under one recipe over several seeds and tabulate them.

Every (attention, seed) is a training run in OUT/cells/<attention>-seed<k>/. Rerunning with the same
--out reads finished runs and resumes unfinished ones, so an interrupted comparison continues where it
stopped. `random:K` among the attentions adds K distinct genotypes drawn uniformly from the search space
(seeded by --random-seed, written to OUT/random/random-<i>.json), the random-search baseline. Writes
OUT/comparison.md (the table: mean, std and 95% CI over seeds, and the differences to none and to the
best hand-designed module paired by seed), comparison.json and comparison.png (top-1 bars with the CI).
A genotype whose search left α undecided (verdict.json beside it) is shown as "LABEL (undecided)".

Several GPUs: `torchrun --nproc_per_node 4 -m sase compare ...` trains each cell on the 4 processes
together (--batch-size stays the global batch; see `sase train --help`); rank 0 prints and writes.

Several jobs: --shard K/N trains only this call's share of the cells (cell i, attentions by seeds in
the table's order, when i % N == K - 1) and writes no table; a final call with the same flags and no
--shard reads the finished cells, trains any still missing and writes the table. A SLURM job array:

    # compare.sbatch
    #SBATCH --array=1-4
    #SBATCH --gpus-per-task=1
    sase compare --attentions none,se,cbam,eca,paper --seeds 0,1,2 --out runs/cmp \
        --shard ${SLURM_ARRAY_TASK_ID}/4

    $ jobid=$(sbatch --parsable compare.sbatch)
    $ sbatch --dependency=afterok:$jobid --wrap "sase compare --attentions none,se,cbam,eca,paper \
        --seeds 0,1,2 --out runs/cmp"

Each task may itself be a torchrun of several GPUs. Start the final call after every task has ended
(--dependency above): a cell still being trained by a task would be resumed by two jobs at once.
"""
from __future__ import annotations

import argparse
import sys

from ..train import TrainingDiverged
from ..train.cells import Cell, check_jobs, default_jobs, parse_shard, search_verdict, shown_label
from ..train.compare import markdown_table, parse_entries, run_compare, run_shard
from ..utils.distributed import check_batch
from ..utils.folders import check_out
from .commands import HELP
from .train import add_recipe_flags, config_from_args

DEFAULT_ATTENTIONS = "none,se,cbam,eca,paper"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=HELP["compare"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attentions", default=DEFAULT_ATTENTIONS,
                   help="comma-separated: zoo names, presets, genotype JSON paths, LABEL=NAME_OR_PATH, or "
                        f"random:K for K random genotypes (default: {DEFAULT_ATTENTIONS})")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random:K genotypes (default: 0)")
    add_recipe_flags(p, skip=("attention", "seed", "out"))
    p.add_argument("--out", default="runs/compare", help="comparison folder (default: runs/compare)")
    add_jobs_flag(p)
    p.add_argument("--shard", metavar="K/N", help="train only share K of N of the cells and write no table: one "
                   "task of a job array (see above); a final call without --shard tables them")
    p.set_defaults(command="compare")


def add_jobs_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, help="cells trained at once, each in its own process with an equal share of "
                   "the threads (default: one per CPU core when training on the CPU, 1 on a GPU and under torchrun)")


def jobs_from_args(args: argparse.Namespace, device: str) -> int:
    jobs = default_jobs(device) if args.jobs is None else args.jobs
    check_jobs(jobs)
    return jobs


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    check_out(args.out)  # before any training: a comparison folder that cannot be written fails at once
    seeds = parse_seeds(args.seeds)
    shard = None if args.shard is None else parse_shard(args.shard)
    base = config_from_args(args, out=args.out)
    check_batch(base.batch_size)  # before compare.json: a batch that cannot split over the processes writes nothing
    jobs = jobs_from_args(args, base.device)
    entries = parse_entries(args.attentions, out=args.out, random_seed=args.random_seed)
    shown = ", ".join(shown_label(e.label, search_verdict(e.attention)) for e in entries)
    print(f"comparing {shown} on {base.model} / {base.dataset}, {base.epochs} epochs, "
          f"seeds {', '.join(map(str, seeds))} -> {args.out}" + (f", shard {args.shard}" if shard else ""))
    try:
        if shard is not None:
            done = run_shard(base, entries, seeds, args.out, shard, progress=not args.quiet,
                             random_seed=args.random_seed, jobs=jobs)
        else:
            rows = run_compare(base, entries, seeds, args.out, progress=not args.quiet, random_seed=args.random_seed,
                               jobs=jobs)
    except TrainingDiverged as err:
        print(f"sase compare: {err}", file=sys.stderr)
        return 1
    if shard is not None:
        print(shard_report(done, shard, len(entries) * len(seeds)))
        return 0
    print(markdown_table(rows))
    print(f"wrote {args.out}/comparison.md, comparison.json and comparison.png")
    return 0


def shard_report(done: list[Cell], shard: tuple[int, int], total: int) -> str:
    """What a --shard call did, and what comes next."""
    names = ", ".join(c.folder.name for c in done) or "no cell (more shards than cells)"
    return (f"shard {shard[0]}/{shard[1]}: finished {names} ({len(done)} of {total} cells); no table written: once "
            "every shard has finished, the same command without --shard tables them")
