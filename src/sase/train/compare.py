"""Compare attention modules under one recipe: train each over several seeds, tabulate and plot.

    entries = parse_entries("none,se,cbam,eca,paper,found=runs/search/genotype.json,random:4", out="runs/compare")
    comparison = run_compare(TrainConfig(epochs=8), entries, seeds=[0, 1], out="runs/compare")

Each (attention, seed) cell is an ordinary training run in OUT/cells/<label>-seed<k>/ (see sase.train.cells:
a finished cell is read, an interrupted one resumed, and `jobs` cells may train at once).
`random:K` adds K distinct genotypes drawn uniformly from the search space, written to
OUT/random/random-<i>.json: the random-search baseline a searched block has to beat (Li & Talwalkar,
"Random Search and Reproducibility for Neural Architecture Search", UAI 2019).
OUT/comparison.md, comparison.json and comparison.png hold the result: the mean top-1 over seeds with
its t interval, and each attention's difference to none and to the best hand-designed module, paired
by seed (a seed fixes the data order and augmentation for every attention, so pairing removes that share
of the noise).

The cells can be spread over separate jobs: `run_shard(..., shard=(K, N))` trains cell i (entries by
seeds, in the table's order) when i % N == K - 1 and writes no table; a `run_compare` afterwards reads
them all and tables them. Under torchrun every process walks the same cells, each trained by all of
them together (see sase.train.loop); rank 0 alone prints, times inference and writes the table.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


from ..attention import ATTENTIONS
from ..genotype import Genotype, random_genotypes
from ..utils.distributed import broadcast_object, world
from .config import TrainConfig
from .cells import SHARD_FORM, Cell, cells, search_verdict, shown_label, train_cells
from .export import SAFETENSORS, load_model, resolve_genotype
from .metrics import inference_throughput
from .plots import plot_comparison, si
from .stats import LEVEL, Estimate, mean_ci, paired_difference, verdict

INFER_BATCH = 64  # images per forward pass when timing inference
INFER_SECONDS = 1.0  # timing window per attention (at least 3 passes): long enough to steady the mean
RANDOM = "random:"  # `random:K` in a list of attentions: K genotypes drawn uniformly from the search space
HAND_DESIGNED = tuple(n for n in ATTENTIONS if n not in ("none", "sase"))  # published modules, not searched
UNDECIDED_NOTE = ("(undecided): the search ended with α undecided on some edge: this block is close to a random "
                  "pick, not a searched result.")


@dataclass(frozen=True)
class Entry:
    """One attention of a comparison: its name in the table and what `sase train --attention` gets."""

    label: str
    attention: str

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)


def parse_entries(spec: str | Sequence[str], out: str | os.PathLike | None = None,
                  random_seed: int = 0) -> list[Entry]:
    """Entries from 'none,se,LABEL=path/genotype.json,random:K,...'; a genotype file without a label is named
    after its folder when the file is called genotype.json (runs/search/genotype.json -> search).

    `random:K` stands for K random genotypes (see `random_entries`), whose files go under `out`.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no attention to compare; give a comma-separated list, e.g. none,se,paper")
    # every plain entry is checked before a random genotype file is written
    parsed = [_random_count(item) if item.startswith(RANDOM) else _entry(item) for item in items]
    entries: list[Entry] = []
    for p in parsed:
        if isinstance(p, Entry):
            entries.append(p)
        elif out is None:
            raise ValueError("random:K writes its genotypes into the comparison folder, and none was given")
        else:
            entries.extend(random_entries(p, out, random_seed))
    slugs = [e.slug for e in entries]
    repeated = sorted({s for s in slugs if slugs.count(s) > 1})
    if repeated:
        raise ValueError(f"attention label(s) {', '.join(repeated)} given twice; name entries with LABEL=...")
    return entries


