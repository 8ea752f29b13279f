"""`sase train` and `sase eval` end to end on tiny data: files, metrics, resume, export, precision, bad input."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from helpers import interrupt_after, write_cifar, write_folder, write_image
from sase import Genotype
from sase.cli import main
from sase.train import TrainConfig, Trainer, TrainingDiverged, count_flops, load_model, run_train
from sase.train.config import PRESETS
from sase.train.metrics import correct_top, evaluate, nonfinite_message
from sase.train.recipe import WarmupCosine
from sase.utils.checkpoint import load_checkpoint

# a few steps of a small batch on 8x8 digits: seconds, not minutes
TINY = TrainConfig(epochs=2, batch_size=16, steps_per_epoch=3, image_size=8, checkpoint_every=1)
CLI_TINY = ["--epochs", "2", "--batch-size", "16", "--steps-per-epoch", "3", "--image-size", "8", "--quiet"]
FILES = ["config.json", "history.csv", "checkpoint.pt", "model.safetensors", "summary.json"]
TIMING = ("seconds", "images_per_s")  # the CSV columns that differ between identical runs


def rows(out: Path, timing: bool = True) -> list[dict[str, str]]:
    with (out / "history.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if timing or k not in TIMING} for r in csv.DictReader(f)]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            assert_same_tensors(a[k], b[k])
        else:
            assert a[k] == b[k], k


def assert_same_run(cut: Path, whole: Path) -> None:
    """Model, optimiser, schedule and scaler identical, bit for bit; the same log apart from timings."""
    a, b = load_checkpoint(cut / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "model_spec"):
        assert_same_tensors({key: a[key]}, {key: b[key]})
    assert rows(cut, timing=False) == rows(whole, timing=False)
    exported = [safetensors(p / "model.safetensors") for p in (cut, whole)]
    assert_same_tensors(exported[0][0], exported[1][0])
    assert exported[0][1] == exported[1][1]  # metadata (its order in the file is not fixed: compare as a dict)


def safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- end to end


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *CLI_TINY, "--attention", "se", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val top-1" in printed and str(out) in printed
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    log = rows(out)
    assert [r["epoch"] for r in log] == ["1", "2"]
    assert list(log[0]) == ["epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                            "seconds", "images_per_s"]
    for r in log:
        assert 0 <= float(r["train_top1"]) <= 1 and 0 <= float(r["val_top1"]) <= float(r["val_top5"]) <= 1
        assert math.isfinite(float(r["val_loss"])) and float(r["images_per_s"]) > 0 and 0 < float(r["lr"]) <= 0.1
    config = json.loads((out / "config.json").read_text())
    assert config["attention"] == "se" and config["epochs"] == 2 and config["image_size"] == 8

    for model_file in (out, out / "checkpoint.pt"):  # the run folder reads model.safetensors
        assert main(["eval", str(model_file), "--out", str(tmp_path / f"{model_file.name}.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in (out.name, "checkpoint.pt"))
    assert a["model_file"].endswith("model.safetensors") and b["model_file"].endswith("checkpoint.pt")
    for key in ("top1", "top5", "loss", "parameters", "flops"):
        assert a[key] == b[key], key
    summary = json.loads((out / "summary.json").read_text())
    assert a["top1"] == pytest.approx(summary["top1"], abs=1e-6)  # the run's own last evaluation
    assert a["images"] == 359 and a["dataset"] == "digits" and a["image_size"] == 8 and a["macs"] * 2 == a["flops"]
    assert a["parameters"] == summary["parameters"] > 0

    assert main(["eval", str(out / "model.safetensors")]) == 0  # default: JSON beside the model file
    assert json.loads((out / "eval_digits.json").read_text())["top1"] == a["top1"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_train_on_cifar_pickles(tmp_path, name):
    write_cifar(tmp_path / "data", name, n=20 if name == "cifar10" else 40)
    result = run_train(replace(TINY, dataset=name, data=str(tmp_path / "data"), out=str(tmp_path / "run"),
                               attention="eca"), progress=False)
    assert result.k == 5 and 0 <= result.top1 <= result.topk <= 1 and math.isfinite(result.loss)
    model, spec = load_model(tmp_path / "run" / "model.safetensors")
    assert spec.num_classes == (10 if name == "cifar10" else 100) and spec.dataset == name
    assert model.fc.out_features == spec.num_classes


def test_train_on_an_image_folder_reports_top_k_of_the_classes(tmp_path, capsys):
    write_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=8)
    out = tmp_path / "run"
    assert main(["train", *CLI_TINY, "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
                 "--model", "resnet18", "--attention", "cbam", "--out", str(out)]) == 0
    assert "top-3" in capsys.readouterr().out
    assert "val_top3" in rows(out)[0] and float(rows(out)[-1]["val_top3"]) == 1.0  # 3 classes: top-3 is all
    assert main(["eval", str(out)]) == 0  # the data root comes from the run's config.json
    report = json.loads((out / "eval_imagefolder.json").read_text())
    assert report["split"] == "val" and report["images"] == 24 and report["top3"] == 1.0


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("amp", [None, "fp16"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, amp):
    """Stopped mid-epoch after a checkpoint, then resumed: the same end, bit for bit (scaler included)."""
    run_train(replace(TINY, amp=amp, out=str(tmp_path / "whole")), progress=False)

    config = replace(TINY, amp=amp, out=str(tmp_path / "cut"))
    trainer = Trainer(config, progress=False)
    interrupt_after(trainer, 4)  # epoch 2, step 2: after the checkpoint of step 1
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == (1, 1) and not (tmp_path / "cut" / "summary.json").exists()
    assert (saved["scaler"] is None) == (amp is None)

    run_train(config, resume=True, progress=False)
    assert_same_run(tmp_path / "cut", tmp_path / "whole")


def wait_for_checkpoint(path: Path, proc: subprocess.Popen, at_least: tuple[int, int]) -> None:
    """Until the run in `proc` has saved (epoch, step) >= `at_least`; fails if it ends or stalls first."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            saved = load_checkpoint(path)
        except FileNotFoundError:  # not written yet (writes are atomic: never half a file)
            saved = None
        if saved is not None and (saved["epoch"], saved["step"]) >= at_least:
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint at {at_least} or later before the run {'ended' if proc.poll() else 'stalled'}")


