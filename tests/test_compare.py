"""`sase compare` and `sase pipeline` end to end on tiny data: table, plot, skipping and resuming cells."""
from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from scipy import stats as scipy_stats

from sase import Genotype
from sase.cli import main
from sase.genotype import random_genotypes
from sase.train import TrainConfig, Trainer, run_train
from sase.train.cells import search_verdict, shown_label
from sase.train.compare import (UNDECIDED_NOTE, Entry, Row, markdown_table, parse_entries, random_entries, run_compare,
                                write_report)
from sase.utils.checkpoint import load_checkpoint
from helpers import interrupt_after

TINY = ["--epochs", "1", "--batch-size", "16", "--steps-per-epoch", "3", "--image-size", "8", "--quiet"]
TINY_CONFIG = TrainConfig(epochs=2, batch_size=16, steps_per_epoch=3, image_size=8, checkpoint_every=1)
FOUND = Genotype(("gap", "conv1d_3", "affine", "gap", "gap_gmp", "sep_3"))


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    """Time inference over a few passes, not a second per attention: the tests check the plumbing."""
    monkeypatch.setattr("sase.train.compare.INFER_SECONDS", 0.0)


def t_interval(values: list[float]) -> tuple[float, float]:
    return scipy_stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=scipy_stats.sem(values))


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    return ci.low, ci.high


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("cells/*/checkpoint.pt"))}


