"""Peak resident memory of a piece of work, in MiB, from the kernel's high-water mark.

ru_maxrss is useless in a child process here (Linux carries the parent's high-water mark over
fork), so the mark is reset through /proc/self/clear_refs and read from /proc/self/status.
"""
from __future__ import annotations

from typing import Callable


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rise_mib(work: Callable[[], object]) -> float:
    """How far the resident set rose above its level before `work` while `work` ran."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    base = _status_kib("VmRSS")
    work()
    return (_status_kib("VmHWM") - base) / 1024
