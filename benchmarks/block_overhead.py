"""Forward time and peak memory of ResNet-50 with each attention, as multiples of plain ResNet-50.

Run by hand (not in CI):

    python benchmarks/block_overhead.py            # batch 8, 224x224, 2 threads -> docs/block_overhead.md

Times are medians of interleaved repetitions (every model once per round), so a slow moment of the
machine hits every model alike; each ratio is against plain ResNet-50 measured in the same run.
Peak memory is the rise of the resident set during the first forward (activations), measured in
a fresh process per model.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from report import write_report

from sase import create_model
from sase.attention import ATTENTIONS


def build(attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet50", attention=attention).eval()


def peak_memory_mb(attention: str, batch: int, size: int, threads: int) -> float:
    """Rise of the resident set over the first forward, in a fresh process (MiB)."""
    code = (
        "import sys, torch; sys.path.insert(0, %r); from block_overhead import build\n"
        "from memory import peak_rise_mib\n"
        "torch.set_num_threads(%d); m = build(%r); x = torch.randn(%d, 3, %d, %d)\n"
        "with torch.inference_mode():\n"
        "    print(peak_rise_mib(lambda: m(x)))\n"
    ) % (str(Path(__file__).parent), threads, attention, batch, size, size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def forward_times(attentions: list[str], batch: int, size: int, rounds: int) -> dict[str, float]:
    """Median seconds per forward for each attention, measured round-robin."""
    models = {a: build(a) for a in attentions}
    x = torch.randn(batch, 3, size, size)
    samples: dict[str, list[float]] = {a: [] for a in attentions}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(rounds):
            for a, m in models.items():
                start = time.perf_counter()
                m(x)
                samples[a].append(time.perf_counter() - start)
    return {a: statistics.median(s) for a, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "docs" / "block_overhead.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    attentions = list(ATTENTIONS)  # "none" first: the baseline
    times = forward_times(attentions, args.batch_size, args.image_size, args.rounds)
    memory = {a: peak_memory_mb(a, args.batch_size, args.image_size, args.threads) for a in attentions}
    params = {a: sum(p.numel() for p in build(a).parameters()) for a in attentions}

    base_t, base_m = times["none"], memory["none"]
    rows = [
        f"| {a} | {params[a] / 1e6:.2f} | {1000 * times[a]:.0f} | {times[a] / base_t:.2f}x | "
        f"{memory[a]:.0f} | {memory[a] / base_m:.2f}x |"
        for a in attentions
    ]
    table = "\n".join([
        "| attention | params (M) | forward (ms) | time vs plain | peak memory (MiB) | memory vs plain |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ])
    setup = (f"ResNet-50, batch {args.batch_size}, {args.image_size}x{args.image_size}, eval, inference mode, "
             f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"median of {args.rounds} interleaved rounds")
    print(setup)
    print(table)
    print(json.dumps({"sase_time_ratio": round(times["sase"] / base_t, 3)}))
    write_report(args.out, f"# Attention block overhead\n\n{setup}. Produced by `python benchmarks/block_overhead.py`.\n\n"
                   f"{table}\n")


if __name__ == "__main__":
    main()
