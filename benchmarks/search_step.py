"""Time and peak memory of one search step of the CIFAR ResNet-20 supernet, in plain-SGD-step units.

Run by hand (not in CI):

    python benchmarks/search_step.py          # batch 64, 3x32x32, 2 threads -> docs/search_step.md

A unit is one SGD step (forward, backward, update) of plain ResNet-20 without attention on the
same batch, measured in the same run, so the figures hold across machines. A search step is one α
step (first or second order) plus one weight step, as the search loop takes them. Times are
medians over interleaved rounds; peak memory is the rise of the resident set over the first two steps
(activations, gradients, optimiser state), in a fresh process per configuration. The last line reads
`first_order_units=X second_order_units=Y sampled_units=Z`.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from report import write_report

from sase import create_model
from sase.search import Architect, Supernet
from sase.search.graphs import GraphedStep

GRAPH = "+graph"  # a kind's suffix: the step replayed from a CUDA graph (sase.search.graphs)
GUMBEL = "+gumbel"  # a kind's suffix: one candidate per edge drawn by hard Gumbel-softmax (`--sampling gumbel`)


def make_step(kind: str, batch: int, device: str | torch.device = "cpu") -> Callable[[], None]:
    """One step of `kind` ('plain', '1', '2', 'exact', each with '+graph' for a CUDA graph replay; '1+gumbel')
    on fixed batches."""
    graphed = kind.endswith(GRAPH)
    kind = kind.removesuffix(GRAPH)
    sampling = "gumbel" if kind.endswith(GUMBEL) else "none"
    kind = kind.removesuffix(GUMBEL)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    make = lambda: (torch.randn(batch, 3, 32, 32, generator=g).to(device),
                    torch.randint(0, 10, (batch,), generator=g).to(device))
    train, val = make(), make()
    if kind == "plain":
        model = create_model("resnet20", num_classes=10).to(device)
        params = list(model.parameters())
    else:
        model = Supernet("resnet20", num_classes=10, sampling=sampling).to(device)
        params = model.weight_parameters()
    opt = torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=5e-4)
    architect = None if kind == "plain" else Architect(model, opt, order={"1": 1, "2": 2, "exact": "exact"}[kind],
                                                       capturable=graphed, track_evidence=sampling == "none")

    def step(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor]:
        if architect is not None:
            architect.step(train, val)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(train[0]), train[1])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return (loss.detach(),)

    if not graphed:
        return lambda: step(train, val)
    recorded = GraphedStep()  # as `sase search` runs on one GPU: recorded once, replayed every step
    return lambda: recorded(step, train, val, key=None)


def times(kinds: list[str], batch: int, rounds: int) -> dict[str, float]:
    steps = {k: make_step(k, batch) for k in kinds}
    for step in steps.values():
        step()  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k, step in steps.items():
            start = time.perf_counter()
            step()
            samples[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def peak_memory_mb(kind: str, batch: int, threads: int) -> float:
    """Rise of the resident set over the first two steps, in a fresh process (MiB)."""
    code = (
        "import sys, torch; sys.path.insert(0, %r); from search_step import make_step\n"
        "from memory import peak_rise_mib\n"
        "torch.set_num_threads(%d); step = make_step(%r, %d)\n"
        "print(peak_rise_mib(lambda: (step(), step())))\n"
    ) % (str(Path(__file__).parent), threads, kind, batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "docs" / "search_step.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    kinds = ["plain", "1", "2", "exact", "1" + GUMBEL]
    t = times(kinds, args.batch_size, args.rounds)
    print({k: f"{v / t['plain']:.2f} units" for k, v in t.items()})
    mem = {k: peak_memory_mb(k, args.batch_size, args.threads) for k in kinds}
    names = {"plain": "plain ResNet-20 SGD step (the unit)", "1": "search step, first order",
             "2": "search step, second order", "exact": "search step, exact second order",
             "1" + GUMBEL: "search step, first order, one candidate per edge (`--sampling gumbel`)"}
    rows = [f"| {names[k]} | {1000 * t[k]:.0f} | {t[k] / t['plain']:.2f} | {mem[k]:.0f} | {mem[k] / mem['plain']:.2f} |"
            for k in kinds]
    table = "\n".join(["| step | ms | units | peak memory rise (MiB) | memory vs plain |",
                       "|---|---:|---:|---:|---:|", *rows])
    setup = (f"CIFAR ResNet-20 supernet, batch {args.batch_size}, 3x32x32, {args.threads} threads, torch "
             f"{torch.__version__}, {platform.processor() or platform.machine()}, median of {args.rounds} "
             "interleaved rounds")
    last = (f"first_order_units={t['1'] / t['plain']:.2f} second_order_units={t['2'] / t['plain']:.2f} "
            f"sampled_units={t['1' + GUMBEL] / t['plain']:.2f}")
    print(setup)
    print(table)
    write_report(args.out, f"# Search step cost\n\n{setup}. Produced by `python benchmarks/search_step.py`.\n\n{table}\n\n"
                   f"`{last}`\n")
    print(last)


if __name__ == "__main__":
    main()
