"""The search loop: alternate α and w steps over a seeded half/half split, checkpoint, log, resume.

    search = Search(SearchConfig(epochs=2))
    result = search.run()          # -> SearchResult(genotype, out, ...)

A run folder holds config.json, genotype.json, history.csv, checkpoint.pt and two α plots. A run
resumed from its checkpoint (`Search(config, resume=True)`) ends exactly where an uninterrupted
one would: model, α, both optimisers, the schedule, RNG state, the split and the position in the
epoch are all restored, and the data order is a function of (seed, epoch, position). The run is the
folder `config.out`, wherever it was first written: a copied run folder resumes into the copy.

A search resumed with more epochs continues the weights' cosine re-stretched over the new total (from
the epoch it stopped at, the lr a search of the new length would have there), and keeps the α
learning rate it started with: the budgeted default (`SearchConfig.resolved_arch_lr`) depends on the
number of epochs, and changing α's step size halfway would make it another search. Fewer epochs are
refused.

Under torchrun (`torchrun --nproc_per_node N -m sase search ...`) every process takes its share of
each global batch of both halves, from the one seeded split; the weights' gradients are averaged by
DistributedDataParallel and the architect averages its own (see `architect`), so every process holds
the same α and derives the same genotype at every epoch. The evaluation is sharded and summed over
the processes; rank 0 writes the files.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import build_dataset
from ..genotype import Genotype
from ..train.recipe import autocast, build_scaler, full_precision, resolve_device
from ..utils.csvlog import append_csv, read_csv
from ..utils.distributed import broadcast_buffers, broadcast_object, check_batch, setup, world
from ..utils.folders import check_out
from ..utils.sampling import split_indices
from ..utils.totals import LOG_EVERY, Totals
from .architect import ORDERS, Architect, Batch
from .config import SearchConfig
from .evidence import starts_window
from .graphs import GraphedStep, GraphRecordingError, graphs_unavailable
from .hessian import dominant_eigenvalue
from .regularizers import beta_decay_weight
from .batches import SearchBatches
from .run_folder import CHECKPOINT, RunFolder
from .report import alpha_summary, plot_alpha_evolution, plot_alpha_heatmap, plot_hessian
from .select import perturbation_select
from .supernet import Supernet, main_genotype
from .verdict import Verdict, judge, verdict_columns


class SearchDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class SearchResult:
    genotype: Genotype
    genotypes: list[Genotype]  # one per α group
    widths: list[int]  # the block width of each group (all widths, when α is shared)
    out: Path
    val_acc: float
    seconds: float
    verdict: Verdict  # whether α decided on every edge (see sase.search.verdict)
    arch_lr: float  # the α learning rate the run used
    probs: list  # softmax(α) at the end, (groups, 6 edges, K candidates) as nested lists


class Search(RunFolder, SearchBatches):
    """A search run in `config.out`, fresh or resumed from its checkpoint."""

    def __init__(self, config: SearchConfig, resume: bool = False, progress: bool = True) -> None:
        self.config, self.world = config, world()
        self.progress = progress and self.world.main
        self.out = check_out(config.out)  # before the data: a bad --out fails at once
        check_batch(config.batch_size)  # the global batch splits evenly over the processes
        self.device = setup(resolve_device(config.device))
        torch.manual_seed(config.seed)
        self.train_set, self.spec = build_dataset(config.dataset, config.data, train=True, augment=True,
                                                  image_size=config.image_size, download=config.download)
        self.eval_set, _ = build_dataset(config.dataset, config.data, train=True, augment=False,
                                         image_size=config.image_size)
        self.fit_idx, self.val_idx = split_indices(len(self.train_set), config.train_portion, config.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed-size batches: pick the fastest kernels once
        self.model = Supernet(config.backbone, num_classes=self.spec.num_classes,
                              per_stage=config.per_stage, sampling=config.sampling).to(self.device)
        # the weight step goes through DDP (its gradients averaged as they are computed); the architect's
        # functional calls use the plain model and average their own. A sampled step leaves the candidates
        # it did not draw without gradients.
        self.ddp = self.model if not self.world.distributed else torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=config.sampling != "none")
        self.optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.epochs, config.lr_min)
        self.scaler = build_scaler(config.amp, self.device)  # fp16: one scale for the w and the α gradients
        self.fit_batches = self._batches(self.fit_idx, config.seed)
        self.val_batches = self._batches(self.val_idx, config.seed + 1)
        self.arch_lr = config.resolved_arch_lr(self.steps_per_epoch())
        # on one CUDA device the step is launch-bound: replay it from a CUDA graph (see sase.search.graphs)
        use_graphs = config.cuda_graphs and graphs_unavailable(self.device, self.world.distributed, config.amp,
                                                               config.sampling) is None
        self.graphed = GraphedStep() if use_graphs else None
        self.architect = Architect(self.model, self.optimizer, order=ORDERS[config.order], lr=self.arch_lr,
                                   betas=(config.arch_beta1, config.arch_beta2),
                                   weight_decay=config.arch_weight_decay, beta_decay=config.beta_decay,
                                   optimizer=config.arch_optimizer, autocast=self._autocast, scaler=self.scaler,
                                   capturable=use_graphs,
                                   # ∂L/∂softmax(α) is what the evidence sums; a sampled step measures
                                   # the relaxed sample's instead (the verdict then rests on the margin)
                                   track_evidence=config.sampling == "none")
        self.epoch, self.step, self.totals = 0, 0, self._totals()
        if resume:
            self._load()
        else:
            self._start_folder()

    def _autocast(self):
        return autocast(self.config.amp, self.device, cache=self.graphed is None)

    def _totals(self, saved: dict | None = None) -> Totals:
        return Totals(saved, across_processes=self.world.distributed)  # sums of the global batch

    # -- the run
    def run(self) -> SearchResult:
        start = time.perf_counter()
        for epoch in range(self.epoch, self.config.epochs):
            self.architect.beta_weight = beta_decay_weight(self.config.beta_decay, epoch, self.config.epochs)
            self.model.set_temperature(self.config.temperature(epoch))  # used only when sampling
            self._train_epoch(epoch)
            val_loss, val_acc = self.evaluate()
            self._end_epoch(epoch, val_loss, val_acc)
        return self._finish(time.perf_counter() - start)

    def _train_epoch(self, epoch: int) -> None:
        steps = self.steps_per_epoch()
        for sampler, _ in (self.fit_batches, self.val_batches):
            sampler.set_epoch(epoch, self.step)
        # one iterator per split for the whole epoch (never a fresh iter() per step)
        fit_iter, val_iter = iter(self.fit_batches[1]), iter(self.val_batches[1])
        bar = tqdm(total=steps, initial=self.step, desc=f"search {epoch + 1}/{self.config.epochs}",
                   disable=not self.progress, leave=False)
        search_alpha = epoch >= self.config.warmup_epochs
        evidence = self.architect.evidence
        if self.step == 0 and evidence is not None and starts_window(epoch, self.config.warmup_epochs,
                                                                     self.config.epochs, steps):
            evidence.reset()
        t = self.totals  # losses and hits stay on the device; read every LOG_EVERY steps, not every step
        while self.step < steps:
            train_batch, val_batch = self._to_device(next(fit_iter)), self._to_device(next(val_iter))
            n = len(train_batch[1])
            loss, correct, val_loss = self._search_step(train_batch, val_batch, search_alpha)
            if val_loss is not None:  # None: α is frozen, or an fp16 overflow skipped the step like the weights' own
                t.add("alpha_loss", val_loss * n)  # summed only to see that it stays finite
            t.add("loss", loss * n)
            t.add("correct", correct)
            t.add("seen", n)
            self.step += 1
            bar.update(1)
            checkpoint = self.step % self.config.checkpoint_every == 0 and self.step < steps
            if checkpoint or self.step % LOG_EVERY == 0 or self.step == steps:
                self._check_finite(epoch)  # before a checkpoint: a diverged run never overwrites the last good one
                bar.set_postfix(loss=f"{t.mean('loss'):.3f}", acc=f"{t.mean('correct'):.3f}")
            if checkpoint:
                self._save()
        bar.close()

    def _search_step(self, train_batch: Batch, val_batch: Batch, search_alpha: bool) -> tuple[torch.Tensor, ...]:
        """An α step (unless α is frozen) then a weight step: (loss, hits, α's validation loss or None).

        With CUDA graphs the step is replayed from a recording; what the recording bakes in is its key.
        """
        lr = self.scheduler.get_last_lr()[0]

        def step(train_batch: Batch, val_batch: Batch) -> tuple[torch.Tensor | None, ...]:
            val_loss = self.architect.step(train_batch, val_batch, xi=lr) if search_alpha else None
            return (*self._weight_step(train_batch), val_loss)

        if self.graphed is None:
            return step(train_batch, val_batch)
        key = (search_alpha, lr, self.architect.beta_weight)  # lr: the weights' (SGD's) and ξ, the same number
        try:
            return self.graphed(step, train_batch, val_batch, key, warm_key=search_alpha)  # α's first step makes its state
        except GraphRecordingError as err:
            # the step is recorded again every epoch: a recording that fails once must not end a long search.
            # A failed recording ran nothing (the recorded kernels never launched), so the step is taken eagerly.
            tqdm.write(f"warning: recording the search step as a CUDA graph failed ({err.reason}); the search goes "
                       "on with every step taken eagerly (--no-cuda-graphs skips recording)", file=sys.stderr)
            self.graphed = None
            return step(train_batch, val_batch)

    def _weight_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of the weights; (loss, hits) as tensors on the device."""
        x, y = batch
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.ddp(x)
        loss = F.cross_entropy(full_precision(logits), y)  # in float32 at least, as in training
        if self.graphed is not None:
            # no backward(): its AccumulateGrad nodes keep the stream they were made on, which a recording
            # must not wait on (pytorch/pytorch#137483); nor a gradient for α, which this step does not move
            params = self.model.weight_parameters()
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                p.grad = g
        else:
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        self.model.alpha.grad = None  # α moves only in the architect's step
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.config.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        return loss.detach(), (logits.argmax(1) == y).sum()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Loss and accuracy of the supernet on the α half, without augmentation."""
        self.recalibrate_batchnorm()
        broadcast_buffers(self.model)  # rank 0's BatchNorm statistics on every process
        self.model.eval()
        totals = self._totals()
        for x, y in map(self._to_device, self._eval_loader()):
            with self._autocast():
                logits = full_precision(self.model(x))
            totals.add("loss", F.cross_entropy(logits, y, reduction="sum"))
            totals.add("correct", (logits.argmax(1) == y).sum())
            totals.add("seen", len(y))
        self.model.train()
        return totals.mean("loss"), totals.mean("correct")

    def _check_finite(self, epoch: int) -> None:
        """Raise SearchDiverged if a weight or α step's loss since the last check was NaN or infinite."""
        t = self.totals.read()
        for key, which in (("loss", "training"), ("alpha_loss", "validation")):
            if not math.isfinite(t.get(key, 0.0)):
                where = self.out / CHECKPOINT
                kept = f"the last good checkpoint is {where}" if where.exists() else "no checkpoint was written yet"
                raise SearchDiverged(f"the {which} loss became {t[key]} in epoch {epoch + 1} by step {self.step}; "
                                     f"stopped, {kept}. Try a lower --lr or a smaller --grad-clip.")

    def _end_epoch(self, epoch: int, val_loss: float, val_acc: float) -> None:
        t = self.totals
        row = {"epoch": epoch + 1, "lr": round(self.scheduler.get_last_lr()[0], 8),
               "train_loss": round(t.mean("loss"), 6), "train_acc": round(t.mean("correct"), 6),
               "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6),
               "genotype": self.model.genotype().to_json(indent=None), "arch_lr": self.arch_lr}
        if self.config.sampling != "none":
            row["tau"] = round(self.config.temperature(epoch), 6)
        if self.config.track_hessian:
            row["hessian_eigenvalue"] = round(dominant_eigenvalue(self.model, self._hessian_batches()), 6)
        row.update(verdict_columns(self.verdict(), len(self.model.alpha)))
        row.update(alpha_summary(self.model))
        if self.world.main:
            append_csv(self.out / "history.csv", row)
        self.scheduler.step()
        self.epoch, self.step, self.totals = epoch + 1, 0, self._totals()
        self._write_genotypes()
        self._save()

    def verdict(self) -> Verdict:
        return judge(self.model.alpha, self.config.decided_margin, self.architect.evidence)

    def _finish(self, seconds: float) -> SearchResult:
        if self.config.select != "argmax":
            self.recalibrate_batchnorm()  # perturbation scores the supernet on running statistics
        genotypes = broadcast_object(self._select())  # rank 0's choice, should float rounding differ
        self._write_genotypes(genotypes)
        verdict = self.verdict()
        val_acc = float("nan")
        if self.world.main:
            verdict.write(self.out)
            plot_alpha_heatmap(self.model.alpha, self.out / "alpha_heatmap.png", self.model.stage_widths)
            rows = read_csv(self.out / "history.csv")
            plot_alpha_evolution(rows, self.out / "alpha_evolution.png")
            if self.config.track_hessian:
                plot_hessian(rows, self.out / "hessian.png")
            val_acc = float(rows[-1]["val_acc"]) if rows else float("nan")
        val_acc = broadcast_object(val_acc)
        return SearchResult(main_genotype(self.model, genotypes), genotypes, self.model.stage_widths, self.out,
                            val_acc, seconds, verdict, self.arch_lr, probabilities(self.model.alpha))

    def _select(self) -> list[Genotype]:
        """One genotype per α group: α's argmax (DARTS), or the perturbation choice (DARTS-PT)."""
        if self.config.select == "argmax":
            return self.model.genotypes()
        selection = perturbation_select(self.model, self._selection_batches(), seed=self.config.seed)
        if self.world.main:
            (self.out / "perturbation.json").write_text(json.dumps(selection.to_dict(), indent=2) + "\n")
        return selection.genotypes



def probabilities(alpha: torch.Tensor) -> list:
    return torch.softmax(alpha.detach().double(), -1).tolist()


def run_search(config: SearchConfig, resume: bool = False, progress: bool = True) -> SearchResult:
    """Run (or resume) a search and return its result."""
    return Search(config, resume=resume, progress=progress).run()


__all__ = ["CHECKPOINT", "Search", "SearchDiverged", "SearchResult", "probabilities", "run_search"]
