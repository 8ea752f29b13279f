"""The search step, the training step and inference on a CUDA GPU, against the CPU of the same machine.

Run by hand on a machine with a GPU (not in CI):

    python benchmarks/gpu.py --out docs/gpu.md

Four tables, every figure a median of interleaved rounds timed with CUDA events (CPU: wall clock):
1. the search step of the CIFAR ResNet-20 supernet (batch 64, 3x32x32), in float32 and bf16, in
   plain-SGD-step units (plain ResNet-20 on the same device) and against the same step on all the CPU's
   cores: the GPU's speed-up for `sase search`;
2. one SGD step (forward, backward, update) of ResNet-50 (batch 64, 224x224) and ResNet-20 (batch 128,
   32x32) with each attention module, as a ratio to the plain backbone, float32 and bf16 autocast;
3. inference of ResNet-50 (batch 64, 224x224), time and peak GPU memory as ratios to plain;
4. (with --end-to-end) `sase search` and `sase train` as a user runs them, on the GPU and on the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from search_step import GRAPH, GUMBEL, make_step  # noqa: E402

from sase import create_model  # noqa: E402
from sase.export.memory import cuda_peak_mib  # noqa: E402

ATTENTIONS = ["none", "se", "eca", "cbam", "sase"]
AMP = {"fp32": None, "bf16": torch.bfloat16}


def timed(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each fn, `inner` calls per sample, the fns interleaved round by round."""
    for fn in fns.values():  # warm-up: cudnn's autotuning, the caching allocator, lazy initialisation
        fn(), fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                torch.cuda.synchronize()
                samples[k].append(start.elapsed_time(end) / 1000 / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def autocast(device: torch.device, amp: str, cache: bool = True) -> contextlib.AbstractContextManager:
    dtype = AMP[amp]  # cache=False around a CUDA graph recording: cached casts would outlive it
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def with_autocast(step: Callable[[], None], device: torch.device, amp: str, cache: bool = True) -> Callable[[], None]:
    def run() -> None:
        with autocast(device, amp, cache):
            step()
    return run


def search_steps(device: torch.device, batch: int, rounds: int, kinds: list[str], amp: str = "fp32") -> dict[str, float]:
    steps = {k: with_autocast(make_step(k, batch, device), device, amp, cache=not k.endswith(GRAPH)) for k in kinds}
    return timed(steps, device, rounds, inner=1 if device.type == "cpu" else 3)


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, amp):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()
    return step