def _entry(item: str) -> Entry:
    label, sep, attention = item.partition("=")
    if not sep:
        path = Path(item)
        attention = item
        label = path.parent.name if path.suffix == ".json" and path.stem == "genotype" and path.parent.name \
            else path.stem if path.suffix == ".json" else item
    if not label or not attention:
        raise ValueError(f"bad attention entry {item!r}; write NAME, PATH.json, LABEL=NAME_OR_PATH or random:K")
    resolve_genotype(attention)  # fail on a bad name or file now, not after hours of training the others
    search_verdict(attention)  # and on a malformed verdict beside a genotype file
    return Entry(label, attention)


def _random_count(item: str) -> int:
    count = item[len(RANDOM):].strip()
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"bad attention entry {item!r}; random:K takes a positive number of genotypes, e.g. random:4")
    return int(count)


def random_entries(k: int, out: str | os.PathLike, seed: int) -> list[Entry]:
    """random-1 ... random-k: `random_genotypes(k, seed)` written to OUT/random/random-<i>.json.

    A file already there must hold the same draw, so that a rerun resumes the cells of the same blocks.
    """
    folder = Path(out) / "random"
    entries = []
    for i, genotype in enumerate(random_genotypes(k, seed), start=1):
        path = folder / f"random-{i}.json"
        if not path.exists():
            write_whole(path, genotype.to_json() + "\n")
        elif Genotype.from_json(path) != genotype:
            raise ValueError(f"{path} holds another genotype than random seed {seed} draws; use the random seed "
                             f"recorded in {Path(out) / 'compare.json'}, or another output folder")
        entries.append(Entry(f"random-{i}", str(path)))
    return entries


@dataclass
class Row:
    """One attention's line of the table."""

    label: str
    attention: str
    top1: list[float]  # final validation top-1 of each seed, in [0, 1], in the order of the comparison's seeds
    parameters: int
    macs: int  # multiply-adds of one image at the training size
    train_images_per_s: float  # mean over seeds of each run's training throughput
    infer_images_per_s: float  # eval-mode forward passes on one fixed batch
    decided: Optional[bool] = None  # the search's verdict on a searched genotype file; None where there is none
    val_loss: list[float] = field(default_factory=list)  # final validation loss of each seed (not finite: overflow)

    @property
    def shown(self) -> str:
        return shown_label(self.label, self.decided)

    @property
    def top1_estimate(self) -> Estimate:
        return mean_ci(self.top1)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else None  # sample std (n - 1); none of one seed


def run_compare(base: TrainConfig, entries: Sequence[Entry], seeds: Sequence[int], out: str | Path,
                progress: bool = True, random_seed: int = 0, jobs: int = 1) -> list[Row]:
    """Train (or read) every (entry, seed) cell under `base`, `jobs` at a time, then write the table, JSON
    and plot to `out`.

    `random_seed` is the seed the random entries were drawn with, recorded in OUT/compare.json. Under
    torchrun every process returns the rows rank 0 built.
    """
    out = _start(base, entries, seeds, out, random_seed)
    todo = cells(entries, seeds, out)
    summaries = train_cells(base, todo, progress, jobs)
    rows = None
    if world().main:
        n = len(seeds)  # each entry's cells follow one another, one per seed
        rows = [_row(todo[i].entry, summaries[i:i + n], todo[i].folder) for i in range(0, len(todo), n)]
        write_report(rows, base, seeds, out)
    return broadcast_object(rows)


def run_shard(base: TrainConfig, entries: Sequence[Entry], seeds: Sequence[int], out: str | Path,
              shard: tuple[int, int], progress: bool = True, random_seed: int = 0, jobs: int = 1) -> list[Cell]:
    """Train (or read) the cells of share K of N, `shard` = (K, N): cell i when i % N == K - 1; no table.

    Returns those cells. A `run_compare` with the same arguments afterwards reads them and tables them.
    """
    k, n = shard
    if not 1 <= k <= n:
        raise ValueError(f"{SHARD_FORM}; got {k}/{n}")
    out = _start(base, entries, seeds, out, random_seed)
    mine = [c for i, c in enumerate(cells(entries, seeds, out)) if i % n == k - 1]
    train_cells(base, mine, progress, jobs)
    return mine


