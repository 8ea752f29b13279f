"""The genotype: JSON round trip, presets, and an error that names the edge, value and choices."""
from __future__ import annotations

import json

import pytest

from sase import EDGE_NAMES, EDGES, OPS, Genotype, GenotypeError

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
