"""A search folder as a result: read when finished, resumed when started, run when empty (pipeline, --seeds)."""
from __future__ import annotations

import json
from pathlib import Path

from ..genotype import Genotype
from ..utils.checkpoint import load_checkpoint
from ..utils.csvlog import read_csv
from .config import SearchConfig
from .evidence import saved_evidence
from .loop import CHECKPOINT, SearchResult, probabilities, run_search
from .verdict import VERDICT, judge


def ensure_search(config: SearchConfig, progress: bool = True) -> SearchResult:
    """The search in config.out: read when it finished, resumed when it started, else run from scratch.

    A folder that holds a search with another recipe is an error, never silently reused.
    """
    out = Path(config.out)
    if not (out / CHECKPOINT).exists():
        return run_search(config, progress=progress)
    saved = SearchConfig.load(out / "config.json")
    if saved.recipe() != config.recipe():
        differ = sorted(k for k, v in config.recipe().items() if saved.recipe().get(k) != v)
        raise ValueError(f"{out} holds a search with other settings ({', '.join(differ)}); use another --out")
    state = load_checkpoint(out / CHECKPOINT)
    if state["epoch"] < config.epochs or not (out / VERDICT).exists():
        print(f"search: resuming {out} at epoch {state['epoch'] + 1}", flush=True)
        return run_search(config, resume=True, progress=progress)
    print(f"search: finished, read from {out}", flush=True)
    return _finished(config, state)


def _finished(config: SearchConfig, state: dict) -> SearchResult:
    """The result of a finished search, from its files."""
    out = Path(config.out)
    alpha = state["model"]["alpha"]
    rows = read_csv(out / "history.csv")
    genotype = Genotype.from_json(out / "genotype.json")
    per_stage = out / "genotypes_per_stage.json"
    if per_stage.exists():
        stages = json.loads(per_stage.read_text())
        widths, genotypes = [int(w) for w in stages], [Genotype.from_dict(g) for g in stages.values()]
    else:
        widths, genotypes = [], [genotype]
    last = rows[-1] if rows else {}
    return SearchResult(genotype, genotypes, widths, out, float(last.get("val_acc", "nan")), 0.0,
                        judge(alpha, config.decided_margin, saved_evidence(state)), float(last.get("arch_lr", "nan")),
                        probabilities(alpha))


__all__ = ["ensure_search"]