def _start(base: TrainConfig, entries: Sequence[Entry], seeds: Sequence[int], out: str | Path,
           random_seed: int) -> Path:
    """OUT/compare.json, the comparison's settings (by rank 0)."""
    if not seeds:
        raise ValueError("no seed given; e.g. --seeds 0,1")
    out = Path(out)
    if world().main:
        settings = {"recipe": asdict(base), "attentions": [asdict(e) for e in entries], "seeds": list(seeds),
                    "random_seed": random_seed}
        write_whole(out / "compare.json", json.dumps(settings, indent=2) + "\n")
    return out


def _row(entry: Entry, summaries: Sequence[dict[str, Any]], folder: Path) -> Row:
    """An entry's line of the table, from its cells' summaries; inference timed on the model in `folder`."""
    model, spec = load_model(folder / SAFETENSORS)
    return Row(entry.label, entry.attention, [s["top1"] for s in summaries], summaries[0]["parameters"],
               summaries[0]["macs"], statistics.fmean(s["train_images_per_s"] for s in summaries),
               inference_throughput(model, spec.image_size, INFER_BATCH, spec.in_chans, min_seconds=INFER_SECONDS),
               search_verdict(entry.attention), [s["loss"] for s in summaries])


def overflow_note(row: Row, seeds: Sequence[int]) -> str:
    bad = [str(seed) for seed, loss in zip(seeds, row.val_loss) if not math.isfinite(loss)]
    return (f"{row.shown}: in eval mode the network's outputs were not finite on some test images with seed(s) "
            f"{', '.join(bad)} (its activations overflowed; the validation loss is not finite, and those images "
            "count as wrong).")


