"""Resume is the run folder named by --out, wherever it was first written; a flag given with --resume is
applied (where it cannot change the result), extends the run (more --epochs), or is refused in one line."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import interrupt_after, write_folder
from sase.cli import main
from sase.search import SearchConfig
from sase.train import TrainConfig, Trainer, run_train
from sase.train.recipe import WarmupCosine
from sase.utils.checkpoint import load_checkpoint

TRAIN = ["--batch-size", "16", "--steps-per-epoch", "3", "--image-size", "8", "--checkpoint-every", "1", "--quiet"]
TINY = TrainConfig(epochs=2, batch_size=16, steps_per_epoch=3, image_size=8, checkpoint_every=1)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with a hash of its bytes: equal snapshots, untouched folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"sase {command}: error:"), err
    return err


def history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- training


def test_a_moved_run_resumes_in_its_new_folder(tmp_path):
    """Cut mid-epoch, moved elsewhere, resumed there: the same end as an uninterrupted run, nothing at the old path."""
    run_train(replace(TINY, out=str(tmp_path / "whole")), progress=False)
    trainer = Trainer(replace(TINY, out=str(tmp_path / "first")), progress=False)
    interrupt_after(trainer, 4)
    shutil.move(tmp_path / "first", tmp_path / "moved")

    assert main(["train", "--out", str(tmp_path / "moved"), "--resume", "--quiet"]) == 0
    assert not (tmp_path / "first").exists()
    cut, whole = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("moved", "whole"))
    assert same_tensors(cut["model"], whole["model"]) and cut["config"]["out"] == str(tmp_path / "moved")
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["out"] == str(tmp_path / "moved")


def test_a_copied_run_resumes_into_the_copy_only(tmp_path):
    original, copy = tmp_path / "a", tmp_path / "b"
    assert main(["train", *TRAIN, "--epochs", "1", "--out", str(original)]) == 0
    shutil.copytree(original, copy)
    before = snapshot(original)
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert snapshot(original) == before
    assert [r["epoch"] for r in history(copy)] == ["1", "2"] and len(history(original)) == 1
    saved = json.loads((copy / "config.json").read_text())
    assert (saved["out"], saved["epochs"]) == (str(copy), 2)
    assert json.loads((copy / "summary.json").read_text())["epochs"] == 2


def test_more_epochs_restretch_the_cosine_from_where_the_run_stands(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--epochs", "2", "--warmup-epochs", "1", "--lr-min", "0.01", "--out", str(out)]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "4", "--quiet"]) == 0
    lrs = [float(r["lr"]) for r in history(out)]
    old, new = WarmupCosine(3, 6, 0.1), WarmupCosine(3, 12, 0.1)  # 3 steps per epoch, lr 0.1, lr_min 0.01
    assert lrs[:2] == [pytest.approx(0.1 * old(s)) for s in (2, 5)]  # as logged before the resume
    assert lrs[2:] == [pytest.approx(0.1 * new(s)) for s in (8, 11)]  # the new curve, down to lr_min at its end
    assert lrs[2] > lrs[1]  # re-stretched: the lr rises at the resume point, then decays over the new length
    assert load_checkpoint(out / "checkpoint.pt")["scheduler"]["lr_lambdas"][0]["total_steps"] == 12
    # the extended run is the run now: resuming it again needs no --epochs
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert len(history(out)) == 4


def write_train_run(folder: Path, **settings) -> TrainConfig:
    """A run folder's config.json alone: enough for what --resume checks before any work."""
    config = replace(TINY, out=str(folder), **settings)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config.to_json())
    return config


@pytest.mark.parametrize("flags, named", [
    (["--epochs", "1"], "--epochs 1"),
    (["--lr", "0.05"], "--lr 0.05"),
    (["--batch-size", "8"], "--batch-size 8"),
    (["--attention", "se"], "--attention se"),
    (["--nesterov"], "--nesterov"),
    (["--amp", "bf16"], "--amp bf16"),
    (["--preset", "cifar"], "--preset cifar"),
])
def test_a_recipe_flag_on_resume_is_refused_by_name(tmp_path, capsys, flags, named):
    write_train_run(tmp_path / "run")
    before = snapshot(tmp_path)
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", *flags]) == 2
    err = one_line_error(capsys, "train")
    assert err.startswith(f"sase train: error: {named}: {tmp_path / 'run'} was started with"), err
    assert snapshot(tmp_path) == before