def test_killed_with_sigkill_and_resumed_equals_uninterrupted(tmp_path):
    epochs, steps = 2, 10  # 18 steps after the kill point: the kill lands mid-run, not after the end
    args = ["train", "--epochs", str(epochs), "--batch-size", "16", "--steps-per-epoch", str(steps), "--image-size",
            "8", "--checkpoint-every", "1", "--seed", "3", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    cut = tmp_path / "cut"
    # the child sums floats over as many threads as this process: another split would round differently
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "sase", *args, "--out", str(cut)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(cut / "checkpoint.pt", proc, at_least=(0, 2))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    saved = load_checkpoint(cut / "checkpoint.pt")
    assert (0, 2) <= (saved["epoch"], saved["step"]) < (epochs, 0)  # killed mid-run
    assert not (cut / "summary.json").exists() and not (cut / "model.safetensors").exists()
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert_same_run(cut, tmp_path / "whole")


def test_resume_refuses_other_settings(tmp_path, capsys):
    run_train(replace(TINY, epochs=1, out=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        Trainer(replace(TINY, epochs=1, lr=0.05, out=str(tmp_path)), resume=True, progress=False)
    assert main(["train", *CLI_TINY, "--out", str(tmp_path)]) == 2
    assert "--resume" in one_line_error(capsys)


# ---------------------------------------------------------------- export


def test_safetensors_rebuild_the_model_alone(tmp_path):
    """A genotype-file run: the file is gone after training, yet both exports rebuild identical models."""
    genotype = Genotype(("gap", "conv1d_3", "affine", "gap", "gap_gmp", "sep_3"))
    path = tmp_path / "found.json"
    genotype.to_json(path)
    trainer = Trainer(replace(TINY, epochs=1, attention=str(path), out=str(tmp_path / "run")), progress=False)
    trainer.run()
    path.unlink()
    with safe_open(str(tmp_path / "run" / "model.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["sase.model_spec"])
    assert Genotype.from_json(meta["genotype"]) == genotype
    assert (meta["model"], meta["num_classes"], meta["in_chans"], meta["image_size"]) == ("resnet20", 10, 3, 8)
    x = torch.randn(4, 3, 8, 8)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(x)
        for name in ("model.safetensors", "checkpoint.pt"):
            model, spec = load_model(tmp_path / "run" / name)
            assert spec.genotype == genotype.to_json(indent=None)
            assert torch.equal(model(x), expected), name


# ---------------------------------------------------------------- precision, schedule, metrics


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_give_finite_metrics(tmp_path, capsys, amp):
    assert main(["train", *CLI_TINY, "--amp", amp, "--out", str(tmp_path)]) == 0
    assert amp in capsys.readouterr().out
    for r in rows(tmp_path):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert math.isfinite(float(r[key])), key
    scaler = load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]
    assert (scaler is not None) == (amp == "fp16")


def test_a_compiled_training_step_follows_the_eager_one(tmp_path):
    """aot_eager traces forward and backward as inductor does (AOTAutograd), without generating code: the
    compiled step must train the same weights, and the checkpoint must hold the plain model's names.

    Two steps: the traced backward is autograd's, the eager one the statistics' own (sase.ops.autograd),
    equal up to float rounding. Digits' flat backgrounds tie the max over positions, so after a few
    steps differences of 1e-7 choose other maxima and the two runs part, as any two roundings would.
    """
    args = ["train", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--image-size", "8",
            "--quiet", "--attention", "paper", "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "eager")]) == 0
    assert main([*args, "--out", str(tmp_path / "compiled"), "--compile", "aot_eager"]) == 0
    eager, compiled = (load_checkpoint(tmp_path / n / "checkpoint.pt") for n in ("eager", "compiled"))
    assert compiled["model"].keys() == eager["model"].keys()  # no "_orig_mod." prefix
    assert compiled["config"]["compile"] == "aot_eager"
    for name, w in eager["model"].items():
        if w.is_floating_point():
            torch.testing.assert_close(compiled["model"][name], w, rtol=1e-4, atol=1e-5, msg=name)


def test_warmup_then_cosine():
    f = WarmupCosine(warmup_steps=4, total_steps=12, floor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    after = [f(s) for s in range(4, 13)]
    assert after[0] == 1.0 and all(a > b for a, b in zip(after, after[1:])) and after[-1] == pytest.approx(0.1)
    assert WarmupCosine(0, 10, 0.0)(0) == 1.0


def test_logged_lr_follows_the_schedule(tmp_path):
    run_train(replace(TINY, epochs=3, warmup_epochs=1, lr=0.2, lr_min=0.02, out=str(tmp_path)), progress=False)
    f = WarmupCosine(warmup_steps=3, total_steps=9, floor=0.1)
    assert [float(r["lr"]) for r in rows(tmp_path)] == [pytest.approx(0.2 * f(s)) for s in (2, 5, 8)]


def test_correct_top_and_flops_by_hand():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    assert correct_top(logits, torch.tensor([2, 0, 0]), (1, 2, 3)).tolist() == [1, 2, 3]
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    assert count_flops(conv, 5) == 2 * (3 * 9 * 4 * 25 + 100 * 2)  # 2 FLOPs per multiply-add


def test_evaluation_counts_overflowed_images_as_misses():
    """Images whose logits are not finite are counted, and never counted as hits, whatever their ranking."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1e30, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        net[1].bias.zero_()
    x = torch.tensor([[1e10, 0.0, 0.0], [1e10, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).view(4, 3, 1, 1)
    y = torch.tensor([0, 0, 1, 0])  # the first two would be hits by their (infinite) top logit
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    result = evaluate(net, loader, torch.device("cpu"))
    assert (result.images, result.nonfinite) == (4, 2)
    assert result.top1 == pytest.approx(0.5)  # images 3 (class 1 by 1.0 to 0) and 4 (a tie, ranked 0 first)
    assert not math.isfinite(result.loss)
    assert "not finite on 2 of 4 evaluation images" in nonfinite_message(result)


def test_label_smoothing_changes_the_loss(tmp_path):
    plain = run_train(replace(TINY, epochs=1, out=str(tmp_path / "a")), progress=False)
    smooth = run_train(replace(TINY, epochs=1, label_smoothing=0.3, out=str(tmp_path / "b")), progress=False)
    assert rows(plain.out)[0]["train_loss"] != rows(smooth.out)[0]["train_loss"]


def test_imagenet_preset_is_spec_section_5():
    c = TrainConfig().with_preset("imagenet")
    assert (c.dataset, c.model, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == \
        ("imagefolder", "resnet50", 100, 128, 0.1, 0.9, 1e-4)
    assert (c.label_smoothing, c.grad_clip, c.nesterov) == (0.1, 5.0, False)
    assert set(PRESETS) == {"imagenet", "cifar"}


def test_preset_then_explicit_flags_win():
    from sase.cli import build_parser
    from sase.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--preset", "imagenet", "--model", "resnet101", "--epochs", "3",
                                      "--amp", "bf16", "--data", "/imagenet"])
    c = config_from_args(args)
    assert (c.model, c.epochs, c.amp, c.data) == ("resnet101", 3, "bf16", "/imagenet")
    assert (c.lr, c.weight_decay, c.label_smoothing, c.batch_size) == (0.1, 1e-4, 0.1, 128)


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    run_train(replace(TINY, epochs=1, out=str(tmp_path)), progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_without_tensorboard_the_csv_is_the_whole_log(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import raise ImportError
    run_train(replace(TINY, epochs=1, out=str(tmp_path)), progress=False)
    assert not (tmp_path / "tensorboard").exists() and len(rows(tmp_path)) == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(replace(TINY, out=str(tmp_path)), progress=False)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 4 else output

    trainer.model.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="became nan .* last good checkpoint is"):
        trainer.run()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ---------------------------------------------------------------- bad input: one line, exit code 2


def _flat_folder(root: Path) -> None:
    write_image(root / "train" / "0.png")
    write_image(root / "val" / "0.png")


@pytest.mark.parametrize("extra, setup, words", [
    (["--dataset", "cifar10", "--data", "{tmp}/nowhere"], None, ["CIFAR-10 not found", "nowhere"]),
    (["--dataset", "imagefolder", "--data", "{tmp}/flat"], _flat_folder, ["no class subfolders", "flat folder"]),
    (["--dataset", "imagefolder"], None, ["needs a root folder"]),
    (["--attention", "sqeeze"], None, ["unknown attention 'sqeeze'"]),
    (["--attention", "{tmp}/missing.json"], None, ["missing.json"]),
    (["--model", "resnet7"], None, ["unknown model 'resnet7'"]),
    (["--warmup-epochs", "5"], None, ["warmup_epochs"]),
    (["--resume"], None, ["nothing to resume"]),
    (["--compile", "nope"], None, ["unknown torch.compile backend 'nope'"]),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, setup, words):
    if setup:
        setup(tmp_path / "flat")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["train", *CLI_TINY, "--out", str(tmp_path / "run"), *extra]) == 2
    err = one_line_error(capsys)
    assert err.startswith("sase train: error:") and all(w in err for w in words), err


def test_eval_bad_input(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none.safetensors")]) == 2
    assert "no model file" in one_line_error(capsys)
    (tmp_path / "junk.safetensors").write_text("not safetensors")
    assert main(["eval", str(tmp_path / "junk.safetensors")]) == 2
    assert "not a readable safetensors file" in one_line_error(capsys)
    run_train(replace(TINY, epochs=1, out=str(tmp_path / "run")), progress=False)
    write_folder(tmp_path / "two", classes=("a", "b"))
    assert main(["eval", str(tmp_path / "run"), "--dataset", "imagefolder", "--data", str(tmp_path / "two")]) == 2
    assert "classifies 10 classes but imagefolder has 2" in one_line_error(capsys)