def write_whole(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file renamed over it: the shards of a job array and the
    processes of a torchrun may write the same file at once, and a reader must find a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")  # a name of its own on every node and process
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def references(rows: Sequence[Row]) -> dict[str, Row]:
    """The rows every attention is set against, where present: "none" (no attention) and "best hand-designed"
    (of the published modules, not none and not sase, the one with the highest mean top-1)."""
    found = {"none": next((r for r in rows if r.attention.lower() == "none"), None),
             "best hand-designed": max((r for r in rows if r.attention.lower() in HAND_DESIGNED),
                                       key=lambda r: r.mean, default=None)}
    return {name: row for name, row in found.items() if row is not None}


def differences(row: Row, refs: dict[str, Row]) -> dict[str, Optional[Estimate]]:
    """Reference name -> the top-1 difference row - reference, paired by seed; None for the reference itself."""
    return {name: None if ref is row else paired_difference(row.top1, ref.top1) for name, ref in refs.items()}


def _difference_cell(d: Optional[Estimate]) -> str:
    if d is None:
        return "(reference)"
    interval = f" [{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if d.low is not None and d.high is not None else ""
    return f"{100 * d.mean:+.2f}{interval}, {verdict(d)}"


def _top1_cells(row: Row) -> list[str]:
    e = row.top1_estimate
    if e.std is None or e.low is None or e.high is None:
        return [f"{100 * e.mean:.2f}", "none with one seed"]
    return [f"{100 * e.mean:.2f} ± {100 * e.std:.2f}", f"[{100 * e.low:.2f}, {100 * e.high:.2f}]"]


def markdown_table(rows: Sequence[Row]) -> str:
    """The comparison as a markdown table: top-1 statistics, differences to the references, costs."""
    refs = references(rows)
    titles = [f"vs {ref.label}" + (f", {name}" if name != ref.label else "") + " (pp)" for name, ref in refs.items()]
    header = ["attention", "top-1 (%) mean ± std", f"{LEVEL:.0%} CI (%)", "top-1 per seed", *titles, "parameters",
              "MACs", "train img/s", "infer img/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.shown, *_top1_cells(r), ", ".join(f"{100 * t:.2f}" for t in r.top1),
                 *(_difference_cell(d) for d in differences(r, refs).values()), si(r.parameters), si(r.macs),
                 f"{r.train_images_per_s:.0f}", f"{r.infer_images_per_s:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(e: Estimate) -> Optional[list[float]]:
    return [e.low, e.high] if e.low is not None and e.high is not None else None


def row_record(row: Row, refs: dict[str, Row]) -> dict[str, Any]:
    """One row of comparison.json: the row's fields, its top-1 statistics and its paired differences."""
    e = row.top1_estimate
    record = {**asdict(row), "mean": e.mean, "std": e.std, "ci": _interval(e), "level": e.level}
    record["val_loss"] = [v if math.isfinite(v) else None for v in row.val_loss]  # JSON has no NaN: null, not finite
    for name, d in differences(row, refs).items():
        record["vs_" + re.sub(r"[^a-z]+", "_", name)] = None if d is None else {
            "reference": refs[name].label, "mean": d.mean, "std": d.std, "ci": _interval(d), "verdict": verdict(d)}
    return record


def write_report(rows: Sequence[Row], base: TrainConfig, seeds: Sequence[int], out: Path) -> None:
    amp = base.amp or "float32"
    recipe = (f"{base.model} on {base.dataset}, {base.epochs} epochs, batch {base.batch_size}, SGD lr {base.lr} "
              f"(warm-up {base.warmup_epochs} epochs, cosine), weight decay {base.weight_decay}, label smoothing "
              f"{base.label_smoothing}, clip {base.grad_clip}, {amp}"
              + (", BatchNorm synchronised across processes" if base.sync_bn else "")
              + (f", at most {base.steps_per_epoch} steps per epoch" if base.steps_per_epoch else "")
              + f"; seeds {', '.join(map(str, seeds))}")
    notes = [
        "top-1: validation (test split) accuracy after the last epoch, mean and sample std over seeds; no epoch is "
        f"picked by its test score. {LEVEL:.0%} CI: Student t interval of the mean (n - 1 degrees of freedom); one "
        "seed gives no interval.",
        "MACs: multiply-adds of one image at the training size, counted by torch.utils.flop_counter (convolutions "
        "and matrix products; FLOPs = 2 x MACs). train img/s: training throughput averaged over each run. "
        f"infer img/s: eval-mode forward passes on one batch of {INFER_BATCH}.",
    ]
    if references(rows):
        notes.insert(1, "vs none / vs the best hand-designed module (of " + ", ".join(HAND_DESIGNED) + ", the "
                     "highest mean here): top-1 difference in percentage points (pp) paired by seed (each seed's run "
                     f"minus the reference's run of the same seed), its mean and {LEVEL:.0%} t interval; within the "
                     "noise when the interval holds 0, clearly better or worse when it lies above or below 0.")
    if any(r.label.startswith("random-") and Path(r.attention).parent == out / "random" for r in rows):
        notes.append("random-<i>: a genotype drawn uniformly from the search space (files in random/, seed in "
                     "compare.json), the random-search baseline.")
    if any(r.decided is False for r in rows):
        notes.append(UNDECIDED_NOTE)
    notes += [overflow_note(r, seeds) for r in rows if not all(math.isfinite(v) for v in r.val_loss)]
    text = f"# Attention comparison\n\n{recipe}\n\n{markdown_table(rows)}\n\n" + "\n\n".join(notes) + "\n"
    (out / "comparison.md").write_text(text)
    refs = references(rows)
    (out / "comparison.json").write_text(json.dumps([row_record(r, refs) for r in rows], indent=2) + "\n")
    estimates = [r.top1_estimate for r in rows]
    plot_comparison([r.shown for r in rows], [100 * e.mean for e in estimates],
                    [None if e.half_width is None else 100 * e.half_width for e in estimates],
                    out / "comparison.png", title=f"{base.model} on {base.dataset}, {len(seeds)} seed(s)", level=LEVEL)


__all__ = ["HAND_DESIGNED", "Entry", "Row", "differences", "markdown_table", "parse_entries", "random_entries",
           "references", "run_compare", "run_shard", "write_report"]
