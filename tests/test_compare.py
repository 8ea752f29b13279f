"""`sase compare` and `sase pipeline` end to end on tiny data: table, plot, skipping and resuming cells."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from sase import Genotype
from sase.cli import main
from sase.train import TrainConfig, Trainer, run_train
from sase.train.compare import Entry, Row, markdown_table, parse_entries, run_compare
from sase.utils.checkpoint import load_checkpoint

TINY = ["--epochs", "1", "--batch-size", "16", "--steps-per-epoch", "3", "--image-size", "8", "--quiet"]
TINY_CONFIG = TrainConfig(epochs=2, batch_size=16, steps_per_epoch=3, image_size=8, checkpoint_every=1)
FOUND = Genotype(("gap", "conv1d_3", "affine", "gap", "gap_gmp", "sep_3"))


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    """Time inference over a few passes, not a second per attention: the tests check the plumbing."""
    monkeypatch.setattr("sase.train.compare.INFER_SECONDS", 0.0)


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("cells/*/checkpoint.pt"))}


def table_rows(markdown: str) -> dict[str, list[str]]:
    """attention -> its cells, from the markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| attention")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_compare_trains_every_cell_once_and_writes_the_report(tmp_path, capsys):
    FOUND.to_json(tmp_path / "found.json")
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--attentions", f"none,se,mine={tmp_path / 'found.json'}", "--seeds", "0,1",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["mine-seed0", "mine-seed1", "none-seed0", "none-seed1", "se-seed0", "se-seed1"]
    table = table_rows((out / "comparison.md").read_text())
    assert list(table) == ["none", "se", "mine"] and table_rows(printed) == table
    for label, (mean_std, per_seed, params, macs, train_ips, infer_ips) in table.items():
        mean, std = (float(v) for v in mean_std.split(" ± "))
        seeds = [float(v) for v in per_seed.split(", ")]
        assert len(seeds) == 2 and 0 <= min(seeds) <= mean <= max(seeds) <= 100 and std >= 0
        assert params.endswith(" K") and macs.endswith(" M") and float(train_ips) > 0 and float(infer_ips) > 0
    data = {r["label"]: r for r in json.loads((out / "comparison.json").read_text())}
    assert data["none"]["parameters"] < data["se"]["parameters"]  # SE adds its MLPs
    for label in ("none", "se", "mine"):  # the table shows what the runs' summaries hold
        summaries = [json.loads((out / "cells" / f"{label}-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
        assert data[label]["top1"] == [s["top1"] for s in summaries]
    assert Genotype.from_json(json.loads((out / "cells" / "mine-seed0" / "summary.json").read_text())
                              ["model_spec"]["genotype"]) == FOUND
    with Image.open(out / "comparison.png") as image:
        assert image.size[0] > 200 and image.size[1] > 200

    before = mtimes(out)
    assert main(args) == 0  # everything finished: read, not trained again
    assert "training in" not in capsys.readouterr().out
    assert mtimes(out) == before and table_rows((out / "comparison.md").read_text()).keys() == table.keys()
    assert [r["top1"] for r in json.loads((out / "comparison.json").read_text())] == \
        [data[k]["top1"] for k in ("none", "se", "mine")]


def test_an_unfinished_cell_is_resumed_to_the_uninterrupted_result(tmp_path):
    out = tmp_path / "cmp"
    cell = replace(TINY_CONFIG, attention="eca", seed=0, out=str(out / "cells" / "eca-seed0"))
    trainer = Trainer(cell, progress=False)
    original, calls = trainer._train_step, {"n": 0}

    def stop(x, y, epoch):
        if calls["n"] == 4:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(x, y, epoch)

    trainer._train_step = stop  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    run_compare(TINY_CONFIG, parse_entries("eca"), [0], out, progress=False)
    whole = run_train(replace(cell, out=str(tmp_path / "whole")), progress=False)
    resumed, reference = (load_checkpoint(p / "checkpoint.pt")["model"] for p in (Path(cell.out), whole.out))
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_a_finished_cell_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--attentions", "none", "--seeds", "0", "--out", str(out)]) == 0
    assert main(["compare", *TINY, "--attentions", "none", "--seeds", "0", "--lr", "0.05", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "Traceback" not in err


def test_parse_entries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("runs/x/genotype.json", "runs/y/best.json", "runs/z/genotype.json"):
        Path(path).parent.mkdir(parents=True)
        FOUND.to_json(path)
    entries = parse_entries("none, se ,paper,runs/x/genotype.json,runs/y/best.json,found=runs/z/genotype.json")
    assert [e.label for e in entries] == ["none", "se", "paper", "x", "best", "found"]
    assert entries[-1] == Entry("found", "runs/z/genotype.json")
    assert Entry("a b/c", "se").slug == "a_b_c"


@pytest.mark.parametrize("spec, message", [
    ("none,none", "given twice"),
    ("none,squeeze", "unknown attention 'squeeze'"),
    ("none,missing/genotype.json", "missing/genotype.json"),
    ("", "no attention"),
    ("=se", "bad attention entry"),
])
def test_bad_entries_fail_before_any_training(tmp_path, capsys, spec, message):
    assert main(["compare", *TINY, "--attentions", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "cells").exists()


def test_table_mean_and_sample_std():
    row = Row("se", "se", [0.90, 0.92, 0.94], 1_234_567, 4_100_000_000, 100.0, 200.0)
    assert row.mean == pytest.approx(0.92) and row.std == pytest.approx(0.02)
    assert "| se | 92.00 ± 2.00 | 90.00, 92.00, 94.00 | 1.2 M | 4.10 G | 100 | 200 |" in markdown_table([row])
    assert Row("x", "x", [0.5], 1, 1, 1.0, 1.0).std == 0.0


def test_pipeline_end_to_end_and_rerun_skips(tmp_path, capsys):
    out = tmp_path / "pipe"
    args = ["pipeline", "--search-epochs", "1", "--epochs", "1", "--seeds", "0", "--steps-per-epoch", "2",
            "--batch-size", "8", "--image-size", "8", "--quiet", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    genotype = Genotype.from_json(out / "search" / "genotype.json")
    assert f"searched genotype: {genotype.to_json(indent=None)}" in printed
    assert load_checkpoint(out / "search" / "checkpoint.pt")["epoch"] == 1
    table = table_rows((out / "comparison.md").read_text())
    assert list(table) == ["searched", "paper", "se", "cbam", "eca", "none"] and table_rows(printed) == table
    spec = json.loads((out / "cells" / "searched-seed0" / "summary.json").read_text())["model_spec"]
    assert Genotype.from_json(spec["genotype"]) == genotype
    assert (out / "comparison.png").stat().st_size > 0

    search_mtime = (out / "search" / "checkpoint.pt").stat().st_mtime_ns
    before = mtimes(out)
    assert main(args) == 0
    assert "search: finished" in capsys.readouterr().out
    assert (out / "search" / "checkpoint.pt").stat().st_mtime_ns == search_mtime and mtimes(out) == before
