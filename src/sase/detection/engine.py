"""Training a detector on COCO-format data: SGD on the 1x schedule, COCO metrics after every epoch, resumable.

    result = DetectionTrainer(DetectConfig(kind="mask_rcnn", train_images=..., train_ann=..., val_images=...,
                                           val_ann=..., backbone_weights="runs/r50/model.safetensors")).run()

A run folder holds config.json, history.csv (per epoch: lr, the losses, box and mask AP, seconds, images/s),
tensorboard/ (when installed), an atomic checkpoint.pt, detector.safetensors, metrics.json (the last
evaluation, with COCOeval's table), summary.json and, with backbone weights, backbone_weights.json (which
tensors were loaded). The learning rate warms up linearly from `warmup_factor` x lr over `warmup_iters`
iterations, then drops by `gamma` after each epoch of `lr_steps`, stepped every iteration.

A run resumed from its checkpoint continues exactly: the data order and the flips are functions of
(seed, epoch, position), and the random draws of each step (the proposal samplers) are seeded by (seed, step).
Under torchrun every process takes its share of each global batch (DistributedDataParallel averages the
gradients), predicts its shard of the validation images, and rank 0 writes every file.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..train.export import save_safetensors
from ..train.log import EpochLog, read_csv
from ..train.loop import check_finite
from ..train.metrics import count_parameters, shard
from ..train.recipe import autocast, build_scaler, optimizer_step, resolve_device
from ..utils.checkpoint import save_atomic
from ..utils.distributed import barrier, broadcast_buffers, broadcast_object, check_batch, setup, world
from ..utils.folders import check_out, make_out
from ..utils.sampling import SeededBatches, SeededSamples, _mix
from ..utils.totals import LOG_EVERY, Totals
from .config import DetectConfig
from .data import CocoDetection, collate
from .evaluate import IOU_TYPES, STATS, CocoResult, evaluate_coco, format_metrics
from .model import CHECKPOINT, SAFETENSORS, DetectorSpec

METRICS, SUMMARY, WEIGHTS_REPORT = "metrics.json", "summary.json", "backbone_weights.json"


@dataclass
class WarmupSteps:
    """Multiplier of the peak learning rate at a global step (a LambdaLR lambda, saved in its state)."""

    warmup_steps: int
    warmup_factor: float  # the multiplier at step 0
    milestones: tuple[int, ...]  # global steps from which the rate is multiplied by one more gamma
    gamma: float

    def __call__(self, step: int) -> float:
        warm = 1.0 if step >= self.warmup_steps else \
            self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_steps
        return warm * self.gamma ** sum(step >= m for m in self.milestones)


@dataclass(frozen=True)
class DetectResult:
    out: Path
    metrics: dict[str, dict[str, float | None]]  # IoU type -> COCO stat -> value (see evaluate.STATS)
    table: str  # COCOeval's summary of the last evaluation
    parameters: int
    seconds: float  # training time summed over epochs (evaluation excluded)


class DetectionTrainer:
    """A detection run in `config.out`, fresh or resumed from its checkpoint."""

    def __init__(self, config: DetectConfig, resume: bool = False, progress: bool = True) -> None:
        for flag in ("train_images", "train_ann", "val_images", "val_ann"):
            if getattr(config, flag) is None:
                raise ValueError(f"--{flag.replace('_', '-')} is needed: a run trains on COCO-format data and "
                                 "evaluates on it")
        self.world, self.config = world(), config
        self.progress = progress and self.world.main
        self.out = check_out(config.out)
        batch = check_batch(config.batch_size)
        device = resolve_device(config.device)
        if not resume and (self.out / CHECKPOINT).exists():
            raise FileExistsError(f"{self.out} already holds a detection run; resume it with --resume or pick "
                                  "another --out")
        self.device = setup(device)
        saved = config.resume_state(CHECKPOINT) if resume else None
        self.iou_types = IOU_TYPES[config.kind]
        self._datasets()
        self.spec = DetectorSpec.from_dict(saved["detector_spec"]) if saved else \
            DetectorSpec.create(config, self.train_set.categories)
        torch.manual_seed(config.seed)  # the same initial weights on every process
        self.net = self.spec.build(None if saved else config.backbone_weights).to(self.device)
        self._loaders(batch)
        self._optimizer()
        self.epoch, self.step, self.totals = 0, 0, self._totals()
        if saved is None:
            self._start_folder()
        else:
            self._restore(saved)
        self.log = EpochLog(self.out, resume_rows=None if saved is None else saved["history_rows"]) \
            if self.world.main else None
        self.model = self.net if not self.world.distributed else DistributedDataParallel(
            self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _datasets(self) -> None:
        c, masks = self.config, self.config.kind == "mask_rcnn"
        self.train_set = CocoDetection(c.train_images, c.train_ann, masks, keep_empty=c.keep_empty, flip=c.flip)
        self.val_set = CocoDetection(c.val_images, c.val_ann, masks)
        if self.val_set.categories != self.train_set.categories:
            raise ValueError(f"{c.val_ann}: its categories differ from those of {c.train_ann}; the detector "
                             "is evaluated on the classes it learns")
        self.gt = self.val_set.file.coco() if self.world.main else None  # COCOeval runs on rank 0

    def _loaders(self, batch: int) -> None:
        c, w, pin = self.config, self.world, self.device.type == "cuda"
        self.batches = SeededBatches(range(len(self.train_set)), c.batch_size, c.seed, shard=(w.rank, w.size))
        self.loader = DataLoader(SeededSamples(self.train_set, c.seed), batch_sampler=self.batches,
                                 num_workers=c.workers, persistent_workers=c.workers > 0, pin_memory=pin,
                                 collate_fn=collate)
        self.val_loader = DataLoader(shard(self.val_set, w.rank, w.size), batch_size=batch, num_workers=c.workers,
                                     pin_memory=pin, collate_fn=collate)
        whole = self.batches.batches()
        self.steps = whole if c.steps_per_epoch is None else min(whole, c.steps_per_epoch)

    def _optimizer(self) -> None:
        """SGD over the parameters that train (the frozen stages have none), the 1x schedule, the fp16 scaler."""
        c = self.config
        self.optimizer = torch.optim.SGD([p for p in self.net.parameters() if p.requires_grad], lr=c.peak_lr,
                                         momentum=c.momentum, weight_decay=c.weight_decay)
        milestones = tuple(epoch * self.steps for epoch in c.milestones())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupSteps(c.warmup_iters, c.warmup_factor, milestones, c.gamma))
        self.scaler = build_scaler(c.amp, self.device)

    def _totals(self, saved: dict[str, float] | None = None) -> Totals:
        return Totals(saved, across_processes=self.world.distributed)

    # -- the run
    def run(self) -> DetectResult:
        try:
            for epoch in range(self.epoch, self.config.epochs):
                self._train_epoch(epoch)
                broadcast_buffers(self.net)  # every process predicts with rank 0's BatchNorm statistics
                self._end_epoch(epoch, self.evaluate())
            return broadcast_object(self._write_result() if self.world.main else None)
        finally:
            if self.log is not None:
                self.log.close()

    def evaluate(self) -> CocoResult:
        return evaluate_coco(self.net, self.val_loader, self.gt, self.device, [i for i, _ in self.spec.categories],
                             self.iou_types, self.config.amp, self.progress)

    def _train_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch, self.step)
        bar = tqdm(total=self.steps, initial=self.step, desc=f"train {epoch + 1}/{self.config.epochs}",
                   disable=not self.progress, leave=False)
        t, tick = self.totals, time.perf_counter()
        for images, targets in islice(self.loader, self.steps - self.step):
            for name, value in self._train_step(images, targets).items():
                t.add(name, value)
            t.add("steps", 1)
            t.add("images", len(images))
            self.step += 1
            bar.update(1)
            checkpoint = self.step % self.config.checkpoint_every == 0 and self.step < self.steps
            if checkpoint or self.step % LOG_EVERY == 0 or self.step == self.steps:
                check_finite(self.totals, self.out / CHECKPOINT, epoch, self.step)  # before a checkpoint
                bar.set_postfix(loss=f"{t.mean('loss', 'steps'):.3f}")
                now = time.perf_counter()
                t.add("seconds", (now - tick) / self.world.size)
                tick = now
            if checkpoint:
                self._save()
        bar.close()

    def _train_step(self, images: tuple[torch.Tensor, ...], targets: tuple[dict[str, torch.Tensor], ...]
                    ) -> dict[str, torch.Tensor]:
        """One SGD step; the total loss and each of its terms, as tensors on the device."""
        torch.manual_seed(_mix(self.config.seed, self.epoch * self.steps + self.step))  # the samplers' draws
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in target.items()} for target in targets]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.config.amp, self.device):
            losses = self.model(images, targets)
        losses = {name: value.float() for name, value in losses.items()}
        loss = sum(losses.values())
        optimizer_step(loss, self.optimizer, self.scaler, self.scheduler, self.optimizer.param_groups[0]["params"],
                       self.config.grad_clip)
        return {"loss": loss.detach(), **{name: value.detach() for name, value in losses.items()}}

    def _end_epoch(self, epoch: int, val: CocoResult) -> None:
        t = self.totals.read()
        steps = max(t.get("steps", 0), 1)
        last_step = (epoch + 1) * self.steps - 1
        row: dict[str, Any] = {"epoch": epoch + 1,
                               "lr": round(self.config.peak_lr * self.scheduler.lr_lambdas[0](last_step), 8)}
        losses = ["loss"] + sorted(k for k in t if k.startswith("loss_"))  # one column order every epoch
        row.update({f"train_{k}": round(t[k] / steps, 6) for k in losses})
        row.update({f"val_{kind}_{name}": val.metrics[kind][name] for kind in self.iou_types for name in STATS[:6]})
        row.update({"seconds": round(t.get("seconds", 0.0), 3),
                    "images_per_s": round(t.get("images", 0) / max(t.get("seconds", 0.0), 1e-9), 2)})
        if self.log is not None:
            self.log.write(row)
            (self.out / METRICS).write_text(json.dumps({"epoch": epoch + 1, "images": val.images, **val.metrics,
                                                        "table": val.table}, indent=2) + "\n")
        self.epoch, self.step, self.totals = epoch + 1, 0, self._totals()
        self._save()
        if self.progress:
            tqdm.write(f"epoch {epoch + 1}/{self.config.epochs}: train loss {row['train_loss']:.4f} | "
                       f"{format_metrics(val.metrics, ('AP', 'AP50'))}")

    def _write_result(self) -> DetectResult:
        save_safetensors(self.net, self.spec, self.out / SAFETENSORS)
        saved = json.loads((self.out / METRICS).read_text())
        rows = read_csv(self.out / "history.csv")
        result = DetectResult(self.out, {k: saved[k] for k in self.iou_types}, saved["table"],
                              count_parameters(self.net), sum(float(r["seconds"]) for r in rows))
        summary = {"epochs": len(rows), **result.metrics, "parameters": result.parameters,
                   "seconds": result.seconds, "detector_spec": asdict(self.spec)}
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        return result

    # -- folder and checkpoint
    def _start_folder(self) -> None:
        report = self.net.backbone_report
        if self.world.main:
            make_out(self.out)
            for stale in (SUMMARY, METRICS, WEIGHTS_REPORT):
                (self.out / stale).unlink(missing_ok=True)
            (self.out / "config.json").write_text(self.config.to_json() + "\n")
            if report is not None:
                (self.out / WEIGHTS_REPORT).write_text(json.dumps(asdict(report), indent=2) + "\n")
                print(report.summary())
        barrier()

    def _save(self) -> None:
        """The checkpoint, written by rank 0; every process must call it (it reads the sums over them)."""
        totals = dict(self.totals.read())
        if self.log is None:
            return
        save_atomic({
            "config": asdict(self.config), "detector_spec": asdict(self.spec),
            "epoch": self.epoch, "step": self.step, "totals": totals,
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(), "history_rows": self.log.rows(),
        }, self.out / CHECKPOINT)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])
        self.epoch, self.step, self.totals = saved["epoch"], saved["step"], self._totals(saved["totals"])
        if self.world.main:
            (self.out / "config.json").write_text(self.config.to_json() + "\n")


def run_detection(config: DetectConfig, resume: bool = False, progress: bool = True) -> DetectResult:
    """Run (or resume) a detection run and return its result."""
    return DetectionTrainer(config, resume=resume, progress=progress).run()


__all__ = ["DetectResult", "DetectionTrainer", "WarmupSteps", "run_detection"]
