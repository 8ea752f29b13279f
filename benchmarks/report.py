"""Write a benchmark's generated table into its docs page, keeping the hand-written notes below it."""
from __future__ import annotations

from pathlib import Path

MARKER = "<!-- notes: kept when the benchmark is run again -->"


def write_report(path: str | Path, generated: str) -> None:
    """Replace the generated part of `path` with `generated`; everything from MARKER on stays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(MARKER):] if MARKER in old else MARKER + "\n"
    path.write_text(generated.rstrip() + "\n\n" + notes)
