"""Where a training run reports each epoch: a CSV, and TensorBoard when it is installed.

The CSV is the record (plots and `sase compare` read it); TensorBoard is a view of the same numbers.
A resumed run cuts both back to its checkpoint: CSV rows past it are dropped, and TensorBoard is
told to purge events from the first epoch that will be logged again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..utils.csvlog import append_csv, read_csv, truncate_csv


class EpochLog:
    """history.csv in `out`, mirrored to out/tensorboard/ when tensorboard can be imported."""

    def __init__(self, out: Path, resume_rows: Optional[int] = None) -> None:
        self.csv = out / "history.csv"
        if resume_rows is None:
            self.csv.unlink(missing_ok=True)
        else:
            truncate_csv(self.csv, resume_rows)
        self.writer = _summary_writer(out / "tensorboard", purge_step=None if resume_rows is None else resume_rows + 1)

    def rows(self) -> int:
        return len(read_csv(self.csv))

    def write(self, row: dict[str, Any]) -> None:
        append_csv(self.csv, row)
        if self.writer is not None:
            step = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(_tag(key), value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tag(key: str) -> str:
    """train_loss -> train/loss: TensorBoard groups its charts by the part before the slash."""
    head, _, tail = key.partition("_")
    return f"{head}/{tail}" if head in ("train", "val") else key


def _summary_writer(log_dir: Path, purge_step: Optional[int]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra: without it the CSV is the whole log
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)
