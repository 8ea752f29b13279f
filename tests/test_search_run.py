"""The search loop and `sase search` end to end on tiny data: files, resume, divergence, bad input."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import interrupt_after

from sase import EDGE_NAMES, Genotype
from sase.cli import main
from sase.search import Search, SearchConfig, SearchDiverged, run_search
from sase.utils.checkpoint import load_checkpoint

# a few steps of a small batch on 8x8 digits: seconds, not minutes
TINY = SearchConfig(epochs=2, batch_size=8, steps_per_epoch=3, image_size=8, eval_images=64, checkpoint_every=1)
FILES = ["config.json", "genotype.json", "history.csv", "checkpoint.pt", "alpha_heatmap.png", "alpha_evolution.png"]
CLI_TINY = ["--epochs", "2", "--batch-size", "8", "--steps-per-epoch", "3", "--image-size", "8", "--eval-images", "64",
            "--quiet"]


def final_state(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cli_search_writes_every_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", *CLI_TINY, "--order", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    genotype = Genotype.from_json(out / "genotype.json")
    assert genotype.to_json(indent=None) in printed and str(out) in printed
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ["train_loss", "train_acc", "val_loss", "val_acc", "param_free_share"]:
        assert 0 <= float(rows[-1][key]) < 100, key
    for edge in EDGE_NAMES:
        probs = [float(v) for k, v in rows[-1].items() if k.startswith(f"alpha/{edge}/")]
        assert len(probs) == 7 and abs(sum(probs) - 1) < 1e-4
        assert float(rows[-1][f"entropy/{edge}"]) > 0
    assert Genotype.from_json(rows[-1]["genotype"]) == genotype
    config = json.loads((out / "config.json").read_text())
    assert config["order"] == "1" and config["epochs"] == 2 and config["dataset"] == "digits"
    for png in ("alpha_heatmap.png", "alpha_evolution.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 200 and image.size[1] > 100


def test_genotype_file_is_the_argmax_of_the_saved_alpha(tmp_path):
    result = run_search(replace(TINY, epochs=1, out=str(tmp_path)), progress=False)
    alpha = load_checkpoint(tmp_path / "checkpoint.pt")["model"]["alpha"]
    from sase.search import derive_genotype
    assert result.genotype == derive_genotype(alpha[0]) == Genotype.from_json(tmp_path / "genotype.json")


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """Stopped mid-epoch (after its checkpoint at step 2 of epoch 1), then resumed: the same end, bit for bit."""
    whole = run_search(replace(TINY, out=str(tmp_path / "whole")), progress=False)

    config = replace(TINY, out=str(tmp_path / "cut"))
    interrupt_after(Search(config, progress=False), 5, "_weight_step")  # epoch 2, step 3: after the checkpoint of step 2
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2)

    resumed = run_search(config, resume=True, progress=False)
    assert resumed.genotype == whole.genotype
    assert_same_state(final_state(tmp_path / "cut"), final_state(tmp_path / "whole"))
    rows = lambda p: [{k: v for k, v in r.items()} for r in csv.DictReader((p / "history.csv").open())]
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")


def test_killed_with_sigkill_and_resumed_equals_uninterrupted(tmp_path):
    epochs, steps = 2, 6  # 10 steps and two evaluations after the kill point: the kill lands mid-run
    args = ["search", "--epochs", str(epochs), "--batch-size", "8", "--steps-per-epoch", str(steps), "--image-size",
            "8", "--eval-images", "64", "--checkpoint-every", "1", "--order", "1", "--seed", "3", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    cut = tmp_path / "cut"
    # the child sums floats over as many threads as this process: another split would round differently
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "sase", *args, "--out", str(cut)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            state = load_checkpoint(cut / "checkpoint.pt")
            if (state["epoch"], state["step"]) >= (0, 2):
                break
        except FileNotFoundError:  # not written yet (writes are atomic: never half a file)
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the search ended (or stalled) before it could be killed"
    state = load_checkpoint(cut / "checkpoint.pt")
    assert (0, 2) <= (state["epoch"], state["step"]) < (epochs, 0)  # killed mid-run
    assert not (cut / "verdict.json").exists()  # written only by a finished search
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert_same_state(final_state(cut), final_state(tmp_path / "whole"))
    # the verdict weighs the last epoch's α gradients, those taken before the kill included
    assert (cut / "verdict.json").read_text() == (tmp_path / "whole" / "verdict.json").read_text()
    assert Genotype.from_json(cut / "genotype.json") == Genotype.from_json(tmp_path / "whole" / "genotype.json")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    search = Search(replace(TINY, out=str(tmp_path)), progress=False)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 12 else output

    search.model.register_forward_hook(poison)
    with pytest.raises(SearchDiverged, match="became nan .* last good checkpoint is"):
        search.run()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert (state["epoch"], state["step"]) < (TINY.epochs, 0)


def test_eval_images_caps_the_evaluation_and_the_recalibration(tmp_path):
    """--eval-images takes that many images of each half (a seeded random subset), all of them when it is larger."""
    seen = []
    for cap in (20, None, 10_000):
        search = Search(replace(TINY, eval_images=cap, out=str(tmp_path / str(cap))), progress=False)
        evaluated = [i for x, _ in search._eval_loader() for i in range(len(x))]
        seen.clear()
        search.model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
        search.recalibrate_batchnorm()
        assert len(evaluated) == (20 if cap == 20 else len(search.val_idx))
        assert sum(seen) == (20 if cap == 20 else min(len(search.fit_idx), 1024))
    assert len(search.val_idx) > 20 and len(search.fit_idx) > 20


def test_warmup_keeps_alpha_frozen(tmp_path):
    search = Search(replace(TINY, epochs=2, warmup_epochs=1, out=str(tmp_path)), progress=False)
    before = search.model.alpha.detach().clone()
    search._train_epoch(0)  # the warm-up epoch: weights move, α does not
    assert torch.equal(search.model.alpha.detach(), before)
    search.step = 0  # what the end of an epoch does
    search._train_epoch(1)
    assert not torch.equal(search.model.alpha.detach(), before)


def test_per_stage_search_writes_a_genotype_per_stage(tmp_path):
    result = run_search(replace(TINY, epochs=1, per_stage=True, out=str(tmp_path)), progress=False)
    per_stage = json.loads((tmp_path / "genotypes_per_stage.json").read_text())
    assert list(per_stage) == ["16", "32", "64"] and len(result.genotypes) == 3
    assert [Genotype.from_dict(g) for g in per_stage.values()] == result.genotypes


def test_search_on_an_image_folder(tmp_path):
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(10):
                Image.new("RGB", (12, 10), (40 * c + i, 90, 200)).save(tmp_path / "data" / split / cls / f"{i}.png")
    config = replace(TINY, epochs=1, dataset="imagefolder", data=str(tmp_path / "data"), out=str(tmp_path / "run"))
    result = run_search(config, progress=False)
    assert (tmp_path / "run" / "genotype.json").exists() and 0 <= result.val_acc <= 1


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    code = main(["search", "--dataset", "cifar10", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nowhere" in err and "Traceback" not in err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    run_search(replace(TINY, epochs=1, steps_per_epoch=1, order="1", out=str(tmp_path)), progress=False)  # a short run
    assert main(["search", *CLI_TINY, "--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_needs_a_run(tmp_path, capsys):
    assert main(["search", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_paper_preset_is_the_spec_settings():
    paper = SearchConfig().with_preset("paper")
    assert (paper.dataset, paper.backbone, paper.order, paper.epochs, paper.batch_size) == \
        ("cifar10", "resnet20", "2", 100, 128)
    assert (paper.lr, paper.lr_min, paper.momentum, paper.weight_decay, paper.grad_clip) == \
        (0.025, 1e-4, 0.9, 5e-4, 5.0)
    assert (paper.arch_lr, paper.arch_beta1, paper.arch_beta2, paper.arch_weight_decay) == (3e-4, 0.5, 0.999, 1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_search_on_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["search", *CLI_TINY, "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sase search: error: device 'cuda' asked for, but torch sees no CUDA device; use --device cpu"]
    assert not (tmp_path / "r").exists()


def test_search_device_is_saved_and_may_change_on_resume(tmp_path):
    out = tmp_path / "r"
    assert main(["search", *CLI_TINY, "--order", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    # the device changes where the run computes, not what: a resume may take another one
    assert main(["search", "--out", str(out), "--resume", "--epochs", "3", "--device", "auto", "--quiet"]) == 0
    assert [r["epoch"] for r in csv.DictReader((out / "history.csv").open())] == ["1", "2", "3"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_search_runs_resumes_and_keeps_alpha_float32(tmp_path, amp):
    out = tmp_path / amp
    assert main(["search", *CLI_TINY, "--order", "1", "--amp", amp, "--device", "cpu", "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["model"]["alpha"].dtype == torch.float32 and torch.isfinite(state["model"]["alpha"]).all()
    assert (state["scaler"] is not None) == (amp == "fp16")  # fp16's loss scale is part of the run's state
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert all(0 <= float(r["val_acc"]) <= 1 and float(r["train_loss"]) > 0 for r in rows)
    assert json.loads((out / "config.json").read_text())["amp"] == amp
    assert main(["search", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0


def test_evaluation_recomputes_batchnorm_statistics_for_the_current_weights(tmp_path):
    """Running statistics that trail the weights (here: wrecked on purpose) must not reach the evaluation:
    before it, each BatchNorm's running mean becomes the mean of its batch means over the weights' half."""
    search = Search(replace(TINY, eval_images=None, out=str(tmp_path / "run")), progress=False)  # every image
    stem_bn = search.model.net.bn1
    for module in search.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(1e3)
            module.running_var.fill_(1e-6)
    inputs = []
    handle = stem_bn.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    loss, accuracy = search.evaluate()
    handle.remove()
    assert 0 <= loss < 10 and 0 <= accuracy <= 1  # wrecked statistics give a loss in the thousands or NaN
    images = min(len(search.fit_idx), 1024)
    loader_batches = -(-images // max(2 * TINY.batch_size, 256))
    batch_means = [x.mean((0, 2, 3)) for x in inputs[:loader_batches]]  # the recalibration's passes come first
    assert sum(len(x) for x in inputs[:loader_batches]) == images
    torch.testing.assert_close(stem_bn.running_mean, torch.stack(batch_means).mean(0))


class RefusedRecording:
    """Stands in for torch.cuda.graph where it fails on an op it cannot record (the recording itself needs a GPU)."""

    def __init__(self, graph):
        pass

    def __enter__(self):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    def __exit__(self, *exc):
        return False


def refuse_recordings(monkeypatch) -> None:
    from sase.search import graphs
    monkeypatch.setattr(graphs.torch.cuda, "graph", RefusedRecording)
    monkeypatch.setattr(graphs.torch.cuda, "CUDAGraph", lambda: None)


def test_a_step_that_cannot_be_recorded_as_a_cuda_graph_is_one_clear_error(monkeypatch):
    from sase.search import graphs
    refuse_recordings(monkeypatch)
    recorded = graphs.GraphedStep(warmup=0)
    batch = (torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(graphs.GraphRecordingError, match=r"^recording the search step as a CUDA graph failed "
                       r"\(operation not permitted when stream is capturing\); run again with --no-cuda-graphs"):
        recorded(lambda train, val: (train[0].sum(),), batch, batch, key=None)
    assert recorded.graph is None and recorded.recordings == 0


def test_a_search_whose_recording_fails_warns_once_and_goes_on_eagerly(tmp_path, monkeypatch, capsys):
    """The step is recorded again every epoch; one failed recording must not end a long search."""
    from sase.search import graphs
    quick = replace(TINY, epochs=1, order="1")
    eager = run_search(replace(quick, out=str(tmp_path / "eager")), progress=False)
    refuse_recordings(monkeypatch)
    search = Search(replace(quick, out=str(tmp_path / "graphed")), progress=False)
    search.graphed = graphs.GraphedStep(warmup=0)  # as on one GPU, where it records at the first step
    assert search.run().genotype == eager.genotype
    err = capsys.readouterr().err
    assert err.count("recording the search step as a CUDA graph failed (operation not permitted") == 1, err
    assert search.graphed is None
    assert_same_state(final_state(tmp_path / "graphed"), final_state(tmp_path / "eager"))
