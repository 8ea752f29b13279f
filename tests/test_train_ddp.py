"""`sase train` and `sase compare` on several processes (torchrun, gloo on the CPU, 2 processes), and
`sase compare --shard K/N`.

Two processes make one run: the same weights on both, the steps of one process on the same images,
every validation image counted once, rank 0 alone writing; a run resumes across process counts.

The runs whose processes' states are compared fork two processes from the test's own, each given the
environment torchrun would give it (forked, they skip the seconds of importing torch and sase again);
the command-line runs go through torchrun itself.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from helpers import interrupt_after
from sase.cli import main
from sase.data import build_dataset
from sase.train import ModelSpec, TrainConfig, Trainer, evaluate, load_model
from sase.train.metrics import shard
from sase.utils.checkpoint import load_checkpoint
from sase.utils.distributed import setup, world

TINY = TrainConfig(epochs=2, batch_size=16, steps_per_epoch=3, image_size=8, checkpoint_every=1, attention="se")
CLI_TINY = ["--batch-size", "16", "--steps-per-epoch", "3", "--image-size", "8", "--quiet"]
DIGITS_TEST = 359  # images in the digits test split
FILES = ["config.json", "history.csv", "checkpoint.pt", "model.safetensors", "summary.json"]
BUILD = ModelSpec.build


def torchrun(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 ARGS` on the CPU, one thread per process; its exit code and output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SASE_DIST_TIMEOUT": "120"}
    # --standalone: a rendezvous on a free local port that torchrun picks itself
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=timeout)


def succeeded(proc: subprocess.CompletedProcess) -> bool:
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n")  # shown by pytest when the test fails
    return proc.returncode == 0


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def without_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm an identity: a sample's loss then depends on that sample alone, so the mean
    of two half-batches' gradients is the whole batch's gradient, as DDP assumes."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.Identity())
        else:
            without_batchnorm(child)
    return model


def build_without_batchnorm(spec: ModelSpec) -> nn.Module:
    return without_batchnorm(BUILD(spec))


def record_inputs(trainer: Trainer) -> list[list[float]]:
    """Per training step, each image's pixel sum as this process saw it (filled as the trainer runs)."""
    seen: list[list[float]] = []
    original = trainer._train_step

    def step(x: torch.Tensor, y: torch.Tensor):
        seen.append(x.flatten(1).sum(1).tolist())
        return original(x, y)

    trainer._train_step = step
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, port: int, target: Callable[..., dict[str, Any]], args: tuple, folder: Path) -> None:
    """In a forked process: become process `rank` of two, as torchrun would set it up; save what `target` returns."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.save(target(*args), folder / f"rank{rank}.pt")


def in_two_processes(tmp_path: Path, target: Callable[..., dict[str, Any]], *args: Any) -> list[dict[str, Any]]:
    """What `target(*args)` returns in each of two processes forked from this one."""
    folder = tmp_path / "ranks"
    folder.mkdir()
    port, fork = free_port(), multiprocessing.get_context("fork")
    procs = [fork.Process(target=as_rank, args=(rank, port, target, args, folder)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]  # a failed process printed its traceback
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def train(config: TrainConfig, plain: bool, resume: bool = False) -> dict[str, Any]:
    """Train (a process of a run), evaluate once more; what this process holds."""
    if plain:
        ModelSpec.build = build_without_batchnorm  # in this forked process only
    trainer = Trainer(config, resume=resume, progress=False)
    inputs = record_inputs(trainer)
    result = trainer.run()
    val = evaluate(trainer.net, trainer.val_loader, trainer.device, across_processes=True)
    return {"state": trainer.net.state_dict(), "inputs": inputs, "images": val.images, "top1": val.top1,
            "loss": val.loss, "ddp": isinstance(trainer.model, DistributedDataParallel), "result": result.top1}


def evaluate_shard(model: nn.Module, images: TensorDataset) -> dict[str, Any]:
    """This process's shard of `images` evaluated, the sums over both processes."""
    device = setup(torch.device("cpu"))
    w = world()
    return asdict(evaluate(model, DataLoader(shard(images, w.rank, w.size)), device, across_processes=True))


# ---------------------------------------------------------------- one run on two processes


