"""What `sase bench` writes: the markdown table (bench.md), every figure as CSV (bench.csv), the ratios as a
chart (bench.png) and the settings (config.json)."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any, Optional

import torch

from ..train.plots import si
from ..utils.folders import make_out
from .bench import BenchResult, Measured, ratio_stats

TIMED = {"eager": "forward, eager", "compiled": "forward, compiled", "train": "train step",
         "compiled_train": "train step, compiled"}
MEMORY = ("forward", "train step")  # the two peaks of Measured.memory


def _ratio(stats: Optional[tuple[float, float, float]], plain: bool) -> str:
    if stats is None:
        return ""
    if plain:
        return " (plain)"
    median, q1, q3 = stats
    return f" ({median:.2f}x [{q1:.2f}, {q3:.2f}])" if q3 > q1 else f" ({median:.2f}x)"


def _ms(seconds: float) -> str:
    ms = 1000 * seconds
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


def summary(row: Measured, base: Measured, batch: int) -> dict[str, Any]:
    """Every figure of one row: medians, throughputs, ratios to `base` (median, q1, q3), peaks."""
    out: dict[str, Any] = {"attention": row.label, "spec": row.attention, "parameters": row.parameters,
                           "parameters_ratio": row.parameters / base.parameters, "flops": row.flops,
                           "flops_ratio": row.flops / base.flops}
    for key in TIMED:
        samples, plain = getattr(row, key), getattr(base, key)
        usable = bool(samples) and len(plain) == len(samples)
        median = statistics.median(samples) if samples else None
        out[f"{key}_ms"] = None if median is None else 1000 * median
        out[f"{key}_images_per_s"] = None if median is None else batch / median
        stats = ratio_stats(samples, plain) if usable else (None, None, None)
        out.update({f"{key}_ratio": stats[0], f"{key}_ratio_q1": stats[1], f"{key}_ratio_q3": stats[2]})
    out["compile_s"], out["compile_error"] = row.compile_seconds, row.compile_error
    out["compile_train_s"], out["compile_train_error"] = row.compile_train_seconds, row.compile_train_error
    for i, name in enumerate(("forward", "train")):
        peak = row.memory[i] if row.memory else None
        out[f"peak_mib_{name}"] = peak
        out[f"peak_mib_{name}_ratio"] = peak / base.memory[i] if peak is not None and base.memory else None
    return out


def _timed_cell(s: dict[str, Any], key: str, plain: bool) -> list[str]:
    if s[f"{key}_ms"] is None:
        return ["—", "—"]
    stats = None if s[f"{key}_ratio"] is None else (s[f"{key}_ratio"], s[f"{key}_ratio_q1"], s[f"{key}_ratio_q3"])
    return [_ms(s[f"{key}_ms"] / 1000) + _ratio(stats, plain), f"{s[f'{key}_images_per_s']:.3g}"]


def _compiled_cells(s: dict[str, Any], key: str, compile_key: str, plain: bool) -> list[str]:
    """Time and img/s of a compiled call, and its compile time; or why it failed to compile."""
    if s[f"{compile_key}_error"]:
        return [f"fails: {s[f'{compile_key}_error'].split(':')[0]}", "—", "—"]
    seconds = s[f"{compile_key}_s"]
    return [*_timed_cell(s, key, plain), "—" if seconds is None else f"{seconds:.0f} s"]


def markdown_table(result: BenchResult) -> str:
    rows = result.rows
    summaries = [summary(r, rows[0], result.batch_size) for r in rows]
    compiled_train = result.config.compile_train
    header = ["attention", "params", "FLOPs", "forward, eager", "img/s", "forward, compiled", "img/s", "compile",
              "train step", "img/s", *(["train step, compiled", "img/s", "compile"] if compiled_train else []),
              "peak memory, forward", "peak memory, train step"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for i, s in enumerate(summaries):
        plain = i == 0
        cells = [s["attention"], f"{si(s['parameters'])}{_ratio((s['parameters_ratio'],) * 3, plain)}",
                 f"{si(s['flops'])}{_ratio((s['flops_ratio'],) * 3, plain)}", *_timed_cell(s, "eager", plain)]
        cells += _compiled_cells(s, "compiled", "compile", plain)
        cells += _timed_cell(s, "train", plain)
        if compiled_train:
            cells += _compiled_cells(s, "compiled_train", "compile_train", plain)
        for name in ("forward", "train"):
            peak = s[f"peak_mib_{name}"]
            ratio = s[f"peak_mib_{name}_ratio"]
            cells.append("—" if peak is None else f"{peak:.0f} MiB" + _ratio(None if ratio is None else (ratio,) * 3,
                                                                              plain))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setup_text(result: BenchResult, command: str) -> str:
    c = result.config
    compiled = f"`torch.compile(model, backend=\"{c.compile_backend}\")`, timed after its first call (the " \
               "compile column)" if c.compile else "not measured (`--no-compile`)"
    memory = ("the rise of `torch.cuda.max_memory_allocated` over one eval forward and over one training forward "
              "and backward" if result.on_gpu else "the rise of the resident set over one eval forward (inference "
              "mode) and over one training forward and backward, in a fresh process per model")
    return "\n".join([
        f"`{c.model}`, batch {result.batch_size}, {c.image_size}x{c.image_size}, float32, on {result.device}, "
        f"{result.threads} thread{'s' * (result.threads != 1)}, torch {torch.__version__}; median of {c.rounds} "
        f"interleaved round{'s' * (c.rounds != 1)}.",
        "",
        f"Produced by `{command}`.",
        "",
        "- Ratios are to the plain backbone (`none`) measured in the same run, formed round by round: median "
        "[interquartile range] over rounds. img/s is the batch over the median time.",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one image, which counts convolutions and matrix "
        "products at two FLOPs per multiply-add (MACs = FLOPs / 2); elementwise work (gates, statistics) is not "
        "counted.",
        "- Train step: forward, cross-entropy, backward and an SGD update with momentum, in training mode.",
        f"- Compiled forward: {compiled}.",
        *([f"- Compiled train step: the training step with `torch.compile(model, backend=\"{c.compile_backend}\")` "
           "as its model (forward and backward compiled; the SGD update eager), timed after its first step."]
          if c.compile_train else []),
        f"- Peak memory: {memory}." if c.memory else "- Peak memory: not measured (`--no-memory`).",
    ])


def write_csv(result: BenchResult, path: Path) -> None:
    summaries = [summary(r, result.rows[0], result.batch_size) for r in result.rows]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)


def plot(result: BenchResult, path: Path) -> None:
    """Horizontal bars: each measure as a ratio to the plain backbone, with its interquartile range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = [summary(r, result.rows[0], result.batch_size) for r in result.rows]
    measures = [("parameters", "params"), ("flops", "FLOPs"), *((k, v) for k, v in TIMED.items()),
                ("peak_mib_forward", "peak memory, forward"), ("peak_mib_train", "peak memory, train step")]
    measures = [(k, v) for k, v in measures if any(s[f"{k}_ratio"] is not None for s in summaries)]
    height = 0.8 / len(measures)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.15 * len(summaries) * len(measures)))
    for j, (key, name) in enumerate(measures):
        ys = [i + j * height for i in range(len(summaries))]
        values = [s[f"{key}_ratio"] or 0.0 for s in summaries]
        low = [v - (s.get(f"{key}_ratio_q1") or v) for v, s in zip(values, summaries)]
        high = [(s.get(f"{key}_ratio_q3") or v) - v for v, s in zip(values, summaries)]
        ax.barh(ys, values, height=height, xerr=[low, high], capsize=2, label=name)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(summaries))], [s["attention"] for s in summaries])
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the plain backbone (median, interquartile range over rounds)")
    c = result.config
    ax.set_title(f"{c.model}, batch {result.batch_size}, {c.image_size}x{c.image_size}, {result.device}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: BenchResult, command: str) -> dict[str, Path]:
    """bench.md, bench.csv, bench.png and config.json in the config's `out`; their paths."""
    out = make_out(result.config.out)
    paths = {name: out / f"bench.{name}" for name in ("md", "csv", "png")}
    paths["md"].write_text(f"# Attention cost on {result.config.model}\n\n{setup_text(result, command)}\n\n"
                           f"{markdown_table(result)}\n")
    write_csv(result, paths["csv"])
    plot(result, paths["png"])
    (out / "config.json").write_text(result.config.to_json() + "\n")
    return paths


__all__ = ["markdown_table", "summary", "write_report"]
