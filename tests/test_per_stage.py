"""Per-stage genotypes: validation, JSON round trip, a ResNet with one genotype per width, train and reload."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sase
from sase import Genotype, GenotypeError, StageGenotypes
from sase.attention import create_attention
from sase.block import SASEBlock
from sase.cli import main
from sase.train import load_model
from sase.train.export import ModelSpec, resolve_genotype

G16 = Genotype(("gap", "fc", "affine", "pnorm", "gap", "conv_3x2"))
G32 = Genotype(("gap_gmp", "conv1d_3", "fc", "l2", "gap_std", "sep_3"))
G64 = Genotype(("l2", "affine", "conv1d_5", "gap", "gap_gmp", "conv_5"))
STAGES = StageGenotypes.from_dict({"16": G16.to_dict(), "32": G32.to_dict(), "64": G64.to_dict()})


def _edges(genotype: Genotype) -> dict[str, str]:
    return genotype.to_dict()


# ---------------------------------------------------------------- the value


def test_mapping_of_widths_to_genotypes():
    assert STAGES.widths == (16, 32, 64) and list(STAGES) == [16, 32, 64] and len(STAGES) == 3
    assert (STAGES[16], STAGES[32], STAGES[64]) == (G16, G32, G64)
    assert STAGES.genotype_for(32) == G32 and 32 in STAGES and 48 not in STAGES
    with pytest.raises(KeyError):
        STAGES[48]
    with pytest.raises(AttributeError):  # frozen
        STAGES.stages = ()  # type: ignore[misc]


def test_input_order_does_not_matter():
    shuffled = StageGenotypes.from_dict({64: G64, "16": _edges(G16), " 32": _edges(G32)})
    assert shuffled == STAGES and hash(shuffled) == hash(STAGES)
    assert shuffled.to_json() == STAGES.to_json()


def test_json_round_trip(tmp_path):
    text = STAGES.to_json()
    assert json.loads(text) == {"16": _edges(G16), "32": _edges(G32), "64": _edges(G64)}
    assert StageGenotypes.from_json(text) == STAGES
    path = tmp_path / "genotypes_per_stage.json"
    assert STAGES.to_json(path, indent=None) == path.read_text().strip()
    assert StageGenotypes.from_json(path) == STAGES
    assert StageGenotypes.from_json(str(path)) == STAGES
    assert StageGenotypes.from_dict(STAGES.to_dict()) == STAGES


@pytest.mark.parametrize("data, words", [
    ({}, ["empty"]),
    ({"abc": _edges(G16)}, ["'abc'", "not an integer"]),
    ({"16": _edges(G16), "16.5": _edges(G32)}, ["'16.5'", "not an integer"]),
    ({"0": _edges(G16)}, ["width 0", "not positive"]),
    ({"-32": _edges(G16)}, ["width -32", "not positive"]),
    ({"16": _edges(G16), "016": _edges(G32)}, ["width 16", "more than once"]),
    ({"16": _edges(G16), "32": {**_edges(G32), "channel_squeeze": "fc"}}, ["width 32", "'fc'", "channel_squeeze"]),
    ({"16": _edges(G16), "64": {"channel_squeeze": "gap"}}, ["width 64", "missing edge"]),
    ({"32": "paper"}, ["width 32", "str"]),
    ([_edges(G16)], ["list"]),
])
def test_validation_errors_name_the_bad_value(data, words):
    with pytest.raises(GenotypeError) as err:
        StageGenotypes.from_dict(data)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_malformed_json_and_missing_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"16": ')
    with pytest.raises(GenotypeError, match="malformed per-stage genotype JSON in .*bad.json"):
        StageGenotypes.from_json(tmp_path / "bad.json")
    with pytest.raises(GenotypeError, match="nowhere.json"):
        StageGenotypes.from_json(tmp_path / "nowhere.json")


def test_missing_width_names_it_and_the_widths_there_are():
    with pytest.raises(GenotypeError) as err:
        STAGES.genotype_for(128)
    assert "128" in str(err.value) and "16, 32, 64" in str(err.value)
    with pytest.raises(ValueError, match=r"width 256.*16, 32, 64"):
        sase.create_model("resnet50", attention=STAGES, num_classes=10)


# ---------------------------------------------------------------- building models


def test_create_attention_picks_the_genotype_of_the_width(tmp_path):
    path = tmp_path / "genotypes_per_stage.json"
    STAGES.to_json(path)
    for spec in (STAGES, STAGES.to_json(), path, str(path), STAGES.to_dict()):
        for width, genotype in STAGES.items():
            block = create_attention(spec, width)
            assert isinstance(block, SASEBlock) and block.channels == width and block.genotype == genotype
    single = tmp_path / "genotype.json"
    G32.to_json(single)
    assert create_attention(str(single), 16).genotype == G32  # a single genotype still goes to every width


def test_resnet20_blocks_carry_their_stage_genotype():
    model = sase.create_model("resnet20", attention=STAGES, num_classes=10)
    for stage, (width, genotype) in zip((model.layer1, model.layer2, model.layer3), STAGES.items()):
        assert len(stage) == 3
        for block in stage:
            assert block.attn.channels == width and block.attn.genotype == genotype
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_resolve_genotype_and_model_spec(tmp_path):
    path = tmp_path / "genotypes_per_stage.json"
    STAGES.to_json(path)
    assert resolve_genotype(str(path)) == STAGES and resolve_genotype(STAGES.to_json()) == STAGES
    assert resolve_genotype("paper") == Genotype.paper() and resolve_genotype("se") is None
    (tmp_path / "bad.json").write_text(json.dumps({"16": _edges(G16), "32x": _edges(G32)}))
    with pytest.raises(ValueError, match="unknown attention .*'32x' is not an integer"):
        resolve_genotype(str(tmp_path / "bad.json"))
    spec = ModelSpec.create("resnet20", str(path), num_classes=10, image_size=8, dataset="digits")
    assert StageGenotypes.from_json(spec.genotype) == STAGES
    path.unlink()  # the spec holds the genotypes themselves
    assert spec.build().layer2[1].attn.genotype == G32
    old = ModelSpec.from_dict({"model": "resnet20", "attention": "paper", "genotype": Genotype.paper().to_json(),
                               "num_classes": 10, "in_chans": 3, "image_size": 8, "dataset": "digits"})
    assert old.build().layer3[0].attn.genotype == Genotype.paper()


# ---------------------------------------------------------------- train and reload


def test_train_a_per_stage_file_then_reload(tmp_path):
    path = tmp_path / "search" / "genotypes_per_stage.json"
    path.parent.mkdir()
    STAGES.to_json(path)
    out = tmp_path / "run"
    assert main(["train", "--attention", str(path), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
                 "--image-size", "8", "--out", str(out), "--quiet"]) == 0
    path.unlink()  # the exports alone rebuild the model
    x = torch.randn(4, 3, 8, 8)
    outputs = []
    for name in ("model.safetensors", "checkpoint.pt"):
        model, spec = load_model(out / name)
        assert StageGenotypes.from_json(spec.genotype) == STAGES
        assert [model.layer1[0].attn.genotype, model.layer2[2].attn.genotype, model.layer3[1].attn.genotype] \
            == [G16, G32, G64]
        with torch.no_grad():
            outputs.append(model(x))
    assert torch.equal(outputs[0], outputs[1]) and torch.isfinite(outputs[0]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert StageGenotypes.from_json(summary["model_spec"]["genotype"]) == STAGES


def test_train_with_a_width_the_file_lacks_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "genotypes_per_stage.json"
    StageGenotypes.from_dict({"16": G16, "32": G32}).to_json(path)
    assert main(["train", "--attention", str(path), "--epochs", "1", "--steps-per-epoch", "1", "--image-size", "8",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "width 64" in err and "16, 32" in err, err
