"""CUDA graphs for the search step: the α step and the weight step recorded once, then replayed as one launch.

Why: one first-order step of the ResNet-20 supernet issues about 87,000 ATen calls (7 candidates on 6
edges in 9 blocks, forward and backward, for the α step and again for the weight step). On a GPU each
call's host-side dispatch costs far more than its kernel on maps this small, so the step is bound by
launching kernels, not by the GPU (docs/gpu.md). A CUDA graph records every kernel of the step once and
replays them all with one launch (PyTorch's whole-network capture, `torch.cuda.graph`).

What a replay needs, and how the search provides it:
- fixed shapes and addresses: each batch is copied into static input tensors; a batch of another
  shape (the last, short one) runs eagerly;
- no read-back to the host inside the step: the architect and the weight step take none (losses and
  hits stay on the device until the loop reads them);
- optimisers that keep their step count on the device: Adam with `capturable=True`, and `EdgeAdam`,
  whose count is always a tensor;
- Python numbers are baked into the recording: the weights' lr (also ξ of the second order), the
  Beta-Decay weight and whether α moves at all. `key` carries them, and the step is recorded again
  when it changes (once an epoch under the cosine schedule);
- optimiser state is created by eager steps, never while recording: a tensor made during a recording
  is made again by every replay (Adam's moments reset to zero at each step, say). A step that creates
  state (the first α step after a warm-up with α frozen) therefore runs eagerly first (`warm_key`).

A replay runs the same kernels on the same data as the eager step, so a search with graphs follows
the eager one up to float rounding (checked on a GPU in tests/test_cuda.py).
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch
from torch import Tensor

from .architect import Batch

Step = Callable[[Batch, Batch], tuple[Tensor | None, ...]]
WARMUP_STEPS = 2  # eager steps on a side stream before a recording: lazy state, cudnn's choice of kernels


class GraphRecordingError(RuntimeError):
    """Recording the step as a CUDA graph failed: an op that cannot be recorded, on this GPU or torch version."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"recording the search step as a CUDA graph failed ({reason}); run again with "
                         "--no-cuda-graphs to take every step eagerly")
        self.reason = reason  # the first line of torch's own error


class GraphedStep:
    """Runs `step(train_batch, val_batch)` eagerly for a few calls, then records it and replays the recording.

    `key` names everything the step bakes in besides the batches' contents (see the module's doc); a new
    key, or batches of a new shape, start a new recording. The outputs of a replay are the recording's
    own tensors, overwritten by the next replay: read or accumulate them before calling again.
    """

    def __init__(self, warmup: int = WARMUP_STEPS) -> None:
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: Hashable = None
        self.inputs: list[Tensor] = []
        self.outputs: tuple[Tensor | None, ...] = ()
        self.warm: dict[Hashable, int] = {}  # eager warm-up steps taken, per (warm_key, shapes of the batches)
        self.recordings = 0  # how many times a step was recorded (each costs about one eager step)
        self.side: torch.cuda.Stream | None = None  # the warm-up's stream, made on first use

    def __call__(self, step: Step, train_batch: Batch, val_batch: Batch, key: Hashable,
                 warm_key: Hashable = None) -> tuple[Tensor | None, ...]:
        """One step: eager while warming up, else a replay (recorded first when `key` or the shapes are new).

        `warm_key` names what decides which state the step creates (an optimiser's moments, say): under a
        new one the step runs eagerly first, since a tensor created while recording would be re-created
        by every replay. A new `key` with a known `warm_key` (another lr) is recorded at once.
        """
        batches = (*train_batch, *val_batch)
        shapes = tuple((t.shape, t.dtype, t.device) for t in batches)
        if (key, shapes) != self.key:
            self.graph, self.key = None, (key, shapes)
        warm = (warm_key, shapes)
        if self.graph is None and self.warm.get(warm, 0) < self.warmup:
            self.warm[warm] = self.warm.get(warm, 0) + 1
            return self._on_side_stream(step, train_batch, val_batch)
        if self.graph is None:
            self._record(step, batches)
        for static, t in zip(self.inputs, batches):
            static.copy_(t, non_blocking=True)
        self.graph.replay()
        return self.outputs

    def _on_side_stream(self, step: Step, train_batch: Batch, val_batch: Batch) -> tuple[Tensor | None, ...]:
        """An eager step on a side stream, as a recording's warm-up must run (torch.cuda.graph's documentation)."""
        self.side = self.side or torch.cuda.Stream()
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            out = step(train_batch, val_batch)
        torch.cuda.current_stream().wait_stream(self.side)
        return out

    def _record(self, step: Step, batches: tuple[Tensor, ...]) -> None:
        self.graph, self.outputs = None, ()  # the last recording's memory goes back before the next takes its own
        self.inputs = [t.clone() for t in batches]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                x, y, xv, yv = self.inputs
                self.outputs = step((x, y), (xv, yv))
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GraphRecordingError(first_line) from err
        self.graph = graph
        self.recordings += 1


def graphs_unavailable(device: torch.device, distributed: bool, amp: str | None,
                       sampling: str = "none") -> str | None:
    """Why the search step cannot be recorded as a CUDA graph here, or None when it can."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if sampling != "none":
        return "CUDA graphs are not used with --sampling (which candidate runs is read back each step)"
    if distributed:
        return "CUDA graphs are not used under torchrun (DistributedDataParallel's communication runs eagerly)"
    if amp == "fp16":
        return "CUDA graphs are not used with --amp fp16 (the gradient scaler reads the overflow check back each step)"
    return None


__all__ = ["GraphRecordingError", "GraphedStep", "WARMUP_STEPS", "graphs_unavailable"]
