"""A run's running sums, kept on the device and read to the host only when asked.

Reading a tensor's value (`.item()`, `int()`, `float()`) makes the host wait for the device to finish
all the work queued so far; once per step, that leaves a GPU idle while the host queues the next step.
The loops add each step's loss and hits as tensors and read the sums once per log interval.

Under torchrun, `Totals(across_processes=True)` sums over every process at each read: every process
must then read at the same points (the loops do: they take the same steps).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .distributed import sum_

LOG_EVERY = 10  # steps between reads: the progress bar's figures and the check that the loss is finite


class Totals:
    """Named sums; tensors are added on their device, numbers on the host; `read` brings all to the host."""

    def __init__(self, saved: dict[str, float] | None = None, across_processes: bool = False) -> None:
        self.values: dict[str, float] = dict(saved or {})
        self.across = across_processes
        self._pending: dict[str, Tensor] = {}
        self._host: dict[str, float] = {}  # numbers added since the last read (summed over processes when read)

    def add(self, name: str, value: Tensor | float) -> None:
        if isinstance(value, Tensor):
            # a copy: the value may be a CUDA graph's output, which the next replay overwrites
            value = value.detach().to(torch.float64, copy=True)
            pending = self._pending.get(name)
            self._pending[name] = value if pending is None else pending + value
        elif self.across:
            self._host[name] = self._host.get(name, 0) + value
        else:
            self.values[name] = self.values.get(name, 0) + value

    def read(self) -> dict[str, float]:
        """Every sum as a host number (one wait for the device, when any tensor is pending)."""
        names = list(self._pending) + list(self._host)
        if self.across or self._pending:
            device = next(iter(self._pending.values())).device if self._pending else torch.device("cpu")
            host = torch.tensor(list(self._host.values()), dtype=torch.float64, device=device)
            parts = [torch.stack(list(self._pending.values())) if self._pending else host[:0], host]
            totals = torch.cat(parts)
            if self.across:
                sum_(totals)  # one all-reduce per read, the same on every process
            for name, total in zip(names, totals.tolist()):
                self.values[name] = self.values.get(name, 0) + total
            self._pending.clear()
            self._host.clear()
        return self.values

    def mean(self, name: str, over: str = "seen") -> float:
        values = self.read()
        return values.get(name, 0) / max(values.get(over, 0), 1)
