"""The genotype: JSON round trip, presets, and an error that names the edge, value and choices."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from sase import EDGE_NAMES, EDGES, OPS, Genotype, GenotypeError
from sase.genotype import random_genotypes

PAPER = {
    "channel_squeeze": "gap_gmp",
    "channel_excitation": "fc",
    "channel_refine": "affine",
    "spatial_squeeze_refined": "pnorm",
    "spatial_squeeze_input": "gap",
    "spatial_excitation": "conv_3x2",
}


def test_paper_preset_is_the_published_genotype():
    assert Genotype.paper().to_dict() == PAPER
    assert Genotype.resolve("paper") == Genotype.resolve("sase") == Genotype.paper()


def test_json_round_trip_text_and_file(tmp_path):
    g = Genotype(tuple(list(OPS[e.op_set])[-1] for e in EDGES))
    assert Genotype.from_json(g.to_json()) == g
    path = tmp_path / "g.json"
    g.to_json(path)
    assert Genotype.from_json(path) == g
    assert Genotype.from_json(str(path)) == g
    assert Genotype.resolve(str(path)) == g
    assert json.loads(path.read_text()) == g.to_dict()


def test_is_a_frozen_hashable_mapping():
    g = Genotype.paper()
    assert list(g) == list(EDGE_NAMES) and g["channel_refine"] == "affine" and len(g) == 6
    assert dict(g) == PAPER
    with pytest.raises(AttributeError):
        g.ops = ()  # type: ignore[misc]
    assert {g: 1}[Genotype.from_dict(PAPER)] == 1


@pytest.mark.parametrize("edge", EDGES, ids=lambda e: e.name)
def test_every_op_of_every_edge_is_accepted(edge):
    for op in OPS[edge.op_set]:
        assert Genotype.from_dict({**PAPER, edge.name: op})[edge.name] == op


BAD = [
    ({**PAPER, "channel_squeeze": "max"}, ["'channel_squeeze'", "'max'", "gap, l2, pnorm"]),
    ({**PAPER, "channel_squeeze": "fc"}, ["'channel_squeeze'", "channel_excitation op", "gap_gmp"]),
    ({**PAPER, "spatial_excitation": "conv_9"}, ["'spatial_excitation'", "'conv_9'", "sep_3"]),
    ({k: v for k, v in PAPER.items() if k != "channel_refine"}, ["missing edge 'channel_refine'"]),
    ({**PAPER, "edge_7": "gap"}, ["unknown edge 'edge_7'", "channel_squeeze"]),
    ({**PAPER, "channel_excitation": 3}, ["'channel_excitation'", "int", "conv1d_3"]),
    ({**PAPER, "channel_excitation": None}, ["'channel_excitation'", "NoneType"]),
    (["gap_gmp", "fc"], ["object mapping each edge", "list"]),
    ("paper!", ["neither a preset", "paper"]),
    ('{"channel_squeeze": "gap",', ["malformed genotype JSON", "line 1"]),
    (42, ["cannot make a genotype from int"]),
]


@pytest.mark.parametrize("spec,phrases", BAD, ids=range(len(BAD)))
def test_bad_input_names_the_problem(spec, phrases):
    with pytest.raises(GenotypeError) as info:
        if isinstance(spec, list):
            Genotype.from_json(json.dumps(spec))
        else:
            Genotype.resolve(spec)
    for phrase in phrases:
        assert phrase in str(info.value)
    assert isinstance(info.value, ValueError)  # never a KeyError from inside


def test_malformed_json_file_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"channel_squeeze": }')
    with pytest.raises(GenotypeError, match="broken.json"):
        Genotype.from_json(path)
    with pytest.raises(GenotypeError, match="does not exist"):
        Genotype.from_json(tmp_path / "absent.json")


def test_wrong_number_of_ops():
    with pytest.raises(GenotypeError, match="6 op names"):
        Genotype(("gap",))


def test_random_genotypes_are_valid_seeded_and_distinct():
    drawn = random_genotypes(50, seed=0)
    assert len(set(drawn)) == 50 and all(isinstance(g, Genotype) for g in drawn)
    assert all(g[e.name] in OPS[e.op_set] for g in drawn for e in EDGES)
    assert random_genotypes(50, seed=0) == drawn and random_genotypes(50, seed=1) != drawn
    assert random_genotypes(7, seed=0) == drawn[:7]  # asking for more keeps the earlier draws
    assert Genotype.random(np.random.RandomState(0)) == Genotype.random(0) == drawn[0]
    # RandomState's stream is fixed by NumPy: the first draw of seed 0 is the same on every machine
    assert drawn[0].ops == ("gap_std", "conv1d_3x3", "fc", "gap_gmp", "gap_gmp", "conv_5")


def test_random_genotypes_are_uniform_over_each_edge():
    drawn = random_genotypes(3000, seed=5)
    for edge in EDGES:
        counts = Counter(g[edge.name] for g in drawn)
        assert set(counts) == set(OPS[edge.op_set])
        expected = len(drawn) / len(OPS[edge.op_set])  # about 429 each; its binomial std is about 19
        assert all(abs(c - expected) < 6 * math.sqrt(expected) for c in counts.values()), (edge.name, counts)


@pytest.mark.parametrize("k", [0, -1, math.prod(len(OPS[e.op_set]) for e in EDGES) + 1])
def test_random_genotypes_count_is_bounded_by_the_search_space(k):
    with pytest.raises(ValueError, match="search space"):
        random_genotypes(k)


def test_random_genotypes_can_exhaust_a_small_space(monkeypatch):
    """With two ops per set the space holds 2^6 = 64 genotypes: asking for 64 must give each one once."""
    monkeypatch.setattr("sase.genotype.OPS", {s: dict(list(r.items())[:2]) for s, r in OPS.items()})
    drawn = random_genotypes(64, seed=0)
    assert len(set(drawn)) == 64
    with pytest.raises(ValueError, match="between 1 and 64"):
        random_genotypes(65)
