"""The cells of a comparison: one training run per (attention, seed), trained, resumed or read, in turn or in parallel.

A cell with a summary.json is finished and is read, not trained again; a cell with only a checkpoint is
resumed. `jobs` > 1 trains that many cells at once, each in its own process with an equal share of the
CPU's threads: small models on a CPU leave most of a core idle between their many small kernels, so
two one-thread runs side by side finish close to twice as fast as one run with two threads.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..search.verdict import VERDICT, read_verdict
from ..stage_genotypes import genotype_or_stages
from ..utils.distributed import world
from .config import TrainConfig
from .export import CHECKPOINT, resolve_genotype
from .loop import SUMMARY, run_train

if TYPE_CHECKING:
    from .compare import Entry

UNDECIDED = " (undecided)"  # suffix of the shown label of a block whose search left α undecided
SHARD_FORM = "--shard takes K/N, share K of N shares of the cells (1 <= K <= N), e.g. 1/4"


@dataclass(frozen=True)
class Cell:
    """One (attention, seed) training run of a comparison."""

    entry: Entry
    seed: int
    folder: Path


def cells(entries: Sequence[Entry], seeds: Sequence[int], out: str | Path) -> list[Cell]:
    """Every cell of a comparison, in the table's order: by entry, then by seed."""
    return [Cell(e, s, Path(out) / "cells" / f"{e.slug}-seed{s}") for e in entries for s in seeds]


def parse_shard(text: str) -> tuple[int, int]:
    """(K, N) from "K/N", 1 <= K <= N: the K-th of N shares of the cells."""
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdecimal() and n.strip().isdecimal() and 1 <= int(k) <= int(n)):
        raise ValueError(f"{SHARD_FORM}; got {text!r}")
    return int(k), int(n)


def search_verdict(genotype_path: str | os.PathLike) -> Optional[bool]:
    """Whether the search that wrote this genotype file decided its α (the "decided" field of the
    verdict.json beside it); None for anything else: a zoo name, a preset, a file with no verdict."""
    path = Path(genotype_path)
    if path.suffix != ".json" or not path.is_file():
        return None
    record = read_verdict(path.parent)
    if record is None:
        return None
    decided = record.get("decided") if isinstance(record, dict) else None
    if not isinstance(decided, bool):
        raise ValueError(f"{path.parent / VERDICT} should be a JSON object with \"decided\": true or false")
    return decided


def shown_label(label: str, decided: Optional[bool]) -> str:
    """The label as tables, charts and progress lines show it: marked when the search left α undecided."""
    return label + (UNDECIDED if decided is False else "")


def train_cell(config: TrainConfig, progress: bool) -> dict[str, Any]:
    """The summary of the run `config` describes: read when finished, else trained or resumed."""
    folder = Path(config.out)
    if (folder / SUMMARY).exists():
        saved, summary = TrainConfig.load(folder / "config.json"), json.loads((folder / SUMMARY).read_text())
        if not _same_run(saved, config, summary):
            raise ValueError(f"{folder} holds a run with other settings than this comparison; use another --out")
        return summary
    run_train(config, resume=(folder / CHECKPOINT).exists(), progress=progress)
    return json.loads((folder / SUMMARY).read_text())


def _same_run(saved: TrainConfig, config: TrainConfig, summary: dict[str, Any]) -> bool:
    """Whether a finished run is the cell `config` describes. A genotype file its config names by a path
    that no longer resolves (the folder moved, or a relative path from another directory) is matched by
    the genotype the run itself recorded in its model spec."""
    mine, theirs = config.recipe(), saved.recipe()
    if mine == theirs:
        return True
    if {**mine, "attention": None} != {**theirs, "attention": None}:
        return False
    wanted = resolve_genotype(config.attention)
    recorded = summary.get("model_spec", {}).get("genotype")
    return wanted is not None and recorded is not None and genotype_or_stages(recorded) == wanted


def check_jobs(jobs: int) -> None:
    """A ValueError for a job count that cannot run: below 1, or above 1 under torchrun."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if jobs > 1 and world().distributed:
        raise ValueError("--jobs trains cells in parallel processes of one machine; under torchrun every process "
                         "already trains each cell together, so leave --jobs at 1 there")


def default_jobs(device: str) -> int:
    """Parallel cells when none is asked for: one per CPU core for a run on the CPU, else one (a GPU is
    shared better by one run at a time)."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if not on_cpu or world().distributed:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_cells(base: TrainConfig, todo: Sequence[Cell], progress: bool = True, jobs: int = 1) -> list[dict[str, Any]]:
    """The summary of each cell under `base`, in `todo`'s order: read when finished, else trained or
    resumed; `jobs` cells at a time, each in its own process, when `jobs` > 1."""
    check_jobs(jobs)
    configs = [replace(base, attention=c.entry.attention, seed=c.seed, out=str(c.folder)) for c in todo]
    pending = [i for i, c in enumerate(todo) if not (c.folder / SUMMARY).exists()]
    jobs = min(jobs, len(pending))
    if jobs <= 1:
        summaries = []
        for i, (cell, config) in enumerate(zip(todo, configs)):
            _announce(i, todo, progress, "finished, read from" if i not in pending else "training in")
            summaries.append(train_cell(config, progress))
        return summaries
    return _train_in_parallel(configs, todo, pending, jobs, progress)


def _train_in_parallel(configs: Sequence[TrainConfig], todo: Sequence[Cell], pending: Sequence[int], jobs: int,
                       progress: bool) -> list[dict[str, Any]]:
    """Every pending cell in a pool of `jobs` processes (threads split evenly), the finished ones read here."""
    threads = max(1, torch.get_num_threads() // jobs)
    # spawn, not fork: a forked copy of a process that already ran torch's thread pools can deadlock
    context = multiprocessing.get_context("spawn")
    summaries: list[Optional[dict[str, Any]]] = [None] * len(todo)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(train_cell, configs[i], False): i for i in pending}
        if progress:
            tqdm.write(f"training {len(pending)} cells, {jobs} at a time ({threads} thread{'s' * (threads > 1)} each)")
        for i, cell in enumerate(todo):
            if i not in pending:
                _announce(i, todo, progress, "finished, read from")
                summaries[i] = train_cell(configs[i], False)
        bar = tqdm(total=len(pending), desc="cells", disable=not progress, dynamic_ncols=True)
        try:
            for future in as_completed(futures):
                i = futures[future]
                summaries[i] = future.result()  # a cell's error (a diverged run, a bad file) ends the comparison here
                bar.update()
                _announce(i, todo, progress, f"top-1 {summaries[i]['top1']:.4f}"
                          + ("" if math.isfinite(summaries[i]["loss"]) else " (outputs not finite on some test images)")
                          + ", in")
        except BaseException:
            # cells not started stay untouched; a running one keeps its last checkpoint, resumed on the next call
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
    return summaries  # type: ignore[return-value]  # every slot is filled: read or trained


def _worker_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _announce(i: int, todo: Sequence[Cell], progress: bool, what: str) -> None:
    cell = todo[i]
    if progress and world().main:
        label = shown_label(cell.entry.label, search_verdict(cell.entry.attention))
        tqdm.write(f"[{i + 1}/{len(todo)}] {label} seed {cell.seed}: {what} {cell.folder}")


__all__ = ["SHARD_FORM", "UNDECIDED", "Cell", "cells", "check_jobs", "default_jobs", "parse_shard", "search_verdict",
           "shown_label", "train_cell", "train_cells"]
