"""The cost of attention modules on a backbone, against the plain backbone measured in the same run.

For each attention: parameters, FLOPs of one image (`torch.utils.flop_counter`: convolutions and matrix
products, two FLOPs per multiply-add), the forward pass of one batch in eval mode (eager, and under
`torch.compile` where it compiles), one training step (forward, backward, SGD update) and the peak memory
of one forward and of one training forward and backward.

Times are taken in interleaved rounds: each round times every model once, in turn, so a slow moment of
the machine hits every model alike. A ratio to the plain backbone is formed within each round; the table
gives its median over rounds and its interquartile range (the spread).

    result = run_bench(BenchConfig(model="resnet20", attentions="none,se,paper", image_size=32))
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

import torch
import torch.nn.functional as F

from ..attention import ATTENTIONS
from ..models import MODELS, create_model
from ..train.compare import Entry, parse_entries
from ..train.metrics import count_flops, count_parameters
from ..train.recipe import resolve_device
from ..utils.config import Range, RunConfig, compile_backend_error, device_error
from .memory import cpu_peaks, cuda_peaks

# the whole zoo, the published genotype standing for `sase` (the same block)
DEFAULT_ATTENTIONS = ",".join(["paper" if a == "sase" else a for a in ATTENTIONS])


@dataclass(frozen=True)
class BenchConfig(RunConfig):
    """What `sase bench` measures, and how."""

    KIND: ClassVar[str] = "bench"
    EXTENDABLE: ClassVar[tuple[str, ...]] = ()
    RANGES: ClassVar[dict[str, Range]] = {
        "batch_size": Range(1), "image_size": Range(1), "rounds": Range(1), "threads": Range(1)}

    model: str = "resnet50"  # the backbone, a sase model name
    attentions: str = DEFAULT_ATTENTIONS  # comma-separated, as `sase compare --attentions`; none is added if missing
    batch_size: Optional[int] = None  # images per batch; None: 64 on a GPU, 8 on the CPU
    image_size: int = 224  # side of the square input
    rounds: int = 5  # interleaved rounds of timing
    compile: bool = True  # also time the forward under torch.compile
    compile_backend: str = "inductor"  # torch.compile's backend
    compile_train: bool = False  # also time the training step under torch.compile (minutes per model on a CPU)
    memory: bool = True  # measure peak memory (on the CPU: two fresh processes per attention)
    threads: Optional[int] = None  # CPU threads; None: torch's default
    device: str = "auto"  # auto (a GPU when there is one), cpu, cuda, cuda:N
    out: str = "runs/bench"  # folder of bench.md, bench.csv, bench.png and config.json

    def __post_init__(self) -> None:
        self.check()
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid choices: {', '.join(MODELS)}")
        error = device_error(self.device)
        if error:
            raise ValueError(error)
        error = compile_backend_error(self.compile_backend) if self.compile or self.compile_train else None
        if error:
            raise ValueError(error)


@dataclass
class Measured:
    """One attention's figures; times are seconds per call, one sample per round."""

    label: str
    attention: str
    parameters: int
    flops: int
    eager: list[float] = field(default_factory=list)
    compiled: list[float] = field(default_factory=list)
    compile_seconds: Optional[float] = None
    compile_error: Optional[str] = None  # why torch.compile failed, when it did
    train: list[float] = field(default_factory=list)
    compiled_train: list[float] = field(default_factory=list)
    compile_train_seconds: Optional[float] = None
    compile_train_error: Optional[str] = None
    memory: Optional[tuple[float, float]] = None  # peak MiB: (inference, training)


@dataclass
class BenchResult:
    config: BenchConfig
    device: str  # in words: the CPU's or GPU's name
    on_gpu: bool
    batch_size: int
    threads: int
    rows: list[Measured]  # the plain backbone first