def table_rows(markdown: str) -> dict[str, list[str]]:
    """attention -> its cells, from the markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| attention")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_compare_trains_every_cell_once_and_writes_the_report(tmp_path, capsys):
    FOUND.to_json(tmp_path / "found.json")
    (tmp_path / "verdict.json").write_text(json.dumps({"decided": False, "min_margin": 0.01}))  # its search's
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--attentions", f"none,se,mine={tmp_path / 'found.json'}", "--seeds", "0,1",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["mine-seed0", "mine-seed1", "none-seed0", "none-seed1", "se-seed0", "se-seed1"]
    assert "comparing none, se, mine (undecided) on" in printed
    table = table_rows((out / "comparison.md").read_text())
    assert list(table) == ["none", "se", "mine (undecided)"] and table_rows(printed) == table
    assert UNDECIDED_NOTE in (out / "comparison.md").read_text()
    header = next(line for line in printed.splitlines() if line.startswith("| attention"))
    assert "| 95% CI (%) |" in header and "| vs none (pp) | vs se, best hand-designed (pp) |" in header
    data = {r["label"]: r for r in json.loads((out / "comparison.json").read_text())}
    data["mine (undecided)"] = data["mine"]
    for label, (mean_std, ci, per_seed, vs_none, vs_best, params, macs, train_ips, infer_ips) in table.items():
        mean, std = (float(v) for v in mean_std.split(" ± "))
        seeds = [float(v) for v in per_seed.split(", ")]
        assert len(seeds) == 2 and 0 <= min(seeds) <= mean <= max(seeds) <= 100 and std >= 0
        low, high = t_interval(data[label]["top1"])
        assert ci == f"[{100 * low:.2f}, {100 * high:.2f}]" and data[label]["ci"] == pytest.approx([low, high])
        for cell, reference, key in ((vs_none, "none", "vs_none"), (vs_best, "se", "vs_best_hand_designed")):
            if label == reference:
                assert cell == "(reference)" and data[label][key] is None
                continue
            low, high = paired_interval(data[label]["top1"], data[reference]["top1"])
            words = "within the noise" if low <= 0 <= high else "clearly better" if low > 0 else "clearly worse"
            assert cell.endswith(f"[{100 * low:+.2f}, {100 * high:+.2f}], {words}")
        assert params.endswith(" K") and macs.endswith(" M") and float(train_ips) > 0 and float(infer_ips) > 0
    assert data["se"]["vs_none"]["reference"] == "none" and data["mine"]["vs_best_hand_designed"]["reference"] == "se"
    assert data["mine"]["vs_none"]["mean"] == pytest.approx(statistics.fmean(
        m - n for m, n in zip(data["mine"]["top1"], data["none"]["top1"])))
    assert [data[k]["decided"] for k in ("none", "se", "mine")] == [None, None, False]
    assert data["none"]["parameters"] < data["se"]["parameters"]  # SE adds its MLPs
    for label in ("none", "se", "mine"):  # the table shows what the runs' summaries hold
        summaries = [json.loads((out / "cells" / f"{label}-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
        assert data[label]["top1"] == [s["top1"] for s in summaries]
    assert json.loads((out / "compare.json").read_text())["random_seed"] == 0
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
    interrupt_after(trainer, 4)
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
    with pytest.raises(ValueError, match="comparison folder"):
        parse_entries("none,random:2")  # random genotypes need a folder to be written to


def test_random_entries_are_written_once_and_kept_when_more_are_asked(tmp_path):
    entries = parse_entries("none,random:2", out=tmp_path, random_seed=7)
    files = [tmp_path / "random" / f"random-{i}.json" for i in (1, 2)]
    assert entries == [Entry("none", "none"), *(Entry(f"random-{i}", str(f)) for i, f in enumerate(files, 1))]
    assert [Genotype.from_json(f) for f in files] == random_genotypes(2, seed=7)
    stamps = [f.stat().st_mtime_ns for f in files]
    more = random_entries(3, tmp_path, seed=7)
    assert [e.label for e in more] == ["random-1", "random-2", "random-3"]
    assert [f.stat().st_mtime_ns for f in files] == stamps  # the first two are the same draws, not rewritten
    assert Genotype.from_json(more[2].attention) == random_genotypes(3, seed=7)[2]
    with pytest.raises(ValueError, match="another genotype than random seed 8"):
        random_entries(1, tmp_path, seed=8)


def test_search_verdict_reads_the_verdict_beside_a_genotype(tmp_path):
    for name, verdict in (("decided", {"decided": True}), ("undecided", {"decided": False, "min_margin": 0.01}),
                          ("plain", None), ("broken", {"margin": 0.2})):
        (tmp_path / name).mkdir()
        FOUND.to_json(tmp_path / name / "genotype.json")
        if verdict is not None:
            (tmp_path / name / "verdict.json").write_text(json.dumps(verdict))
    assert search_verdict(tmp_path / "decided" / "genotype.json") is True
    assert search_verdict(str(tmp_path / "undecided" / "genotype.json")) is False
    assert search_verdict(tmp_path / "plain" / "genotype.json") is None
    assert search_verdict("se") is None and search_verdict("paper") is None
    with pytest.raises(ValueError, match="decided"):
        search_verdict(tmp_path / "broken" / "genotype.json")
    with pytest.raises(ValueError, match="decided"):  # refused before any training
        parse_entries(f"none,{tmp_path / 'broken' / 'genotype.json'}")
    assert shown_label("undecided", False) == "undecided (undecided)" and shown_label("x", None) == "x"


@pytest.mark.parametrize("spec, message", [
    ("none,none", "given twice"),
    ("none,squeeze", "unknown attention 'squeeze'"),
    ("none,missing/genotype.json", "missing/genotype.json"),
    ("", "no attention"),
    ("=se", "bad attention entry"),
    ("none,random:0", "positive number"),
    ("random:x", "positive number"),
    ("random:2,squeeze", "unknown attention 'squeeze'"),
])
def test_bad_entries_fail_before_any_training(tmp_path, capsys, spec, message):
    assert main(["compare", *TINY, "--attentions", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "cells").exists() and not (tmp_path / "random").exists()


def test_table_mean_and_sample_std():
    row = Row("se", "se", [0.90, 0.92, 0.94], 1_234_567, 4_100_000_000, 100.0, 200.0)
    assert row.mean == pytest.approx(0.92) and row.std == pytest.approx(0.02)
    low, high = t_interval(row.top1)
    assert (f"| se | 92.00 ± 2.00 | [{100 * low:.2f}, {100 * high:.2f}] | 90.00, 92.00, 94.00 | (reference) | 1.2 M "
            "| 4.10 G | 100 | 200 |") in markdown_table([row])
    one = Row("x", "x", [0.5], 1, 1, 1.0, 1.0)
    assert one.std is None and "| x | 50.00 | none with one seed | 50.00 | 1 | 1 | 1 | 1 |" in markdown_table([one])
    lines = markdown_table([Row("none", "none", [0.4], 1, 1, 1.0, 1.0), one]).splitlines()
    assert lines[0].startswith("| attention | top-1 (%) mean ± std | 95% CI (%) | top-1 per seed | vs none (pp) |")
    assert lines[2].startswith("| none | 40.00 | none with one seed | 40.00 | (reference) |")
    assert lines[3].startswith("| x | 50.00 | none with one seed | 50.00 | +10.00, one seed: no interval |")


def test_report_pairs_by_seed_against_none_and_the_best_hand_designed(tmp_path):
    def row(label: str, attention: str, top1: list[float], decided: bool | None = None) -> Row:
        return Row(label, attention, top1, 1000, 2000, 10.0, 20.0, decided)

    rows = [row("baseline", "none", [0.80, 0.82, 0.84]), row("se", "se", [0.81, 0.80, 0.86]),
            row("eca", "eca", [0.83, 0.86, 0.85]), row("sase", "sase", [0.95, 0.95, 0.95]),  # not hand-designed
            row("mine", "runs/s/genotype.json", [0.90, 0.93, 0.95], decided=False),
            row("worse", "runs/t/genotype.json", [0.70, 0.71, 0.73], decided=True)]
    write_report(rows, TINY_CONFIG, [0, 1, 2], tmp_path)
    text = (tmp_path / "comparison.md").read_text()
    table = table_rows(text)
    assert list(table) == ["baseline", "se", "eca", "sase", "mine (undecided)", "worse"]
    assert "| vs baseline, none (pp) | vs eca, best hand-designed (pp) |" in text  # eca: highest mean of se, eca
    assert UNDECIDED_NOTE in text and "random-<i>" not in text
    verdicts = {label: (cells[3].split(", ")[-1], cells[4].split(", ")[-1]) for label, cells in table.items()}
    assert verdicts == {"baseline": ("(reference)", "within the noise"), "se": ("within the noise", "within the noise"),
                        "eca": ("within the noise", "(reference)"), "sase": ("clearly better", "clearly better"),
                        "mine (undecided)": ("clearly better", "clearly better"),
                        "worse": ("clearly worse", "clearly worse")}
    data = {r["label"]: r for r in json.loads((tmp_path / "comparison.json").read_text())}
    assert [r["decided"] for r in data.values()] == [None, None, None, None, False, True]
    mine = data["mine"]["vs_best_hand_designed"]
    assert mine["reference"] == "eca" and mine["verdict"] == "clearly better"
    assert mine["ci"] == pytest.approx(list(paired_interval(rows[4].top1, rows[2].top1)))
    assert mine["mean"] == pytest.approx(statistics.fmean(a - b for a, b in zip(rows[4].top1, rows[2].top1)))
    with Image.open(tmp_path / "comparison.png") as image:
        assert image.size[0] > 200 and image.size[1] > 200


def test_report_names_the_seeds_whose_outputs_overflowed(tmp_path):
    rows = [Row("none", "none", [0.8, 0.8, 0.8], 1, 1, 1.0, 1.0, None, [0.5, 0.6, 0.7]),
            Row("mine", "runs/s/genotype.json", [0.1, 0.5, 0.1], 1, 1, 1.0, 1.0, False, [math.nan, 1.2, math.inf])]
    write_report(rows, TINY_CONFIG, [3, 4, 5], tmp_path)
    text = (tmp_path / "comparison.md").read_text()
    assert "mine (undecided): in eval mode the network's outputs were not finite on some test images with seed(s) " \
        "3, 5 (" in text
    assert text.count("outputs were not finite") == 1  # none's are
    data = {r["label"]: r for r in json.loads((tmp_path / "comparison.json").read_text())}  # strict JSON: no NaN
    assert data["mine"]["val_loss"] == [None, 1.2, None] and data["none"]["val_loss"] == [0.5, 0.6, 0.7]


def test_random_baseline_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--attentions", "random:2", "--seeds", "0", "--random-seed", "3", "--jobs", "1",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "comparing random-1, random-2 on" in printed
    drawn = random_genotypes(2, seed=3)
    assert [Genotype.from_json(out / "random" / f"random-{i}.json") for i in (1, 2)] == drawn
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["random-1-seed0", "random-2-seed0"]
    for i, genotype in enumerate(drawn, start=1):  # each cell trained its own draw
        spec = json.loads((out / "cells" / f"random-{i}-seed0" / "summary.json").read_text())["model_spec"]
        assert Genotype.from_json(spec["genotype"]) == genotype
    text = (out / "comparison.md").read_text()
    table = table_rows(text)
    assert list(table) == ["random-1", "random-2"] and table_rows(printed) == table
    assert "random-<i>: a genotype drawn uniformly" in text and UNDECIDED_NOTE not in text
    assert all(" ± " not in c[0] and c[1] == "none with one seed" for c in table.values())  # one seed: no interval
    data = json.loads((out / "comparison.json").read_text())
    assert [(r["label"], r["decided"], r["std"], r["ci"]) for r in data] == [("random-1", None, None, None),
                                                                             ("random-2", None, None, None)]
    recorded = json.loads((out / "compare.json").read_text())
    assert recorded["random_seed"] == 3
    assert recorded["attentions"][0] == {"label": "random-1", "attention": str(out / "random" / "random-1.json")}
    assert (out / "comparison.png").stat().st_size > 0

    before = mtimes(out)
    assert main(args) == 0 and "training in" not in capsys.readouterr().out  # the same cells, read again
    assert main([*args[:-4], "--random-seed", "4", "--out", str(out)]) == 2  # other draws than the cells hold
    assert "another genotype than random seed 4" in capsys.readouterr().err and mtimes(out) == before

    # a copied comparison names its genotype files by their new path: the same genotypes, so its cells are read
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = mtimes(copy)
    assert main([*args[:-2], "--out", str(copy)]) == 0
    assert "training in" not in capsys.readouterr().out and mtimes(copy) == before
    # moved: the recorded paths are gone, and each run's own record of its genotype stands for them
    moved = tmp_path / "moved"
    out.rename(moved)
    before = mtimes(moved)
    assert main([*args[:-2], "--out", str(moved)]) == 0
    assert "training in" not in capsys.readouterr().out and mtimes(moved) == before


def test_pipeline_end_to_end_and_rerun_skips(tmp_path, capsys):
    out = tmp_path / "pipe"
    # one cell at a time (two at a time is tested with compare): no worker processes to start
    args = ["pipeline", "--search-epochs", "1", "--search-steps", "2", "--epochs", "1", "--seeds", "0", "--jobs", "1",
            "--steps-per-epoch", "2", "--batch-size", "32", "--image-size", "8", "--quiet", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    genotype = Genotype.from_json(out / "search" / "genotype.json")
    assert f"searched genotype: {genotype.to_json(indent=None)}" in printed
    assert load_checkpoint(out / "search" / "checkpoint.pt")["epoch"] == 1
    table = table_rows((out / "comparison.md").read_text())
    # a search this short may end undecided, and is then labelled so
    searched = shown_label("found", search_verdict(out / "search" / "genotype.json"))
    assert list(table) == [searched, "paper", "se", "cbam", "eca", "none", "random-1", "random-2"]
    assert table_rows(printed) == table
    assert json.loads((out / "search" / "config.json").read_text())["dataset"] == "cluttered-digits"
    spec = json.loads((out / "cells" / "found-seed0" / "summary.json").read_text())["model_spec"]
    assert Genotype.from_json(spec["genotype"]) == genotype
    assert (out / "comparison.png").stat().st_size > 0

    search_mtime = (out / "search" / "checkpoint.pt").stat().st_mtime_ns
    before = mtimes(out)
    assert main(args) == 0
    assert "search: finished" in capsys.readouterr().out
    assert (out / "search" / "checkpoint.pt").stat().st_mtime_ns == search_mtime and mtimes(out) == before


def test_cells_trained_in_parallel_equal_those_trained_in_turn(tmp_path, capsys):
    """Two cells at a time, each in its own one-thread process, give bit for bit what one process gives."""
    entries = parse_entries("none,se")
    config = replace(TINY_CONFIG, epochs=1)
    rows = {jobs: run_compare(config, entries, [0], tmp_path / f"jobs{jobs}", progress=True, jobs=jobs)
            for jobs in (1, 2)}
    assert "2 at a time" in capsys.readouterr().out
    assert [r.top1 for r in rows[1]] == [r.top1 for r in rows[2]]
    for name in ("none-seed0", "se-seed0"):
        one, two = (load_checkpoint(tmp_path / f"jobs{j}" / "cells" / name / "checkpoint.pt")["model"] for j in (1, 2))
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_jobs_must_be_positive(tmp_path, capsys):
    assert main(["compare", *TINY, "--attentions", "none", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
