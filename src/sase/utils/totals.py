"""A run's running sums, kept on the device and read to the host only when asked.

Reading a tensor's value (`.item()`, `int()`, `float()`) makes the host wait for the device to finish
all the work queued so far; once per step, that leaves a GPU idle while the host queues the next step.
The loops add each step's loss and hits as tensors and read the sums once per log interval.
"""
from __future__ import annotations

import torch
from torch import Tensor

LOG_EVERY = 10  # steps between reads: the progress bar's figures and the check that the loss is finite


class Totals:
    """Named sums; tensors are added on their device, numbers on the host; `read` brings all to the host."""

    def __init__(self, saved: dict[str, float] | None = None) -> None:
        self.values: dict[str, float] = dict(saved or {})
        self._pending: dict[str, Tensor] = {}

    def add(self, name: str, value: Tensor | float) -> None:
        if isinstance(value, Tensor):
            value = value.detach().to(torch.float64)
            pending = self._pending.get(name)
            self._pending[name] = value if pending is None else pending + value
        else:
            self.values[name] = self.values.get(name, 0) + value

    def read(self) -> dict[str, float]:
        """Every sum as a host number (one wait for the device, when any tensor is pending)."""
        if self._pending:
            names = list(self._pending)
            for name, total in zip(names, torch.stack([self._pending[n] for n in names]).tolist()):
                self.values[name] = self.values.get(name, 0) + total
            self._pending.clear()
        return self.values

    def mean(self, name: str, over: str = "seen") -> float:
        values = self.read()
        return values.get(name, 0) / max(values.get(over, 0), 1)