def test_flags_that_do_not_change_the_result_apply_on_resume(tmp_path):
    write_train_run(tmp_path / "run")
    from sase.cli import build_parser
    from sase.cli.train import given_settings

    args = build_parser().parse_args(["train", "--out", str(tmp_path / "run"), "--resume", "--workers", "0",
                                      "--device", "cpu", "--checkpoint-every", "2", "--lr", "0.1", "--epochs", "5"])
    config = TrainConfig.resumed(args.out, given_settings(args))
    assert (config.device, config.checkpoint_every, config.epochs, config.lr) == ("cpu", 2, 5, 0.1)


def test_the_loop_refuses_a_checkpoint_of_another_recipe(tmp_path):
    run_train(replace(TINY, out=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        Trainer(replace(TINY, lr=0.05, out=str(tmp_path)), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(epochs\)"):  # fewer epochs than the checkpoint's
        Trainer(replace(TINY, epochs=1, out=str(tmp_path)), resume=True, progress=False)


# ---------------------------------------------------------------- search


@pytest.fixture
def no_plots(monkeypatch):
    """The α plots take seconds each and are not what these tests are about."""
    for name in ("plot_alpha_heatmap", "plot_alpha_evolution"):
        monkeypatch.setattr(f"sase.search.loop.{name}", lambda *args, **kwargs: None)


def test_a_copied_search_resumes_into_the_copy_with_more_epochs(tmp_path, no_plots, monkeypatch):
    # uncapped, the budgeted α lr of this 2-step search depends on its epochs (capped, both would be the cap)
    monkeypatch.setattr("sase.search.config.MAX_ARCH_LR", float("inf"))
    write_folder(tmp_path / "data", classes=("a", "b"), per_class=8)  # an α half of 8 images: a quick evaluation
    original, copy = tmp_path / "a", tmp_path / "b"
    args = ["--dataset", "imagefolder", "--data", str(tmp_path / "data"), "--batch-size", "4", "--image-size", "8",
            "--order", "1", "--quiet"]
    assert main(["search", *args, "--epochs", "1", "--out", str(original)]) == 0
    shutil.copytree(original, copy)
    before = snapshot(original)
    assert main(["search", "--out", str(copy), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert snapshot(original) == before
    rows = history(copy)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    lr, lr_min = SearchConfig.lr, SearchConfig.lr_min
    assert float(rows[1]["lr"]) == pytest.approx(lr_min + (lr - lr_min) / 2, abs=1e-8)  # epoch 2 of 2: mid-cosine
    started = SearchConfig(epochs=1).resolved_arch_lr(2)
    assert started != SearchConfig(epochs=2).resolved_arch_lr(2)  # the budget of 2 epochs would be another lr
    assert [float(r["arch_lr"]) for r in rows] == [pytest.approx(started)] * 2  # α keeps the lr it started with
    state = load_checkpoint(copy / "checkpoint.pt")
    assert state["scheduler"]["T_max"] == 2 and state["config"]["out"] == str(copy)
    assert json.loads((copy / "config.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("flags, named", [
    (["--epochs", "1"], "--epochs 1"),
    (["--lr", "0.1"], "--lr 0.1"),
    (["--order", "2"], "--order 2"),
    (["--per-stage"], "--per-stage"),
    (["--preset", "paper"], "--preset paper"),
])
def test_a_search_flag_on_resume_is_refused_by_name(tmp_path, capsys, flags, named):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(SearchConfig(epochs=2, order="1", out=str(folder)).to_json())
    before = snapshot(tmp_path)
    assert main(["search", "--out", str(folder), "--resume", *flags]) == 2
    assert one_line_error(capsys, "search").startswith(f"sase search: error: {named}: {folder} was started with")
    assert snapshot(tmp_path) == before


def test_resume_settings_live_in_one_list_per_config():
    """What a resume may change is each config's KNOBS and EXTENDABLE, and nothing else decides it."""
    for config in (TrainConfig, SearchConfig):
        assert config.EXTENDABLE == ("epochs",) and "out" in config.KNOBS
        assert not set(config.KNOBS) & set(config().recipe())
    import sase.cli.train as cli_train
    assert not hasattr(cli_train, "RESUME_KNOBS")
