"""`sase export` on a trained tiny model: each format written, checked against PyTorch by the command, and
run again here at a size the command did not check; bad input is one line and exit code 2."""
from __future__ import annotations

import re

import pytest
import torch

from sase import create_model
from sase.cli import main
from sase.export import load_exported
from sase.train.export import load_model

TINY = ["--epochs", "1", "--batch-size", "16", "--steps-per-epoch", "2", "--image-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--attention", "paper", "--out", str(out)]) == 0
    return out


# the exported format, whose torch.export the onnx one runs too, is checked by name below (a faster model)
@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_a_trained_model_exports_and_matches_pytorch(trained, capsys, fmt, suffix):
    capsys.readouterr()
    assert main(["export", str(trained), "--format", fmt]) == 0
    printed = capsys.readouterr().out
    path = trained / f"model{suffix}"
    assert f"wrote {path}" in printed and "dynamic batch, height and width" in printed
    model, spec = load_model(trained)
    checked = re.findall(r"([0-9.]+e[+-]\d+) at (\d+)x(\d+)x(\d+)x(\d+)", printed)
    assert [tuple(map(int, c[1:])) for c in checked] == [(2, spec.in_chans, 8, 8), (3, spec.in_chans, 10, 6)]
    assert all(float(c[0]) < 1e-4 for c in checked)
    run = load_exported(path, fmt)
    for batch in (1, 5):  # batches and a size the command did not check
        x = torch.randn(batch, spec.in_chans, 12, 9)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_model_by_name_exports_with_its_attention(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "resnet20", "--attention", "eca", "--format", "exported", "--image-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "wrote resnet20-eca.pt2" in printed and "resnet20 + eca" in printed
    checked = re.findall(r"([0-9.]+e[+-]\d+) at (\d+x\d+x\d+x\d+)", printed)
    assert [c[1] for c in checked] == ["2x3x8x8", "3x3x10x6"] and all(float(c[0]) < 1e-4 for c in checked)
    program = torch.export.load("resnet20-eca.pt2")
    assert any("conv1d" in str(n.target) for n in program.graph.nodes)  # ECA's channel convolution is in it
    torch.manual_seed(0)  # the command's own initialisation
    model = create_model("resnet20", attention="eca").eval()
    for batch in (1, 5):  # batch 1 too: the program does not assume a dynamic size is never 1
        x = torch.randn(batch, 3, 12, 9)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("words,expected", [
    (["nowhere", "--format", "onnx"], "'nowhere' is neither a model file"),
    (["{run}", "--format", "onnx", "--attention", "se"], "--attention goes with a model name"),
    (["resnet20", "--format", "torchscript", "--opset", "17"], "--opset is for --format onnx"),
    (["resnet20", "--format", "exported", "--attention", "nope"], "unknown attention 'nope'"),
    (["resnet20", "--format", "exported", "--out", "{run}/missing/m.pt2"], "no folder"),
])
def test_bad_input_is_one_line_and_exit_2(trained, capsys, words, expected):
    capsys.readouterr()
    assert main(["export", *(w.format(run=trained) for w in words)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sase export: error:") and expected in err
