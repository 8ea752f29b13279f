"""Peak memory of one forward (inference) and one training forward and backward of a model, in MiB.

On a GPU: the rise of `torch.cuda.max_memory_allocated` over what was allocated before, in this process.
On the CPU: the rise of the resident set (the kernel's high-water mark, reset through /proc/self/clear_refs)
in a fresh process per model, since a process that has run other models keeps their freed memory and would
reuse it. Between the two measures the child hands freed memory back (glibc's malloc_trim), so the
training figure does not reuse the inference pass's pages either. Linux only on the CPU; None elsewhere.
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

CLEAR_REFS = Path("/proc/self/clear_refs")


def cuda_peaks(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(inference, training) peak MiB above the memory allocated before each pass, on x's CUDA device."""
    return cuda_peak_mib(_inference(model, x), x.device), cuda_peak_mib(_training(model, x, labels), x.device)


def cuda_peak_mib(work: Callable[[], object], device: torch.device) -> float:
    """The rise of allocated memory on a CUDA device over one call of work, in MiB."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    work()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def cpu_peaks(model: str, attention: str, batch: int, size: int, in_chans: int, num_classes: int,
              threads: int) -> Optional[tuple[float, float]]:
    """(inference, training) peak MiB of a freshly built model, each measured in a fresh child process."""
    if not CLEAR_REFS.exists():
        return None
    job = json.dumps([model, attention, batch, size, in_chans, num_classes, threads])
    done = subprocess.run([sys.executable, "-m", "sase.export.memory", job], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory of {model} + {attention}: the child process failed: {done.stderr.strip()[-500:]}")
    inference, training = json.loads(done.stdout.strip().splitlines()[-1])
    return inference, training


def _inference(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def work() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)
    return work


def _training(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    def work() -> None:
        model.train()
        F.cross_entropy(model(x), labels).backward()
    return work


def _status_kib(field: str) -> int:  # a field of /proc/self/status, in KiB
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rise_mib(work: Callable[[], object]) -> float:
    """How far the resident set rose above its level before `work` while `work` ran (Linux).

    ru_maxrss would not do in a child process (Linux carries the parent's high-water mark over fork): the
    mark is reset through /proc/self/clear_refs and read from /proc/self/status."""
    CLEAR_REFS.write_text("5")  # reset the high-water mark to the current resident set
    base = _status_kib("VmRSS")
    work()
    return (_status_kib("VmHWM") - base) / 1024


def _trim() -> None:
    """Give freed heap memory back to the system (glibc), so the next pass starts from fresh pages."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _child(job: str) -> None:
    from ..models import create_model

    model_name, attention, batch, size, in_chans, num_classes, threads = json.loads(job)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, attention=attention, num_classes=num_classes)
    x = torch.randn(batch, in_chans, size, size)
    labels = torch.randint(0, num_classes, (batch,))
    inference = peak_rise_mib(_inference(model, x))
    _trim()
    training = peak_rise_mib(_training(model, x, labels))
    print(json.dumps([inference, training]))


if __name__ == "__main__":
    _child(sys.argv[1])
