"""The training loop: SGD with warm-up and cosine, clipped, optionally in half precision; resumable exactly.

    result = Trainer(TrainConfig(attention="se", epochs=2)).run()   # -> TrainResult(top1, ...)

A run folder holds config.json, history.csv (one row per epoch), checkpoint.pt, model.safetensors,
summary.json and tensorboard/ (when tensorboard is installed). A run resumed from its checkpoint
(`Trainer(config, resume=True)`) ends bit-identical to an uninterrupted one on the CPU: model,
optimiser, schedule, gradient scaler, RNG, the epoch and the position in it are restored, and the
data order and augmentation are functions of (seed, epoch, position). The run is the folder
`config.out`, wherever it was first written: a copied run folder resumes into the copy.

A run resumed with more epochs than it was started with continues on the cosine re-stretched over the
new total: from the step it stopped at, the learning rate is the one a run started with the new
number of epochs would have there (a finished run's lr thus rises from lr_min to that value, then
decays to lr_min at the new end); the steps already taken keep the learning rates they had, and the
warm-up is unchanged. Fewer epochs are refused.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import build_dataset
from ..utils.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from ..utils.folders import check_out, make_out
from ..utils.sampling import SeededBatches, SeededSamples
from ..utils.totals import LOG_EVERY, Totals
from .config import TrainConfig
from .export import CHECKPOINT, SAFETENSORS, ModelSpec, save_safetensors
from .log import EpochLog, read_csv
from .metrics import EvalResult, count_flops, count_parameters, evaluate, top_k
from .recipe import autocast, build_optimizer, build_scaler, build_scheduler, resolve_device

SUMMARY = "summary.json"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainResult:
    out: Path
    top1: float  # validation top-1 after the last epoch, in [0, 1]
    topk: float  # validation top-k after the last epoch
    k: int
    loss: float  # validation loss after the last epoch
    parameters: int
    flops: int  # one image at the training size, 2 per multiply-add (see metrics)
    seconds: float  # training time summed over epochs (evaluation excluded)


class Trainer:
    """A training run in `config.out`, fresh or resumed from its checkpoint."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        self.config, self.progress = config, progress
        self.out = check_out(config.out)
        self.device = resolve_device(config.device)
        if not resume and (self.out / CHECKPOINT).exists():  # before the data: scanning ImageNet takes a while
            raise FileExistsError(f"{self.out} already holds a training run; resume it with --resume or pick "
                                  "another --out")
        saved = self.config.resume_state(CHECKPOINT) if resume else None
        self.train_set, data = build_dataset(config.dataset, config.data, train=True, augment=True,
                                             image_size=config.image_size, download=config.download)
        val_set, _ = build_dataset(config.dataset, config.data, train=False, image_size=config.image_size,
                                   download=config.download)
        # the saved spec holds the genotype itself: a genotype file edited since the start cannot change the model
        self.spec = ModelSpec.from_dict(saved["model_spec"]) if saved else ModelSpec.create(
            config.model, config.attention, data.num_classes, data.image_size, config.dataset)
        torch.manual_seed(config.seed)
        self.model = self.spec.build().to(self.device)
        pin = self.device.type == "cuda"
        if pin:
            torch.backends.cudnn.benchmark = True  # fixed-size batches: pick the fastest kernels once
        self.batches = SeededBatches(range(len(self.train_set)), config.batch_size, config.seed)
        self.loader = DataLoader(SeededSamples(self.train_set, config.seed), batch_sampler=self.batches,
                                 num_workers=config.workers, persistent_workers=config.workers > 0, pin_memory=pin)
        self.val_loader = DataLoader(val_set, batch_size=2 * config.batch_size, num_workers=config.workers,
                                     pin_memory=pin)
        self.steps = self.batches.batches() if config.steps_per_epoch is None else \
            min(self.batches.batches(), config.steps_per_epoch)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps)
        self.scaler = build_scaler(config.amp, self.device)
        self.epoch, self.step, self.totals = 0, 0, Totals()
        if saved is None:
            self._start_folder()
        else:
            self._restore(saved)
        self.log = EpochLog(self.out, resume_rows=None if saved is None else saved["history_rows"])

    # -- the run
    def run(self) -> TrainResult:
        try:
            for epoch in range(self.epoch, self.config.epochs):
                self._train_epoch(epoch)
                self._end_epoch(epoch, evaluate(self.model, self.val_loader, self.device, self.config.amp))
            return self._finish()
        finally:
            self.log.close()

    def _train_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch, self.step)
        bar = tqdm(total=self.steps, initial=self.step, desc=f"train {epoch + 1}/{self.config.epochs}",
                   disable=not self.progress, leave=False)
        # losses and hits stay on the device; read every LOG_EVERY steps (and before a checkpoint), not every step
        t, tick = self.totals, time.perf_counter()
        for x, y in islice(self.loader, self.steps - self.step):
            loss, correct = self._train_step(x, y)
            t.add("loss", loss * len(y))
            t.add("correct", correct)
            t.add("seen", len(y))
            self.step += 1
            bar.update(1)
            checkpoint = self.step % self.config.checkpoint_every == 0 and self.step < self.steps
            if checkpoint or self.step % LOG_EVERY == 0 or self.step == self.steps:
                self._check_finite(epoch)  # before a checkpoint: a diverged run never overwrites the last good one
                bar.set_postfix(loss=f"{t.mean('loss'):.3f}", top1=f"{t.mean('correct'):.3f}")
                now = time.perf_counter()  # after the read: the device has finished the steps timed
                t.add("seconds", now - tick)
                tick = now
            if checkpoint:
                self._save()
        bar.close()

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step; (loss, top-1 hits) as tensors on the device."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.config.amp, self.device):
            logits = self.model(x)
        # the loss in float32 whatever the autocast type: a half-precision softmax loses small probabilities
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        clip = self.config.grad_clip
        if self.scaler is None:
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        with warnings.catch_warnings():
            # the scheduler steps even when the scaler skipped a step: the lr stays a function of the step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            self.scheduler.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def _check_finite(self, epoch: int) -> None:
        """Raise TrainingDiverged if a step's loss since the last check was NaN or infinite."""
        loss = self.totals.read().get("loss", 0.0)
        if math.isfinite(loss):
            return
        where = self.out / CHECKPOINT
        kept = f"the last good checkpoint is {where}" if where.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(f"the training loss became {loss} in epoch {epoch + 1} by step {self.step}; "
                               f"stopped, {kept}. Try a lower --lr, more warm-up or --amp bf16 instead of fp16.")

    def _end_epoch(self, epoch: int, val: EvalResult) -> None:
        t = self.totals.read()
        last_step = (epoch + 1) * self.steps - 1
        row = {"epoch": epoch + 1, "lr": round(self.config.lr * self.scheduler.lr_lambdas[0](last_step), 8),
               "train_loss": round(self.totals.mean("loss"), 6), "train_top1": round(self.totals.mean("correct"), 6),
               "val_loss": round(val.loss, 6), "val_top1": round(val.top1, 6), f"val_top{val.k}": round(val.topk, 6),
               "seconds": round(t.get("seconds", 0.0), 3),
               "images_per_s": round(t.get("seen", 0) / max(t.get("seconds", 0.0), 1e-9), 1)}
        self.log.write(row)
        self.epoch, self.step, self.totals = epoch + 1, 0, Totals()
        self._save()
        if self.progress:
            tqdm.write(f"epoch {epoch + 1}/{self.config.epochs}: train loss {row['train_loss']:.4f} top-1 "
                       f"{row['train_top1']:.4f} | val loss {val.loss:.4f} top-1 {val.top1:.4f} top-{val.k} "
                       f"{val.topk:.4f} | {row['images_per_s']:.0f} img/s")

    def _finish(self) -> TrainResult:
        save_safetensors(self.model, self.spec, self.out / SAFETENSORS)
        rows = read_csv(self.out / "history.csv")
        last = rows[-1]
        k = top_k(self.spec.num_classes)
        flops = count_flops(self.model, self.spec.image_size, self.spec.in_chans)
        result = TrainResult(self.out, float(last["val_top1"]), float(last[f"val_top{k}"]), k,
                             float(last["val_loss"]), count_parameters(self.model), flops,
                             sum(float(r["seconds"]) for r in rows))
        summary = {**{key: v for key, v in asdict(result).items() if key != "out"}, "macs": flops // 2,
                   "epochs": len(rows),
                   # images over seconds of the whole run, not a mean of per-epoch rates
                   "train_images_per_s": sum(float(r["images_per_s"]) * float(r["seconds"]) for r in rows)
                   / max(result.seconds, 1e-9),
                   "model_spec": asdict(self.spec)}
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        return result

    # -- folder and checkpoint
    def _start_folder(self) -> None:
        make_out(self.out)
        (self.out / SUMMARY).unlink(missing_ok=True)  # a summary marks a finished run; this one is not
        self._write_config()

    def _write_config(self) -> None:
        """config.json: on resume too, so that it names this folder and the epochs the run now has."""
        (self.out / "config.json").write_text(self.config.to_json() + "\n")

    def _save(self) -> None:
        save_atomic({
            "config": asdict(self.config), "model_spec": asdict(self.spec),
            "epoch": self.epoch, "step": self.step, "totals": dict(self.totals.read()),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng_state(), "history_rows": self.log.rows(),
        }, self.out / CHECKPOINT)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self._stretch_schedule()
        if self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        self.epoch, self.step, self.totals = saved["epoch"], saved["step"], Totals(saved["totals"])
        self._write_config()

    def _stretch_schedule(self) -> None:
        """After a resume with more epochs: the cosine over the new total, from the step the run is at.

        The restored schedule keeps the total it was saved with (LambdaLR saves its lambda's fields).
        """
        schedule = self.scheduler.lr_lambdas[0]
        total = self.config.epochs * self.steps
        if schedule.total_steps == total:
            return
        schedule.total_steps = total
        step = self.scheduler.last_epoch  # scheduler steps taken: the global step of the next optimiser step
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * schedule(step)


def run_train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run (or resume) a training run and return its result."""
    return Trainer(config, resume=resume, progress=progress).run()


__all__ = ["SUMMARY", "TrainResult", "Trainer", "TrainingDiverged", "run_train"]