def entries_with_baseline(text: str, out: str) -> list[Entry]:
    """The attentions to measure, the plain backbone (`none`) first, added when it is not among them."""
    entries = parse_entries(text, out=out)
    plain = [e for e in entries if e.attention.lower() == "none"]
    return plain[:1] + [e for e in entries if e not in plain[:1]] if plain else [Entry("none", "none"), *entries]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"CPU, {names[0] if names else platform.processor() or platform.machine()}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class Subject:
    """One model under test, with the calls the rounds time; built and run once (the warm-up)."""

    def __init__(self, entry: Entry, config: BenchConfig, x: torch.Tensor, generator: torch.Generator) -> None:
        torch.manual_seed(0)
        self.model = create_model(config.model, attention=entry.attention).to(x.device).eval()
        self.x, self.device = x, x.device
        self.result = Measured(entry.label, entry.attention, count_parameters(self.model),
                               count_flops(self.model, config.image_size, in_chans=x.shape[1]))
        self.classes = self.forward(self.model)().shape[1]  # warm-up: allocator, kernel choice
        self.labels = torch.randint(0, self.classes, (x.shape[0],), generator=generator).to(x.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.train_step()  # warm-up, and the optimizer's buffers
        self.compiled: Optional[Callable] = None
        self.compiled_train: Optional[Callable] = None

    def forward(self, model: Callable) -> Callable[[], object]:
        def call() -> object:
            self.model.eval()
            with torch.no_grad():
                return model(self.x)
        return call

    def train_step(self, model: Optional[Callable] = None) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy((self.model if model is None else model)(self.x), self.labels).backward()
        self.optimizer.step()

    def compile(self, backend: str) -> None:
        """torch.compile the forward and run it once (the compilation); a failure is recorded, not raised."""
        compiled = torch.compile(self.model, backend=backend)
        self.result.compile_seconds, self.result.compile_error = _compiling(self.forward(compiled), self.device)
        self.compiled = compiled if self.result.compile_error is None else None

    def compile_train(self, backend: str) -> None:
        """torch.compile the training step's forward and backward and take one step (the compilation)."""
        compiled = torch.compile(self.model, backend=backend)
        step = lambda: self.train_step(compiled)
        self.result.compile_train_seconds, self.result.compile_train_error = _compiling(step, self.device)
        self.compiled_train = step if self.result.compile_train_error is None else None


def _compiling(call: Callable[[], object], device: torch.device) -> tuple[Optional[float], Optional[str]]:
    """(seconds, None) of the first, compiling call; (None, the error in one line) when the compiler fails."""
    try:
        return _timed(call, device), None
    except Exception as err:  # noqa: BLE001 - any compiler failure is a finding to report, not a crash
        return None, f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def run_bench(config: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> BenchResult:
    """Measure every attention of `config` on its backbone; see the module docstring."""
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    batch = config.batch_size or (64 if device.type == "cuda" else 8)
    entries = entries_with_baseline(config.attentions, config.out)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator).to(device)
    subjects = [Subject(entry, config, x, generator) for entry in entries]
    if config.compile or config.compile_train:
        # one code object (the backbone's forward) is compiled once per model and mode: more than dynamo's default 8
        with torch._dynamo.config.patch(recompile_limit=2 * len(subjects) + 8,
                                        accumulated_recompile_limit=max(256, 8 * len(subjects))):
            for s in subjects:
                if config.compile:
                    progress(f"compiling {config.model} + {s.result.label}")
                    s.compile(config.compile_backend)
                if config.compile_train:
                    progress(f"compiling the training step of {config.model} + {s.result.label}")
                    s.compile_train(config.compile_backend)
    for r in range(config.rounds):
        progress(f"round {r + 1} of {config.rounds}")
        for s in subjects:
            s.result.eager.append(_timed(s.forward(s.model), device))
            if s.compiled is not None:
                s.result.compiled.append(_timed(s.forward(s.compiled), device))
            s.result.train.append(_timed(s.train_step, device))
            if s.compiled_train is not None:
                s.result.compiled_train.append(_timed(s.compiled_train, device))
    if config.memory:
        for s in subjects:
            progress(f"peak memory of {config.model} + {s.result.label}")
            s.result.memory = peaks(s, config, device)
    return BenchResult(config, device_name(device), device.type == "cuda", batch, torch.get_num_threads(),
                       [s.result for s in subjects])


def peaks(subject: Subject, config: BenchConfig, device: torch.device) -> Optional[tuple[float, float]]:
    """Peak MiB of one forward and of one training step: on the GPU here, on the CPU in a fresh process."""
    if device.type == "cuda":
        subject.optimizer.zero_grad(set_to_none=True)  # the gradients count, as in a fresh process on the CPU
        return cuda_peaks(subject.model, subject.x, subject.labels)
    return cpu_peaks(config.model, subject.result.attention, subject.x.shape[0], config.image_size,
                     subject.x.shape[1], subject.classes, torch.get_num_threads())


def ratio_stats(samples: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range over rounds of the per-round ratio samples / baseline."""
    ratios = [a / b for a, b in zip(samples, baseline)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


__all__ = ["DEFAULT_ATTENTIONS", "BenchConfig", "BenchResult", "Measured", "ratio_stats", "run_bench"]
