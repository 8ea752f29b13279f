"""A search's run folder: config.json, history.csv, the genotype files and the checkpoint, written and read back.

`RunFolder` is the part of `sase.search.loop.Search` that starts a folder, saves the whole state of a
run atomically and restores it on resume (see that module's doc for what a resume guarantees). It
holds no state of its own: everything it reads is the search's.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict

from ..genotype import Genotype
from ..utils.checkpoint import rng_state, save_atomic, set_rng_state
from ..utils.csvlog import read_csv, truncate_csv
from ..utils.distributed import barrier
from ..utils.folders import make_out
from .supernet import main_genotype

CHECKPOINT = "checkpoint.pt"


class RunFolder:
    """Folder and checkpoint methods of a search (mixed into `Search`, whose attributes they use)."""

    def _start_folder(self) -> None:
        if (self.out / CHECKPOINT).exists():
            raise FileExistsError(f"{self.out} already holds a search; resume it with --resume or pick another --out")
        barrier()  # every process has looked before rank 0 writes
        if self.world.main:
            make_out(self.out)
            (self.out / "history.csv").unlink(missing_ok=True)
            self._write_config()

    def _write_config(self) -> None:
        """config.json: on resume too, so that it names this folder and the epochs the run now has."""
        (self.out / "config.json").write_text(self.config.to_json() + "\n")

    def _save(self) -> None:
        totals = dict(self.totals.read())  # on every process: the read sums over them
        if not self.world.main:  # rank 0's BatchNorm statistics are the run's: it saves its own
            return
        save_atomic({
            "config": asdict(self.config), "epoch": self.epoch, "step": self.step,
            "totals": totals, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "architect": self.architect.state_dict(), "rng": rng_state(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "history_rows": self._history_rows(),
        }, self.out / CHECKPOINT)

    def _write_genotypes(self, genotypes: list[Genotype] | None = None) -> None:
        """genotype.json (and genotypes_per_stage.json with one α per stage): α's argmax unless given."""
        if not self.world.main:
            return
        genotypes = self.model.genotypes() if genotypes is None else genotypes
        main_genotype(self.model, genotypes).to_json(self.out / "genotype.json")
        if self.config.per_stage:
            per_stage = {str(w): g.to_dict() for w, g in zip(self.model.stage_widths, genotypes)}
            (self.out / "genotypes_per_stage.json").write_text(json.dumps(per_stage, indent=2) + "\n")

    def _history_rows(self) -> int:
        return len(read_csv(self.out / "history.csv"))

    def _load(self) -> None:
        state = self.config.resume_state(CHECKPOINT)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._stretch_schedule()
        self.architect.load_state_dict(state["architect"])
        self.arch_lr = self.architect.optimizer.param_groups[0]["lr"]  # the run's own, whatever its epochs now
        set_rng_state(state["rng"])
        self.epoch, self.step, self.totals = state["epoch"], state["step"], self._totals(state["totals"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.world.main:
            truncate_csv(self.out / "history.csv", state["history_rows"])
            self._write_config()

    def _stretch_schedule(self) -> None:
        """After a resume with more epochs: the weights' cosine over the new total, from the epoch the run is at."""
        s = self.scheduler
        if s.T_max == self.config.epochs:
            return
        s.T_max = self.config.epochs
        # CosineAnnealingLR steps recursively from the current lr: put that lr on the new curve and the rest follows
        for group, base in zip(self.optimizer.param_groups, s.base_lrs):
            group["lr"] = s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * s.last_epoch / s.T_max)) / 2
        s._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # what get_last_lr() reports
