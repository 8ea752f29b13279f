"""Bad input to any command: one line on stderr naming the value, flag or file and what was expected, exit
code 2, no traceback (unless --debug or SASE_DEBUG=1), and no run folder written or changed."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import resource
import signal
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
import torch

from helpers import write_folder
from sase import create_model
from sase.cli import main
from sase.data import build_dataset
from sase.train import ModelSpec, TrainConfig, run_train
from sase.train.export import save_safetensors
from sase.utils.checkpoint import load_checkpoint, save_atomic

TRAIN = ["--epochs", "1", "--batch-size", "16", "--steps-per-epoch", "2", "--image-size", "8", "--quiet"]
SEARCH = ["--epochs", "1", "--batch-size", "8", "--steps-per-epoch", "2", "--image-size", "8", "--eval-images", "64",
          "--quiet"]


class Payload:
    """A pickle that runs os.mkdir when loaded without weights_only: the code a checkpoint must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny training run: the real checkpoint the bad copies are made from, and the folder that
    must stay untouched by every failed command."""
    out = tmp_path_factory.mktemp("errors") / "run"
    run_train(TrainConfig(epochs=1, batch_size=16, steps_per_epoch=2, image_size=8, out=str(out)), progress=False)
    return out


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def copied_run(run: Path, to: Path, checkpoint: bytes | None = None, config: str | None = None) -> Path:
    """A copy of `run` (what `cp -r` makes), its checkpoint or config.json replaced when given."""
    to.mkdir()
    for name in ("config.json", "checkpoint.pt", "history.csv"):
        (to / name).write_bytes((run / name).read_bytes())
    if checkpoint is not None:
        (to / "checkpoint.pt").write_bytes(checkpoint)
    if config is not None:
        (to / "config.json").write_text(config)
    return to


def truncated(run: Path) -> bytes:
    whole = (run / "checkpoint.pt").read_bytes()
    return whole[:len(whole) // 2]


def payload(tmp: Path) -> bytes:
    torch.save({"model": Payload(tmp / "ran")}, tmp / "payload.pt")
    return (tmp / "payload.pt").read_bytes()


def unwritable(tmp: Path) -> Path:
    """A folder that cannot be created: under a read-only folder, or for root (who may write anywhere on a
    writable file system) under /sys, which refuses new folders to everyone."""
    if os.geteuid() == 0:
        return Path("/sys/sase-errors-test")
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "run"


# Each case: the argv ({tmp} a fresh folder, {run} the finished run), what sets up the files it names, and the
# words its one line must hold: the bad value, flag or file, and what was expected.
Setup = Callable[[Path, Path], None]
CASES: dict[str, tuple[list[str], Setup | None, list[str]]] = {
    "eval a text file": (["eval", "{tmp}/hostname"], lambda tmp, run: (tmp / "hostname").write_text("myhost\n"),
                         ["{tmp}/hostname", "not a torch checkpoint"]),
    "eval a truncated checkpoint": (["eval", "{tmp}/cut.pt"],
                                    lambda tmp, run: (tmp / "cut.pt").write_bytes(truncated(run)),
                                    ["{tmp}/cut.pt", "truncated or corrupt"]),
    "resume a truncated checkpoint": (["train", "--out", "{tmp}/copy", "--resume"],
                                      lambda tmp, run: copied_run(run, tmp / "copy", checkpoint=truncated(run)),
                                      ["{tmp}/copy/checkpoint.pt", "truncated or corrupt"]),
    "eval a code payload": (["eval", "{tmp}/payload.pt"], lambda tmp, run: payload(tmp),
                            ["{tmp}/payload.pt", "refused to load", "mkdir"]),
    "resume a code payload": (["train", "--out", "{tmp}/copy", "--resume"],
                              lambda tmp, run: copied_run(run, tmp / "copy", checkpoint=payload(tmp)),
                              ["{tmp}/copy/checkpoint.pt", "refused to load", "mkdir"]),
    "resume a config of the wrong type": (
        ["train", "--out", "{tmp}/copy", "--resume"],
        lambda tmp, run: copied_run(run, tmp / "copy", config=(run / "config.json").read_text().replace(
            '"epochs": 1,', '"epochs": "1",')),
        ["{tmp}/copy/config.json", "epochs must be an integer", "'1'"]),
    "train --device nosuch": (["train", *TRAIN, "--device", "nosuch", "--out", "{tmp}/r"], None,
                              ["device", "'nosuch'", "cuda:N"]),
    "eval --device nosuch": (["eval", "{run}", "--device", "nosuch"], None, ["--device", "'nosuch'", "cuda:N"]),
    "search --device nosuch": (["search", *SEARCH, "--device", "nosuch", "--out", "{tmp}/r"], None,
                               ["device", "'nosuch'", "cuda:N"]),
    "search --backbone timm/nosuch": (["search", *SEARCH, "--backbone", "timm/nosuch", "--out", "{tmp}/r"], None,
                                      ["'timm/nosuch'", "timm has no model 'nosuch'"]),
    "demo --batch-size 0": (["demo", "--batch-size", "0"], None, ["--batch-size", "at least 1", "got 0"]),
    "demo --image-size 0": (["demo", "--image-size", "0"], None, ["--image-size", "at least 1", "got 0"]),
    "eval --batch-size 0": (["eval", "{run}", "--batch-size", "0"], None, ["--batch-size", "at least 1"]),
    "train --out a file": (["train", *TRAIN, "--out", "{tmp}/file"], lambda tmp, run: (tmp / "file").write_text(""),
                           ["--out {tmp}/file is a file"]),
    "search --out under a file": (["search", *SEARCH, "--out", "{tmp}/file/run"],
                                  lambda tmp, run: (tmp / "file").write_text(""), ["--out {tmp}/file/run", "a file"]),
    "compare --out a file": (["compare", "--out", "{tmp}/file"], lambda tmp, run: (tmp / "file").write_text(""),
                             ["--out {tmp}/file is a file"]),
    "pipeline --out under a file": (["pipeline", "--out", "{tmp}/file/p"],
                                    lambda tmp, run: (tmp / "file").write_text(""),
                                    ["--out {tmp}/file/p: {tmp}/file is a file"]),
    "search --steps-per-epoch 0": (["search", *SEARCH, "--steps-per-epoch", "0", "--out", "{tmp}/r"], None,
                                   ["steps_per_epoch", "[1, inf)", "got 0"]),
    "train --lr-min -0.1": (["train", *TRAIN, "--lr-min", "-0.1", "--out", "{tmp}/r"], None,
                            ["lr_min", "[0, lr=0.1]", "got -0.1"]),
    "search --lr-min -1": (["search", *SEARCH, "--lr-min", "-1", "--out", "{tmp}/r"], None, ["lr_min", "got -1"]),
    "search --arch-lr -1": (["search", *SEARCH, "--arch-lr", "-1", "--out", "{tmp}/r"], None,
                            ["arch_lr", "(0, inf)", "got -1"]),
    "train --momentum 1": (["train", *TRAIN, "--momentum", "1", "--out", "{tmp}/r"], None,
                           ["momentum", "[0, 1)", "got 1"]),
    "search --momentum -0.5": (["search", *SEARCH, "--momentum", "-0.5", "--out", "{tmp}/r"], None,
                               ["momentum", "[0, 1)", "got -0.5"]),
    "train --image-size 0": (["train", *TRAIN, "--image-size", "0", "--out", "{tmp}/r"], None,
                             ["image_size", "got 0"]),
    "search --image-size 0": (["search", *SEARCH, "--image-size", "0", "--out", "{tmp}/r"], None,
                              ["image_size", "got 0"]),
    "train --grad-clip -1": (["train", *TRAIN, "--grad-clip", "-1", "--out", "{tmp}/r"], None,
                             ["grad_clip", "0 disables clipping", "got -1"]),
    "search --grad-clip -1": (["search", *SEARCH, "--grad-clip", "-1", "--out", "{tmp}/r"], None,
                              ["grad_clip", "got -1"]),
    "train --workers -1": (["train", *TRAIN, "--workers", "-1", "--out", "{tmp}/r"], None, ["workers", "got -1"]),
    "train --lr nan": (["train", *TRAIN, "--lr", "nan", "--out", "{tmp}/r"], None, ["lr must be", "got nan"]),
    "train --epochs x": (["train", "--epochs", "x"], None, ["--epochs", "invalid int value: 'x'"]),
    "search --seeds 0,0": (["search", *SEARCH, "--seeds", "0,0", "--out", "{tmp}/r"], None,
                           ["--seeds needs distinct integers", "'0,0'"]),
    "train --attention nosuch": (["train", *TRAIN, "--attention", "nosuch", "--out", "{tmp}/r"], None,
                                 ["unknown attention 'nosuch'", "se, eca, cbam"]),
    "search --nosuch": (["search", "--nosuch", "1"], None, ["unrecognized arguments: --nosuch 1"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, run, name):
    argv, setup, words = CASES[name]
    if setup:
        setup(tmp_path, run)
    fill = lambda text: text.replace("{tmp}", str(tmp_path)).replace("{run}", str(run))
    before, files_before = snapshot(run), snapshot(tmp_path)
    assert main([fill(a) for a in argv]) == 2
    out, err = capsys.readouterr()
    err = err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if "--resume" not in argv:  # a resumed run is announced, then its checkpoint read
        assert out == "", out  # refused before anything is announced
    assert err.startswith(f"sase {argv[0]}: error: "), err
    for word in words:
        assert fill(word) in err, (word, err)
    assert snapshot(run) == before and snapshot(tmp_path) == files_before  # nothing written, nothing changed
    assert not (tmp_path / "ran").exists()  # the payload never ran


def test_an_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    out = unwritable(tmp_path)
    assert main(["train", *TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"sase train: error: --out {out}"), err
    assert not out.exists()


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "SASE_DEBUG"])
def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch, how):
    argv = ["train", *TRAIN, "--device", "nosuch", "--out", str(tmp_path / "r")]
    if how == "SASE_DEBUG":
        monkeypatch.setenv("SASE_DEBUG", "1")
    argv = {"--debug first": ["--debug", *argv], "--debug last": [*argv, "--debug"]}.get(how, argv)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" in err and err.splitlines()[-1].startswith("sase train: error: device must be")


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "hostname").write_text("myhost\n")
    done = subprocess.run([sys.executable, "-m", "sase", "eval", str(tmp_path / "hostname")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"sase eval: error: {tmp_path / 'hostname'}: not a torch checkpoint (torch.load cannot read it)"]


def test_skipped_images_are_a_message_not_a_warning(tmp_path, capsys):
    write_folder(tmp_path, classes=("cat", "dog"), per_class=10)
    (tmp_path / "train" / "cat" / "bad.png").write_text("not a png")  # 1 of 21 files: skipped, not fatal
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset, _ = build_dataset("imagefolder", tmp_path, train=True)
    err = capsys.readouterr().err
    assert len(dataset) == 20 and not caught
    assert err.startswith("warning: 1 of 21 image files") and "bad.png" in err and "skipping them" in err


def test_every_numeric_setting_has_a_range():
    """A numeric setting added later without a valid range would pass unchecked: list them all."""
    from sase.search import SearchConfig

    for config in (TrainConfig, SearchConfig):
        numeric = {name for name, hint in config.__annotations__.items() if "int" in hint or "float" in hint}
        assert numeric == set(config.RANGES), config.__name__
    with pytest.raises(ValueError, match=r"warmup_epochs must be in \[0, epochs=2\], got 3"):
        replace(TrainConfig(epochs=2), warmup_epochs=3)


def test_version_names_sase_and_what_it_runs_on(capsys):
    import timm
    import torchvision

    import sase
    assert main(["--version"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"sase {sase.__version__} (Python ")
    for name, module in (("torch", torch), ("torchvision", torchvision), ("timm", timm)):
        assert f"{name} {module.__version__}" in line


def test_a_closed_output_pipe_ends_quietly(monkeypatch, capsys):
    """`sase ... | head`: once the reader is gone, no error line and no traceback, exit code 1."""
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["demo", "--model", "resnet20", "--attention", "se", "--image-size", "8"]) == 1
    assert capsys.readouterr().err == ""


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past `nbytes` of any file fail with EFBIG: the system's own refusal, as a full disk's ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the signal would kill the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_checkpoint_the_system_refuses_is_an_os_error_naming_it_and_the_old_one_stays(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1, "w": torch.ones(10)}, path)
    with file_size_limit(100_000), pytest.raises(OSError) as refused:
        save_atomic({"step": 2, "w": torch.ones(100_000)}, path)  # 400 kB
    assert refused.value.errno == errno.EFBIG and refused.value.filename == str(path)
    assert refused.value.strerror == "checkpoint not written: File too large"
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_weights_the_system_refuses_are_an_os_error_naming_them(tmp_path):
    model = create_model("resnet20", attention="se")
    spec = ModelSpec.create("resnet20", "se", 10, 32, "digits")
    with file_size_limit(100_000), pytest.raises(OSError) as refused:
        save_safetensors(model, spec, tmp_path / "model.safetensors")  # 1.1 MB
    assert refused.value.errno == errno.EFBIG and refused.value.filename == str(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, under any name


def test_a_run_whose_checkpoint_the_disk_refuses_ends_in_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    with file_size_limit(200_000):  # config.json and history.csv fit, the checkpoint does not
        assert main(["train", *TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sase train: error: {out / 'checkpoint.pt'}: checkpoint not written: File too large", err
    assert not list(out.glob(".checkpoint.pt.*"))  # the temporary file is gone too


def test_ctrl_c_is_one_line_saying_how_to_go_on_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    from sase.cli.commands import AFTER_INTERRUPT
    from sase.train.loop import Trainer

    original, calls = Trainer._train_step, {"n": 0}

    def step(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2, after epoch 1's checkpoint
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", step)
    out = tmp_path / "r"
    try:
        code = main(["train", *TRAIN, "--epochs", "2", "--out", str(out)])
    except KeyboardInterrupt:  # not let through: pytest would take it for its own Ctrl-C and stop the session
        pytest.fail("Ctrl-C left sase's main as a KeyboardInterrupt")
    assert code == 130
    assert capsys.readouterr().err.strip() == f"sase train: interrupted{AFTER_INTERRUPT['train']}"
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert calls["n"] == 5  # the interrupted step and the last one: the resume began where epoch 1's checkpoint was
