"""`sase bench`: what each attention module costs on a backbone, as a ratio to the plain backbone.

    sase bench                                                 # ResNet-50, 224x224, the whole zoo and paper
    sase bench --model resnet20 --image-size 32 --attentions none,se,eca,paper
    sase bench --batch-size 8 --image-size 112 --rounds 5 --no-compile --threads 2

Measures parameters, FLOPs, the eval forward of one batch (eager and under torch.compile), one training
step and the peak memory of a forward and of a training step, on the GPU when there is one (else the CPU;
the table says which). Times come from interleaved rounds (every model once per round); each ratio to the
plain backbone is formed within a round, and the table gives its median and interquartile range.
Writes OUT/bench.md (the table, with the machine and the exact command), bench.csv, bench.png and
config.json. Compiling takes minutes per model on a CPU: --no-compile skips it.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import fields

from ..export.bench import DEFAULT_ATTENTIONS, BenchConfig, run_bench
from ..export.bench_report import markdown_table, setup_text, write_report
from ..utils.folders import check_out
from .args import device, positive_int
from .commands import HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help=HELP["bench"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="backbone, a sase model name (default: resnet50)")
    p.add_argument("--attentions", default=DEFAULT_ATTENTIONS,
                   help="comma-separated zoo names, presets, genotype JSON paths or LABEL=NAME_OR_PATH; none (the "
                        f"plain backbone) is added when missing (default: {DEFAULT_ATTENTIONS})")
    p.add_argument("--batch-size", type=positive_int, help="images per batch (default: 64 on a GPU, 8 on the CPU)")
    p.add_argument("--image-size", type=positive_int, default=224, help="input side (default: 224)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds (default: 5)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile forward")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    p.add_argument("--compile-train", action="store_true", help="also time the training step under torch.compile "
                   "(its forward and backward; minutes per model to compile on a CPU)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measures")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--out", default="runs/bench", help="folder for the report (default: runs/bench)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(command="bench")


def command_line(config: BenchConfig) -> str:
    """The command that measures `config` again, every setting that differs from the default written out."""
    words = ["sase", "bench"]
    default = BenchConfig()
    for f in fields(config):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        words += [f"--no-{f.name}"] if value is False else [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    config = BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})
    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    result = run_bench(config, progress=say)
    command = command_line(config)
    paths = write_report(result, command)
    print(setup_text(result, command))
    print()
    print(markdown_table(result))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