def test_two_processes_hold_the_same_model_and_count_every_image_once(tmp_path):
    out = tmp_path / "run"
    held = in_two_processes(tmp_path, train, replace(TINY, out=str(out)), False)
    assert all(h["ddp"] for h in held)
    a, b = (h["state"] for h in held)
    assert a.keys() == b.keys()
    for key in a:  # weights and BatchNorm statistics alike, bit for bit
        assert torch.equal(a[key], b[key]), key
    assert all(len(step) == TINY.batch_size // 2 for h in held for step in h["inputs"])  # each a half-batch
    for h in held:  # each process evaluated its shard; the sums are over both: every image once
        assert h["images"] == DIGITS_TEST and (h["top1"], h["loss"]) == (held[0]["top1"], held[0]["loss"])

    for name in FILES:  # written once, by rank 0
        assert (out / name).stat().st_size > 0, name
    assert [r["epoch"] for r in rows(out)] == ["1", "2"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top1"] == pytest.approx(held[0]["top1"], abs=1e-6)  # the run's own last evaluation
    assert held[0]["result"] == held[1]["result"] == summary["top1"]  # every process returns rank 0's result
    saved = load_checkpoint(out / "checkpoint.pt")["model"]  # the model itself, not its DDP wrapper
    assert saved.keys() == a.keys() and all(torch.equal(saved[k], a[k]) for k in a)
    model, _ = load_model(out)  # and the export rebuilds on one process,
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)
    val_set, _ = build_dataset("digits", train=False, image_size=TINY.image_size)
    alone = evaluate(model, DataLoader(val_set, batch_size=64), torch.device("cpu"))
    last = rows(out)[-1]  # where it scores what the run logged: both processes evaluated with rank 0's statistics
    assert (float(last["val_loss"]), float(last["val_top1"])) == (round(alone.loss, 6), round(alone.top1, 6))


def test_two_processes_take_the_steps_of_one(tmp_path, monkeypatch):
    """With no BatchNorm (whose statistics are per process) two processes compute what one does, up to
    float rounding: the same images in each step, the mean gradient of the global batch, the same log."""
    config = replace(TINY, epochs=1)
    held = in_two_processes(tmp_path, train, replace(config, out=str(tmp_path / "two")), True)

    monkeypatch.setattr(ModelSpec, "build", build_without_batchnorm)
    trainer = Trainer(replace(config, out=str(tmp_path / "one")), progress=False)
    inputs = record_inputs(trainer)
    trainer.run()
    assert len(inputs) == config.steps_per_epoch
    for step, images in enumerate(inputs):  # each process had every other image of the global batch
        assert held[0]["inputs"][step] == images[0::2] and held[1]["inputs"][step] == images[1::2]
    one = trainer.net.state_dict()
    for key, value in one.items():
        torch.testing.assert_close(held[0]["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    logged = [rows(tmp_path / name)[0] for name in ("one", "two")]
    for column in ("train_loss", "train_top1", "val_loss", "val_top1"):  # the logged loss is the global batch's
        assert float(logged[1][column]) == pytest.approx(float(logged[0][column]), abs=2e-5), column


def test_a_run_stopped_on_one_process_resumes_on_two(tmp_path, monkeypatch):
    """Mid-epoch, from a one-process checkpoint: the two processes end where the uninterrupted run does (up to
    float rounding, BatchNorm left out as above), logging the same sums."""
    monkeypatch.setattr(ModelSpec, "build", build_without_batchnorm)
    config = replace(TINY, out=str(tmp_path / "cut"))
    interrupt_after(Trainer(config, progress=False), 4)  # epoch 2, after the checkpoint of its first step
    held = in_two_processes(tmp_path, train, config, True, True)
    whole = Trainer(replace(config, out=str(tmp_path / "whole")), progress=False)
    whole.run()
    for key, value in whole.net.state_dict().items():
        assert torch.equal(held[0]["state"][key], held[1]["state"][key]), key
        torch.testing.assert_close(held[0]["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for cut, uninterrupted in zip(rows(tmp_path / "cut"), rows(tmp_path / "whole"), strict=True):
        for column in ("train_loss", "train_top1", "val_loss", "val_top1"):  # epoch 2 sums one process's
            assert float(cut[column]) == pytest.approx(float(uninterrupted[column]), abs=2e-5), column  # and two's


def test_an_empty_shard_still_takes_part_in_the_sums(tmp_path):
    """Fewer validation images than processes: the process with none still adds its (zero) sums."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images = TensorDataset(torch.randn(1, 3, 2, 2), torch.tensor([1]))  # one image: rank 1's shard is empty
    alone = evaluate(model, DataLoader(images), torch.device("cpu"))
    for held in in_two_processes(tmp_path, evaluate_shard, model, images):
        assert held["images"] == 1 and (held["loss"], held["top1"], held["topk"]) == (alone.loss, alone.top1,
                                                                                       alone.topk)


def test_resume_across_process_counts(tmp_path, capsys):
    """Started on one process, resumed under torchrun with more epochs, resumed again on one."""
    out = tmp_path / "run"
    assert main(["train", *CLI_TINY, "--epochs", "1", "--attention", "se", "--out", str(out)]) == 0
    proc = torchrun("-m", "sase", "train", "--out", str(out), "--resume", "--epochs", "2", "--quiet")
    assert succeeded(proc)
    assert proc.stdout.count("training:") == 1 and proc.stdout.count("done:") == 1  # rank 0 alone prints
    assert "over 2 processes" in proc.stdout
    assert [r["epoch"] for r in rows(out)] == ["1", "2"]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    assert json.loads((out / "config.json").read_text())["epochs"] == 2

    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    assert [r["epoch"] for r in rows(out)] == ["1", "2", "3"]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("command, flags, words, before_start", [
    ("train", ["--batch-size", "15"], "--batch-size 15 does not split evenly over 2 processes", True),
    ("compare", ["--batch-size", "15"], "--batch-size 15 does not split evenly over 2 processes", True),
    ("train", ["--sync-bn", "--device", "cpu"], "--sync-bn needs CUDA", False),
])
def test_a_world_the_run_cannot_use_is_one_line(tmp_path, capsys, monkeypatch, command, flags, words, before_start):
    """Checked before the processes meet: these fail at once, with no other process started; a batch that
    cannot split before the command prints that it starts."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    args = [command, *CLI_TINY, "--epochs", "1", "--out", str(out), *flags]
    assert main([*args, *(["--attentions", "none"] if command == "compare" else [])]) == 2
    printed = capsys.readouterr()
    err = printed.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"sase {command}: error:") and words in err, err
    assert not out.exists() and (printed.out == "" or not before_start)


def test_the_trainer_itself_refuses_a_batch_that_cannot_split(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--batch-size 15 does not split evenly over 2 processes"):
        Trainer(replace(TINY, batch_size=15, out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- compare: on two processes, in shards


def mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sorted(out.glob("cells/*/checkpoint.pt"))}


def test_compare_in_shards_then_one_call_tables_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sase.train.compare.INFER_SECONDS", 0.0)  # a few timed passes per row, not a second
    out = tmp_path / "cmp"
    # --jobs 1: this process trains its shard's cells itself (worker processes are tested with compare)
    args = ["compare", *CLI_TINY, "--epochs", "1", "--attentions", "none,se,eca", "--seeds", "0", "--jobs", "1",
            "--out", str(out)]
    assert main([*args, "--shard", "1/2"]) == 0  # cells 0 and 2 of the table
    printed = capsys.readouterr().out
    assert "shard 1/2: finished none-seed0, eca-seed0 (2 of 3 cells)" in printed and "without --shard" in printed
    assert sorted(mtimes(out)) == ["eca-seed0", "none-seed0"] and not (out / "comparison.md").exists()

    proc = torchrun("-m", "sase", *args, "--shard", "2/2")  # cell 1, trained by two processes
    assert succeeded(proc)
    assert proc.stdout.count("shard 2/2: finished se-seed0 (1 of 3 cells)") == 1  # rank 0 alone prints
    assert (out / "cells" / "se-seed0" / "summary.json").exists() and not (out / "comparison.md").exists()

    before = mtimes(out)
    assert sorted(before) == ["eca-seed0", "none-seed0", "se-seed0"]
    assert main(args) == 0  # every cell finished: read, none trained again, and tabled
    printed = capsys.readouterr().out
    assert "training in" not in printed and mtimes(out) == before
    labels = [r["label"] for r in json.loads((out / "comparison.json").read_text())]
    assert labels == ["none", "se", "eca"] and "| se |" in (out / "comparison.md").read_text()


@pytest.mark.parametrize("shard", ["0/2", "3/2", "x", "2", "1/0", "-1/2", "1/2/3"])
def test_a_bad_shard_is_one_line(tmp_path, capsys, shard):
    out = tmp_path / "cmp"
    assert main(["compare", *CLI_TINY, "--attentions", "none", "--seeds", "0", "--out", str(out),
                 f"--shard={shard}"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("sase compare: error: --shard takes K/N") and repr(shard) in err, err
    assert not out.exists()
