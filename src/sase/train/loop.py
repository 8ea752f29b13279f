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

Under torchrun (`torchrun --nproc_per_node N -m sase train ...`) the N processes make one run.
`batch_size` stays the global batch: each process takes its share of every batch (`SeededBatches`
shards it) and DistributedDataParallel averages the gradients, so the run takes the steps one process
would, on the same images; only BatchNorm differs, normalising over each process's share unless
`sync_bn`. The logged training loss and top-1 are summed over the processes, and each evaluates a shard
of the validation set. Rank 0 writes every file; before each evaluation rank 0's BatchNorm statistics,
which are the run's, are given to every process. The checkpoint holds the model without its DDP
wrapper, so a run resumes on any number of processes.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import DataSpec, build_dataset
from ..utils.checkpoint import rng_state, save_atomic, set_rng_state
from ..utils.distributed import barrier, broadcast_buffers, broadcast_object, check_batch, setup, world
from ..utils.folders import check_out, make_out
from ..utils.sampling import SeededBatches, SeededSamples
from ..utils.totals import LOG_EVERY, Totals
from .config import TrainConfig
from .export import CHECKPOINT, SAFETENSORS, ModelSpec, save_safetensors
from .log import EpochLog, read_csv
from .metrics import EvalResult, count_flops, count_parameters, evaluate, nonfinite_message, shard, top_k
from .recipe import autocast, build_optimizer, build_scaler, build_scheduler, optimizer_step, resolve_device

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
        self.world = world()
        self.config, self.progress = config, progress and self.world.main  # one progress bar per run: rank 0's
        self.out = check_out(config.out)
        batch = check_batch(config.batch_size)  # before joining the others: a batch that cannot split fails at once
        device = resolve_device(config.device)
        if config.sync_bn and self.world.distributed and device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices: torch's SyncBatchNorm does not run on the CPU; drop the "
                             "flag, or train on GPUs")
        if not resume and (self.out / CHECKPOINT).exists():  # before the data: scanning ImageNet takes a while
            raise FileExistsError(f"{self.out} already holds a training run; resume it with --resume or pick "
                                  "another --out")
        self.device = setup(device)
        saved = self.config.resume_state(CHECKPOINT) if resume else None
        self.train_set, val_set, data = self._datasets()
        # the saved spec holds the genotype itself: a genotype file edited since the start cannot change the model
        self.spec = ModelSpec.from_dict(saved["model_spec"]) if saved else ModelSpec.create(
            config.model, config.attention, data.num_classes, data.image_size, config.dataset)
        self.net = self._build_net()  # the model itself: what is saved, exported and evaluated
        self._loaders(val_set, batch)
        self.steps = self.batches.batches() if config.steps_per_epoch is None else \
            min(self.batches.batches(), config.steps_per_epoch)
        self.optimizer = build_optimizer(self.net, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps)
        self.scaler = build_scaler(config.amp, self.device)
        self.epoch, self.step, self.totals = 0, 0, self._totals()
        if saved is None:
            self._start_folder()
        else:
            self._restore(saved)
        self.log: EpochLog | None = EpochLog(self.out, resume_rows=None if saved is None else saved["history_rows"]) \
            if self.world.main else None  # rank 0's alone
        self.model = self._parallel(self.net)  # what takes the training steps
        if config.compile is not None:  # compiled on its first step; the weights stay self.net's own
            self.model = torch.compile(self.model, backend=config.compile)

    def _datasets(self) -> tuple[Dataset, Dataset, DataSpec]:
        """The training set, the validation set and their spec; with --download under torchrun rank 0 builds
        them first, so that the files are fetched once."""
        c, first = self.config, self.config.download and self.world.distributed
        if first and not self.world.main:
            barrier()
        train_set, data = build_dataset(c.dataset, c.data, train=True, augment=True, image_size=c.image_size,
                                        download=c.download)
        val_set, _ = build_dataset(c.dataset, c.data, train=False, image_size=c.image_size, download=c.download)
        if first and self.world.main:
            barrier()
        return train_set, val_set, data

    def _build_net(self) -> nn.Module:
        """The model on this process's device, its BatchNorms synchronised across processes when `sync_bn`."""
        torch.manual_seed(self.config.seed)  # the same initial weights on every process
        net = self.spec.build()
        if self.config.sync_bn and self.world.distributed:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # the same parameters and buffers, in new modules
        return net.to(self.device)

    def _loaders(self, val_set: Dataset, batch: int) -> None:
        """This process's training batches (its share of each global batch) and its shard of the validation set."""
        c, w, pin = self.config, self.world, self.device.type == "cuda"
        if pin:
            torch.backends.cudnn.benchmark = True  # fixed-size batches: pick the fastest kernels once
        self.batches = SeededBatches(range(len(self.train_set)), c.batch_size, c.seed, shard=(w.rank, w.size))
        self.loader = DataLoader(SeededSamples(self.train_set, c.seed), batch_sampler=self.batches,
                                 num_workers=c.workers, persistent_workers=c.workers > 0, pin_memory=pin)
        self.val_loader = DataLoader(shard(val_set, w.rank, w.size), batch_size=2 * batch, num_workers=c.workers,
                                     pin_memory=pin)

    def _parallel(self, net: nn.Module) -> nn.Module:
        """`net` itself in one process; under torchrun wrapped by DistributedDataParallel, which starts every
        process from rank 0's weights, averages the gradients during backward and gives every forward rank 0's
        BatchNorm statistics."""
        if not self.world.distributed:
            return net
        return DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _totals(self, saved: dict[str, float] | None = None) -> Totals:
        """The running sums of an epoch; under torchrun read as sums over every process."""
        return Totals(saved, across_processes=self.world.distributed)

    # -- the run
    def run(self) -> TrainResult:
        try:
            for epoch in range(self.epoch, self.config.epochs):
                self._train_epoch(epoch)
                broadcast_buffers(self.net)  # every process evaluates with rank 0's BatchNorm statistics
                self._end_epoch(epoch, evaluate(self.net, self.val_loader, self.device, self.config.amp,
                                                across_processes=self.world.distributed))
            return self._finish()
        finally:
            if self.log is not None:
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
                # a share per process: the sum over the processes is their mean time, not N times it
                t.add("seconds", (now - tick) / self.world.size)
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
        optimizer_step(loss, self.optimizer, self.scaler, self.scheduler, list(self.net.parameters()),
                       self.config.grad_clip)
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def _check_finite(self, epoch: int) -> None:
        check_finite(self.totals, self.out / CHECKPOINT, epoch, self.step)

    def _end_epoch(self, epoch: int, val: EvalResult) -> None:
        t = self.totals.read()
        last_step = (epoch + 1) * self.steps - 1
        row = {"epoch": epoch + 1, "lr": round(self.config.lr * self.scheduler.lr_lambdas[0](last_step), 8),
               "train_loss": round(self.totals.mean("loss"), 6), "train_top1": round(self.totals.mean("correct"), 6),
               "val_loss": round(val.loss, 6), "val_top1": round(val.top1, 6), f"val_top{val.k}": round(val.topk, 6),
               "seconds": round(t.get("seconds", 0.0), 3),
               "images_per_s": round(t.get("seen", 0) / max(t.get("seconds", 0.0), 1e-9), 1)}
        if self.log is not None:
            self.log.write(row)
        if val.nonfinite and self.world.main:
            print(f"warning: {self.out}: epoch {epoch + 1}: {nonfinite_message(val)}", file=sys.stderr, flush=True)
        self.epoch, self.step, self.totals = epoch + 1, 0, self._totals()
        self._save()
        if self.progress:
            tqdm.write(f"epoch {epoch + 1}/{self.config.epochs}: train loss {row['train_loss']:.4f} top-1 "
                       f"{row['train_top1']:.4f} | val loss {val.loss:.4f} top-1 {val.top1:.4f} top-{val.k} "
                       f"{val.topk:.4f} | {row['images_per_s']:.0f} img/s")

    def _finish(self) -> TrainResult:
        """Every process returns rank 0's result, once rank 0 has written model.safetensors and summary.json."""
        return broadcast_object(self._write_result() if self.world.main else None)

    def _write_result(self) -> TrainResult:
        save_safetensors(self.net, self.spec, self.out / SAFETENSORS)
        rows = read_csv(self.out / "history.csv")
        last = rows[-1]
        k = top_k(self.spec.num_classes)
        flops = count_flops(self.net, self.spec.image_size, self.spec.in_chans)
        result = TrainResult(self.out, float(last["val_top1"]), float(last[f"val_top{k}"]), k,
                             float(last["val_loss"]), count_parameters(self.net), flops,
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
        if self.world.main:
            make_out(self.out)
            (self.out / SUMMARY).unlink(missing_ok=True)  # a summary marks a finished run; this one is not
            self._write_config()
        barrier()  # from here on the folder exists, fresh, for every process

    def _write_config(self) -> None:
        """config.json (by rank 0): on resume too, so that it names this folder and the epochs the run now has."""
        if self.world.main:
            (self.out / "config.json").write_text(self.config.to_json() + "\n")

    def _save(self) -> None:
        """The checkpoint, written by rank 0; every process must call it (it reads the sums over them).

        Its BatchNorm statistics are rank 0's, the run's, with no broadcast needed: DDP gives them to every
        process at each training forward, and `run` before each evaluation.
        """
        totals = dict(self.totals.read())
        if self.log is None:  # not rank 0
            return
        save_atomic({
            "config": asdict(self.config), "model_spec": asdict(self.spec),
            "epoch": self.epoch, "step": self.step, "totals": totals,
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng_state(), "history_rows": self.log.rows(),
        }, self.out / CHECKPOINT)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self._stretch_schedule()
        if self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        # the saved sums are already over every process: each process starts from them and adds its own share
        self.epoch, self.step, self.totals = saved["epoch"], saved["step"], self._totals(saved["totals"])
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


def check_finite(totals: Totals, checkpoint: Path, epoch: int, step: int) -> None:
    """Raise TrainingDiverged if a step's loss since the last check was NaN or infinite (the sum "loss")."""
    loss = totals.read().get("loss", 0.0)
    if math.isfinite(loss):
        return
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was written yet"
    raise TrainingDiverged(f"the training loss became {loss} in epoch {epoch + 1} by step {step}; "
                           f"stopped, {kept}. Try a lower --lr, more warm-up or --amp bf16 instead of fp16.")


def run_train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run (or resume) a training run and return its result."""
    return Trainer(config, resume=resume, progress=progress).run()


__all__ = ["SUMMARY", "TrainResult", "Trainer", "TrainingDiverged", "check_finite", "run_train"]
