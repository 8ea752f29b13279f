"""`sase bench` on a tiny backbone writes its table, CSV, chart and settings, with ratios to the plain backbone."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from sase import create_model
from sase.cli import main
from sase.export.bench import entries_with_baseline, ratio_stats
from sase.train.metrics import count_flops, count_parameters

# the eager backend: dynamo's whole capture, without inductor's minutes of C++ compiling per model
TINY = ["--model", "resnet20", "--image-size", "8", "--batch-size", "2", "--rounds", "3", "--threads", "1",
        "--compile-backend", "eager"]


def read_csv(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_bench_writes_table_csv_chart_and_config(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", *TINY, "--attentions", "paper", "--compile-train", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out / "bench.csv")
    assert [r["attention"] for r in rows] == ["none", "paper"]  # the plain backbone added, first
    torch.manual_seed(0)
    for row in rows:
        model = create_model("resnet20", attention=row["spec"])
        assert int(row["parameters"]) == count_parameters(model)
        assert int(row["flops"]) == count_flops(model, 8)
    plain, paper = rows
    for key in ("parameters_ratio", "flops_ratio", "eager_ratio", "compiled_ratio", "train_ratio",
                "compiled_train_ratio", "peak_mib_forward_ratio", "peak_mib_train_ratio"):
        assert float(plain[key]) == 1.0, key
        assert float(paper[key]) > 0, key
    assert float(paper["parameters_ratio"]) > 1 and float(paper["flops_ratio"]) > 1
    for key in ("eager", "compiled", "train", "compiled_train"):
        q1, median, q3 = (float(paper[f"{key}_ratio{s}"]) for s in ("_q1", "", "_q3"))
        assert q1 <= median <= q3
        assert float(paper[f"{key}_images_per_s"]) == pytest.approx(2 / (float(paper[f"{key}_ms"]) / 1000))
    assert float(paper["peak_mib_forward"]) > 0 and float(paper["peak_mib_train"]) > 0
    assert paper["compile_error"] == "" and float(paper["compile_s"]) > 0
    assert paper["compile_train_error"] == "" and float(paper["compile_train_s"]) > 0

    table = (out / "bench.md").read_text()
    command = ("sase bench --model resnet20 --attentions paper --batch-size 2 --image-size 8 --rounds 3 "
               f"--compile-backend eager --compile-train --threads 1 --out {out}")
    assert f"Produced by `{command}`" in table and "two FLOPs per multiply-add" in table and "on CPU" in table
    assert table.count("\n| ") == 3 and "| paper | 275.4 K (1.01x) |" in table  # header, none, paper
    assert "| train step, compiled | img/s | compile |" in table and "Compiled train step:" in table
    assert command in printed and "| paper |" in printed
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "config.json").read_text())["attentions"] == "paper"


def test_a_model_that_does_not_compile_is_reported_not_fatal(tmp_path):
    # torch's own testing backend, which refuses a graph holding torch.relu: the SASE block's, not ResNet's F.relu
    assert main(["bench", *TINY, "--attentions", "paper", "--compile-backend", "relu_compile_error_TESTING_ONLY",
                 "--rounds", "1", "--no-memory", "--out", str(tmp_path), "--quiet"]) == 0
    plain, paper = read_csv(tmp_path / "bench.csv")
    assert plain["compile_error"] == "" and float(plain["compiled_ms"]) > 0
    assert "ReluCompileError" in paper["compile_error"] and paper["compiled_ms"] == ""
    assert float(paper["eager_ms"]) > 0 and paper["peak_mib_train"] == ""
    assert "| paper |" in (table := (tmp_path / "bench.md").read_text()) and "fails: BackendCompilerFailed" in table


def test_ratios_are_formed_per_round_then_summarised():
    # the same machine slow-down in round 2 hits both models: the ratio stays 2
    assert ratio_stats([2.0, 8.0, 2.2], [1.0, 4.0, 1.1]) == (2.0, 2.0, 2.0)
    median, q1, q3 = ratio_stats([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5)
    assert (median, q1, q3) == (3.0, 2.0, 4.0)


def test_the_plain_backbone_comes_first_once():
    assert [e.label for e in entries_with_baseline("se,none,paper", "unused")] == ["none", "se", "paper"]
    assert [e.label for e in entries_with_baseline("se", "unused")] == ["none", "se"]


@pytest.mark.parametrize("words,expected", [
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--attentions", "se,nope"], "unknown attention 'nope'"),
    (["--compile-backend", "nope"], "unknown torch.compile backend 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, words, expected):
    assert main(["bench", *words, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "b").exists()