def train_steps(model_name: str, batch: int, size: int, classes: int, device: torch.device, amp: str,
                rounds: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    fns = {}
    for a in ATTENTIONS:
        torch.manual_seed(0)
        fns[a] = train_step(create_model(model_name, attention=a, num_classes=classes).to(device), x, y, amp)
    return timed(fns, device, rounds, inner=3), peak_rise(fns, device)


def peak_rise(fns: dict[str, Callable[[], None]], device: torch.device) -> dict[str, float]:
    """MiB: the rise of allocated GPU memory over one call of each fn (activations, and in training the gradients;
    weights and optimiser state exist before it)."""
    memory = {k: float("nan") for k in fns}
    for k, fn in fns.items() if device.type == "cuda" else ():
        gc.collect()  # what the timing left behind is freed before the baseline is read
        torch.cuda.empty_cache()
        memory[k] = cuda_peak_mib(fn, device)
    return memory


def inference(device: torch.device, batch: int, size: int, amp: str, rounds: int) -> tuple[dict, dict]:
    x = torch.randn(batch, 3, size, size, device=device)
    models = {}
    for a in ATTENTIONS:
        torch.manual_seed(0)
        models[a] = create_model("resnet50", attention=a).to(device).eval()

    def forward(m: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), autocast(device, amp):
                m(x)
        return run

    fns = {a: forward(m) for a, m in models.items()}
    return timed(fns, device, rounds, inner=3), peak_rise(fns, device)


def search_memory(device: torch.device, batch: int, kinds: list[str]) -> dict[str, float]:
    """Peak GPU memory (MiB) of four steps of each kind (a CUDA graph is recorded at the third), model and optimiser
    state included."""
    peaks = {k: float("nan") for k in kinds}
    for k in kinds if device.type == "cuda" else ():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step = make_step(k, batch, device)
        for _ in range(4):
            step()
        torch.cuda.synchronize()
        peaks[k] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        del step
    return peaks


def end_to_end(args: list[str], timeout: int) -> float | None:
    """Wall-clock seconds of one `python -m sase ...` run (None if it failed or ran out of time)."""
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "sase", *args], check=True, timeout=timeout, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        print(f"  {' '.join(args[:1])} failed: {err}", flush=True)
        return None
    return time.perf_counter() - start


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-rounds", type=int, default=3, help="0: no CPU column")
    parser.add_argument("--search-batch", type=int, default=64)
    parser.add_argument("--r50-batch", type=int, default=64)
    parser.add_argument("--r50-size", type=int, default=224)
    parser.add_argument("--end-to-end", action="store_true", help="also time `sase search` / `sase train` runs")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="search step in float32 only")
    parser.add_argument("--sections", default="search,train,inference",
                        help="comma-separated: search, train, inference (the tables to measure)")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself, on tiny settings")
    parser.add_argument("--out", default="gpu.md")
    parser.add_argument("--json", default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    gpu, cpu = torch.device(args.device), torch.device("cpu")
    torch.backends.cudnn.benchmark = True
    threads = torch.get_num_threads()
    results: dict = {"gpu": torch.cuda.get_device_name() if gpu.type == "cuda" else "no GPU (dry run)", "torch": torch.__version__, "cpu_threads": threads}
    sections: dict[str, str] = {}  # title -> text, rewritten as rows come in

    def setup() -> str:
        return (f"{results['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}, cudnn.benchmark on; CPU "
                f"{platform.processor() or platform.machine()} with {threads} threads. Medians of {args.rounds} "
                f"interleaved rounds on the GPU ({args.cpu_rounds} on the CPU). Produced by "
                f"`python benchmarks/gpu.py{' --end-to-end' if args.end_to_end else ''}`.")

    def save() -> None:  # after every section: a run cut short keeps what it measured
        Path(args.out).write_text("# On a GPU\n\n" + setup() + "\n\n" + "\n\n".join(f"## {t}\n\n{x}" for t, x in sections.items()) + "\n")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    sections_wanted = set(args.sections.split(","))
    # 1. search step, eager and replayed from a CUDA graph (as `sase search` runs on one GPU)
    kinds = ["plain", "1", "2", "exact", "1" + GUMBEL]  # a sampled step is never graphed (it reads its draws back)
    graphed = [k + GRAPH for k in kinds if not k.endswith(GUMBEL)] if gpu.type == "cuda" else []
    if "search" in sections_wanted:
        g32 = search_steps(gpu, args.search_batch, args.rounds, kinds + graphed)
        print("search step gpu fp32", g32, flush=True)
        nan = {k: float("nan") for k in kinds + graphed}
        g16 = search_steps(gpu, args.search_batch, args.rounds, kinds + graphed, amp="bf16") if args.bf16 else nan
        mem = search_memory(gpu, args.search_batch, kinds + graphed)
        print("search step gpu bf16", g16, "memory", mem, flush=True)
        c32 = search_steps(cpu, args.search_batch, args.cpu_rounds, ["plain", "1", "2", "1" + GUMBEL]) \
            if args.cpu_rounds else {}
        print("search step cpu", c32, flush=True)
        results["search_step"] = {"gpu_fp32": g32, "gpu_bf16": g16, "gpu_peak_mib": mem, "cpu_fp32": c32}
        save()
        names = {"plain": "plain ResNet-20 SGD step (the unit)", "1": "first order", "2": "second order",
                 "exact": "exact second order", "1" + GUMBEL: "first order, one candidate per edge (--sampling gumbel)"}
        names.update({k + GRAPH: names[k].replace(" (the unit)", "") + ", CUDA graph" for k in kinds})
        rows = [[names[k], f"{1000 * g32[k]:.1f}", f"{g32[k] / g32['plain']:.2f}", f"{1000 * g16[k]:.1f}",
                 f"{g16[k] / g16['plain']:.2f}", f"{mem[k]:.0f}",
                 f"{1000 * c32[k]:.0f}" if k in c32 else "-", f"{c32[k] / g32[k]:.1f}x" if k in c32 else "-"]
                for k in kinds + graphed]
        sections["Search step"] = (f"CIFAR ResNet-20 supernet, batch {args.search_batch}, 3x32x32; an α step and "
                        "a weight step, as the search loop takes them; eagerly, and replayed from a CUDA graph as "
                        "`sase search` does on one GPU.\n\n" + table(
                            ["step", "GPU fp32 ms", "units", "GPU bf16 ms", "units", "GPU peak MiB",
                             f"CPU ({threads} threads) ms", "GPU speed-up"], rows))
        save()

    # 2. training step with each attention
    rows = []
    results["train_step"] = {}
    for name, batch, size, classes in (("resnet50", args.r50_batch, args.r50_size, 1000), ("resnet20", 128, 32, 10)) \
            if "train" in sections_wanted else ():
        for amp in AMP:
            t, m = train_steps(name, batch, size, classes, gpu, amp, args.rounds)
            results["train_step"][f"{name}_{amp}"] = {"seconds": t, "peak_mib": m}
            print("train step", name, amp, t, m, flush=True)
            rows.append([f"{name}, batch {batch}, {size}x{size}, {amp}", f"{1000 * t['none']:.1f}", f"{m['none']:.0f}"]
                        + [f"{t[a] / t['none']:.2f} / {m[a] / m['none']:.2f}" for a in ATTENTIONS[1:]])
            sections["Training step"] = ("One SGD step (forward, backward, update) with each attention module; each "
                    "cell is time / peak memory as ratios to the plain backbone measured in the same rounds (memory: "
                    "the rise of allocated GPU memory over the step).\n\n"
                    + table(["backbone", "plain ms", "plain MiB", *ATTENTIONS[1:]], rows))
            save()

    # 3. inference
    rows = []
    results["inference"] = {}
    for amp in AMP if "inference" in sections_wanted else ():
        t, m = inference(gpu, args.r50_batch, args.r50_size, amp, args.rounds)
        results["inference"][amp] = {"seconds": t, "peak_mib": m}
        print("inference", amp, t, m, flush=True)
        rows.append([f"ResNet-50, batch {args.r50_batch}, {amp}", f"{1000 * t['none']:.1f}"]
                    + [f"{t[a] / t['none']:.2f} / {m[a] / m['none']:.2f}" for a in ATTENTIONS[1:]])
        sections["Inference"] = ("One forward under `torch.inference_mode`; each cell is time / peak memory as "
                    "ratios to plain ResNet-50 (memory: the rise of allocated GPU memory over the forward).\n\n"
                                 + table(["model", "plain ms", *[f"{a}" for a in ATTENTIONS[1:]]], rows))
        save()

    # 4. end to end
    if args.end_to_end:
        runs = {  # label: (arguments, on the CPU too)
            "sase search (defaults: digits, ResNet-20 supernet, 4 epochs, second order)": (["search"], False),
            "sase search --epochs 1": (["search", "--epochs", "1"], True),
            "sase train --attention sase --epochs 1": (["train", "--attention", "sase", "--epochs", "1"], True),
        }
        rows, results["end_to_end"] = [], {}
        work = Path(tempfile.mkdtemp(prefix="sase-bench-"))
        for i, (label, (cli, cpu_too)) in enumerate(runs.items()):
            on_gpu = end_to_end([*cli, "--quiet", "--device", "cuda", "--out", str(work / f"gpu-{i}")], timeout=150)
            on_cpu = end_to_end([*cli, "--quiet", "--device", "cpu", "--out", str(work / f"cpu-{i}")], timeout=120) \
                if cpu_too else None
            results["end_to_end"][label] = {"gpu_s": on_gpu, "cpu_s": on_cpu}
            print("end to end", label, on_gpu, on_cpu, flush=True)
            fmt = lambda s: "-" if s is None else f"{s:.0f}"
            rows.append([label, fmt(on_gpu), fmt(on_cpu),
                         f"{on_cpu / on_gpu:.1f}x" if on_cpu and on_gpu else "-"])
            sections["End to end"] = (f"Wall-clock seconds of the command, start-up included; CPU: {threads} "
                            "threads.\n\n" + table(["command", "GPU s", "CPU s", "speed-up"], rows))
            save()

    save()
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
