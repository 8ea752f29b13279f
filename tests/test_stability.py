"""Stability over seeds: aggregation and consensus on hand-made genotypes, and `sase search --seeds` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sase import Genotype
from sase.cell import EDGES
from sase.cli import main
from sase.ops import OPS
from sase.search import aggregate, write_stability

NAMES = [list(OPS[e.op_set]) for e in EDGES]


def genotype(picks: list[int]) -> Genotype:
    """The genotype taking candidate picks[e] (an index into the registry) on edge e."""
    return Genotype(tuple(NAMES[e][k] for e, k in enumerate(picks)))


def uniform() -> np.ndarray:
    return np.full((6, 7), 1 / 7)


def test_majority_vote_per_edge():
    a, b = genotype([0, 1, 2, 3, 4, 5]), genotype([0, 1, 2, 3, 4, 6])
    c = genotype([1, 1, 2, 0, 4, 6])
    s = aggregate([(0, a, uniform(), True), (1, b, uniform(), True), (2, c, uniform(), False)])
    assert s.consensus() == genotype([0, 1, 2, 3, 4, 6])
    report = s.to_dict()
    shares = [e["modal_share"] for e in report["edges"]]
    assert shares == pytest.approx([2 / 3, 1, 1, 2 / 3, 1, 2 / 3])
    assert report["agreement"] == pytest.approx(sum(shares) / 6)
    assert report["decided"] == {"0": True, "1": True, "2": False} and report["all_decided"] is False
    counts = {json.dumps(g["genotype"]): g["count"] for g in report["genotypes"]}
    assert sorted(counts.values()) == [1, 1, 1]


def test_ties_are_broken_by_mean_probability():
    a, b = genotype([0] * 6), genotype([3] * 6)
    pa, pb = uniform(), uniform()
    pa[:, 0], pa[:, 3] = 0.30, 0.05  # seed 0 likes candidate 0 strongly ...
    pb[:, 3], pb[:, 0] = 0.20, 0.10  # ... seed 1 likes 3 less: means 0.20 vs 0.125
    pb[2, 3], pb[2, 0] = 0.60, 0.01  # except on edge 2, where candidate 3 wins on the mean (0.325 vs 0.155)
    s = aggregate([(0, a, pa, True), (1, b, pb, True)])
    assert s.consensus() == genotype([0, 0, 3, 0, 0, 0])


def test_identical_searches_agree_fully():
    g = Genotype.paper()
    s = aggregate([(k, g, uniform(), True) for k in range(3)])
    assert s.consensus() == g and s.to_dict()["agreement"] == 1.0
    assert s.to_dict()["genotypes"] == [{"genotype": g.to_dict(), "count": 3, "seeds": [0, 1, 2]}]


def test_report_files(tmp_path):
    a, b = genotype([0, 1, 2, 3, 4, 5]), genotype([1, 1, 2, 3, 4, 5])
    s = aggregate([(0, a, uniform(), True), (1, b, uniform(), False)])
    write_stability(s, tmp_path)
    assert Genotype.from_json(tmp_path / "genotype.json") == s.consensus()
    assert json.loads((tmp_path / "verdict.json").read_text())["decided"] is False
    text = (tmp_path / "stability.md").read_text()
    assert "1/2 seeds" in text and "2/2 seeds" in text
    with Image.open(tmp_path / "stability.png") as image:
        assert image.size[0] > 600


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="no search"):
        aggregate([])


def test_cli_seeds_end_to_end(tmp_path, capsys):
    out = tmp_path / "seeds"
    args = ["search", "--seeds", "0,1", "--epochs", "1", "--batch-size", "8", "--steps-per-epoch", "2",
            "--image-size", "8", "--eval-images", "64", "--order", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "stability.json").read_text())
    assert report["seeds"] == [0, 1]
    per_seed = [Genotype.from_json(out / f"seed-{k}" / "genotype.json") for k in (0, 1)]
    assert [g["count"] for g in report["genotypes"]] == ([2] if per_seed[0] == per_seed[1] else [1, 1])
    assert Genotype.from_json(out / "genotype.json").to_json(indent=None) in printed
    for k in (0, 1):
        assert json.loads((out / f"seed-{k}" / "config.json").read_text())["seed"] == k
    # a rerun reads the finished searches instead of searching again
    before = (out / "seed-0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "seed-0" / "checkpoint.pt").stat().st_mtime_ns == before


def test_cli_seed_and_seeds_conflict(tmp_path, capsys):
    assert main(["search", "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
