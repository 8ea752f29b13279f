"""Compare attention modules under one recipe: train each over several seeds, tabulate and plot.

    entries = parse_entries("none,se,cbam,eca,paper,found=runs/search/genotype.json")
    comparison = run_compare(TrainConfig(epochs=8), entries, seeds=[0, 1], out="runs/compare")

Each (attention, seed) cell is an ordinary training run in OUT/cells/<label>-seed<k>/. A cell with a
summary.json is finished and is read, not trained again; a cell with only a checkpoint is resumed.
OUT/comparison.md, comparison.json and comparison.png hold the result.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .config import TrainConfig
from .export import CHECKPOINT, SAFETENSORS, load_model, resolve_genotype
from .loop import SUMMARY, run_train
from .metrics import inference_throughput
from .plots import plot_comparison, si

INFER_BATCH = 64  # images per forward pass when timing inference
INFER_SECONDS = 1.0  # timing window per attention (at least 3 passes): long enough to steady the mean


@dataclass(frozen=True)
class Entry:
    """One attention of a comparison: its name in the table and what `sase train --attention` gets."""

    label: str
    attention: str

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)


def parse_entries(spec: str | Sequence[str]) -> list[Entry]:
    """Entries from 'none,se,LABEL=path/genotype.json,...'; a genotype file without a label is named
    after its folder when the file is called genotype.json (runs/search/genotype.json -> search)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no attention to compare; give a comma-separated list, e.g. none,se,paper")
    entries = []
    for item in items:
        label, sep, attention = item.partition("=")
        if not sep:
            path = Path(item)
            attention = item
            label = path.parent.name if path.suffix == ".json" and path.stem == "genotype" and path.parent.name \
                else path.stem if path.suffix == ".json" else item
        if not label or not attention:
            raise ValueError(f"bad attention entry {item!r}; write NAME, PATH.json or LABEL=NAME_OR_PATH")
        resolve_genotype(attention)  # fail on a bad name or file now, not after hours of training the others
        entries.append(Entry(label, attention))
    slugs = [e.slug for e in entries]
    repeated = sorted({s for s in slugs if slugs.count(s) > 1})
    if repeated:
        raise ValueError(f"attention label(s) {', '.join(repeated)} given twice; name entries with LABEL=...")
    return entries


@dataclass
class Row:
    """One attention's line of the table."""

    label: str
    attention: str
    top1: list[float]  # final validation top-1 of each seed, in [0, 1]
    parameters: int
    macs: int  # multiply-adds of one image at the training size
    train_images_per_s: float  # mean over seeds of each run's training throughput
    infer_images_per_s: float  # eval-mode forward passes on one fixed batch

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def std(self) -> float:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else 0.0  # sample std (n - 1) over seeds


def train_cell(config: TrainConfig, progress: bool) -> dict[str, Any]:
    """The summary of the run `config` describes: read when finished, else trained or resumed."""
    folder = Path(config.out)
    if (folder / SUMMARY).exists():
        saved = TrainConfig.load(folder / "config.json")
        if saved.recipe() != config.recipe():
            raise ValueError(f"{folder} holds a run with other settings than this comparison; use another --out")
        return json.loads((folder / SUMMARY).read_text())
    run_train(config, resume=(folder / CHECKPOINT).exists(), progress=progress)
    return json.loads((folder / SUMMARY).read_text())


def run_compare(base: TrainConfig, entries: Sequence[Entry], seeds: Sequence[int], out: str | Path,
                progress: bool = True) -> list[Row]:
    """Train (or read) every (entry, seed) cell under `base`, then write the table, JSON and plot to `out`."""
    if not seeds:
        raise ValueError("no seed given; e.g. --seeds 0,1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"recipe": asdict(base), "attentions": [asdict(e) for e in entries],
                                                  "seeds": list(seeds)}, indent=2) + "\n")
    rows = []
    for i, entry in enumerate(entries):
        summaries, folders = [], []
        for seed in seeds:
            folder = out / "cells" / f"{entry.slug}-seed{seed}"
            done = (folder / SUMMARY).exists()
            if progress:
                tqdm.write(f"[{i + 1}/{len(entries)}] {entry.label} seed {seed}: "
                           f"{'finished, read from' if done else 'training in'} {folder}")
            summaries.append(train_cell(replace(base, attention=entry.attention, seed=seed, out=str(folder)),
                                        progress))
            folders.append(folder)
        model, spec = load_model(folders[0] / SAFETENSORS)
        rows.append(Row(entry.label, entry.attention, [s["top1"] for s in summaries], summaries[0]["parameters"],
                        summaries[0]["macs"], statistics.fmean(s["train_images_per_s"] for s in summaries),
                        inference_throughput(model, spec.image_size, INFER_BATCH, spec.in_chans,
                                             min_seconds=INFER_SECONDS)))
    write_report(rows, base, seeds, out)
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| attention | top-1 (%) mean ± std | top-1 per seed | parameters | MACs | train img/s | infer img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {100 * r.mean:.2f} ± {100 * r.std:.2f} | "
                     f"{', '.join(f'{100 * t:.2f}' for t in r.top1)} | {si(r.parameters)} | {si(r.macs)} | "
                     f"{r.train_images_per_s:.0f} | {r.infer_images_per_s:.0f} |")
    return "\n".join(lines)


def write_report(rows: Sequence[Row], base: TrainConfig, seeds: Sequence[int], out: Path) -> None:
    amp = base.amp or "float32"
    recipe = (f"{base.model} on {base.dataset}, {base.epochs} epochs, batch {base.batch_size}, SGD lr {base.lr} "
              f"(warm-up {base.warmup_epochs} epochs, cosine), weight decay {base.weight_decay}, label smoothing "
              f"{base.label_smoothing}, clip {base.grad_clip}, {amp}"
              + (f", at most {base.steps_per_epoch} steps per epoch" if base.steps_per_epoch else "")
              + f"; seeds {', '.join(map(str, seeds))}")
    notes = ("top-1: validation (test split) accuracy after the last epoch, mean and sample std over seeds; no "
             "epoch is picked by its test score. MACs: multiply-adds of one image at the training size, counted by "
             "torch.utils.flop_counter (convolutions and matrix products; FLOPs = 2 x MACs). train img/s: training "
             f"throughput averaged over each run. infer img/s: eval-mode forward passes on one batch of {INFER_BATCH}.")
    text = f"# Attention comparison\n\n{recipe}\n\n{markdown_table(rows)}\n\n{notes}\n"
    (out / "comparison.md").write_text(text)
    data = [{**asdict(r), "mean": r.mean, "std": r.std} for r in rows]
    (out / "comparison.json").write_text(json.dumps(data, indent=2) + "\n")
    plot_comparison([r.label for r in rows], [100 * r.mean for r in rows], [100 * r.std for r in rows],
                    out / "comparison.png", title=f"{base.model} on {base.dataset}, {len(seeds)} seed(s)")


__all__ = ["Entry", "Row", "markdown_table", "parse_entries", "run_compare", "train_cell", "write_report"]
