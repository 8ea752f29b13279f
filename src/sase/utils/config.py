"""What every run-settings dataclass (search, training) shares: JSON in and out, presets, checks of every
setting's type and range, and what a resumed run may change.

A resumed run is the run folder it is given, wherever that folder now is, with the settings saved in it.
A setting given again on resume is applied when it cannot change what the run computes (`KNOBS`: where it
writes, how fast it loads data), applied when it only lengthens the run (`EXTENDABLE`: more epochs; each
loop stretches its schedule over the new length), and refused otherwise, with one line naming the flag.
These two lists, per settings class, are the only place that says what a resume may change.
"""
from __future__ import annotations

import functools
import json
import math
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

C = TypeVar("C", bound="RunConfig")
CONFIG = "config.json"
AMP_MODES = ("bf16", "fp16")  # mixed precision: bf16 autocast, or fp16 autocast with a gradient scaler


def amp_error(amp: str | None) -> str | None:
    """None for a valid mixed-precision mode (or None: float32), else the one-line complaint."""
    if amp is None or amp in AMP_MODES:
        return None
    return f"amp must be one of {', '.join(AMP_MODES)} (or unset for float32), got {amp!r}"


def compile_backend_error(backend: str | None) -> str | None:
    """None for a torch.compile backend torch knows (or None: no compiling), else the one-line complaint."""
    if backend is None:
        return None
    import torch

    if backend in torch._dynamo.list_backends(exclude_tags=()):
        return None
    return (f"unknown torch.compile backend {backend!r}; for example inductor, eager, aot_eager "
            "(all: torch._dynamo.list_backends(exclude_tags=()))")


def device_error(name: str) -> str | None:
    """None for a device string torch can parse (or "auto"), else the one-line complaint."""
    if name == "auto":
        return None
    import torch  # settings are read without loading torch; a device name is checked by it

    try:
        torch.device(name)
    except RuntimeError:
        return f"device must be auto, cpu, cuda or cuda:N, got {name!r}"
    return None


@dataclass(frozen=True)
class Range:
    """The valid interval of a numeric setting; `high` may name another setting (lr_min <= lr)."""

    low: float | None = None
    high: float | str | None = None
    low_open: bool = False  # low itself is invalid
    high_open: bool = False
    why: str = ""  # appended to the error, when the bound needs a reason

    def error(self, name: str, value: float, config: Any) -> str | None:
        """None when `value` is in range, else the one-line complaint."""
        high = getattr(config, self.high) if isinstance(self.high, str) else self.high
        if isinstance(value, float) and not math.isfinite(value):
            bad = True
        else:
            bad = (self.low is not None and (value <= self.low if self.low_open else value < self.low)) or \
                  (high is not None and (value >= high if self.high_open else value > high))
        if not bad:
            return None
        lo = "(" if self.low_open or self.low is None else "["
        hi = ")" if self.high_open or high is None else "]"
        shown_high = "inf" if high is None else f"{self.high}={high}" if isinstance(self.high, str) else high
        shown_low = "-inf" if self.low is None else self.low
        why = f" ({self.why})" if self.why else ""
        return f"{name} must be in {lo}{shown_low}, {shown_high}{hi}{why}, got {value}"


SEEDS = Range(0, 2**63 - 1)  # the valid seeds: what torch.manual_seed takes without wrapping around
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_error(name: str, value: Any, hint: Any) -> str | None:
    """None when `value` fits the annotation `hint` (int, float, str, bool, or one of them | None)."""
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if value is None:
        return None if type(None) in typing.get_args(hint) else f"{name} must be {_TYPE_NAMES[hint]}, got null"
    kind = allowed[0]
    ok = isinstance(value, bool) if kind is bool else \
        isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
    if ok:
        return None
    optional = " or null" if type(None) in typing.get_args(hint) else ""
    return f"{name} must be {_TYPE_NAMES[kind]}{optional}, got {value!r} ({type(value).__name__})"


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the annotations are strings (`from __future__ import annotations`)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class RunConfig:
    """Mixin for frozen dataclasses of run settings (with an `epochs`); subclasses set KIND, PRESETS, KNOBS, RANGES."""

    KIND: ClassVar[str] = "run"  # names the settings in error messages
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    KNOBS: ClassVar[tuple[str, ...]] = ()  # settings a resumed run may change: they do not change its result
    # settings a resumed run may raise: it runs longer, each loop stretching its schedule over the new length
    EXTENDABLE: ClassVar[tuple[str, ...]] = ("epochs",)
    RANGES: ClassVar[dict[str, Range]] = {}  # valid interval of each numeric setting (None is always allowed)

    def check(self) -> None:
        """A ValueError naming the first setting of the wrong type or out of its range (call in __post_init__)."""
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            error = _type_error(f.name, getattr(self, f.name), hints[f.name])
            if error:
                raise ValueError(error)
        for name, valid in self.RANGES.items():
            value = getattr(self, name)
            error = None if value is None else valid.error(name, value, self)
            if error:
                raise ValueError(error)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.KIND} settings must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.KIND} setting(s): {', '.join(unknown)} (is it the config of a {cls.KIND} "
                             "run?)")
        return cls(**data)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        """The settings in a config.json; a ValueError naming the file and what is wrong in it."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def resumed(cls: type[C], out: str | Path, given: Mapping[str, Any] | None = None,
                preset: str | None = None) -> C:
        """The run saved in folder `out`, to continue there (`out` replaces the saved folder name).

        `given` holds the settings named on the command line (unset ones are None and skipped), `preset`
        a preset named there; each is applied or refused as the module docstring says.
        """
        saved_file = Path(out) / CONFIG
        if not saved_file.is_file():
            raise FileNotFoundError(f"nothing to resume: {saved_file} does not exist")
        saved = cls.load(saved_file)
        requested = {k: (v, f"--preset {preset}") for k, v in (cls.PRESETS.get(preset, {}) if preset else {}).items()}
        requested.update({k: (v, None) for k, v in (given or {}).items() if v is not None})
        changes: dict[str, Any] = {}
        for name, (value, source) in requested.items():
            refusal = saved._refusal(name, value, source, Path(out))
            if refusal:
                raise ValueError(refusal)
            changes[name] = value
        changes["out"] = str(out)  # the folder given is the run, wherever it was first written
        return replace(saved, **changes)  # type: ignore[type-var]

    def _refusal(self, name: str, value: Any, source: str | None, out: Path) -> str | None:
        """Why a resumed run cannot take `name` = `value`, or None when it can."""
        old = getattr(self, name)
        if value == old or name in self.KNOBS:
            return None
        flag = source or (_flag(name) if value is True else f"{_flag(name)} {value}")
        if name in self.EXTENDABLE:
            if value > old:
                return None
            return f"{flag}: {out} was started with {name}={old!r}; a resumed run can add to it, not take from it"
        grow = ", ".join(_flag(k) for k in self.EXTENDABLE)
        change = ", ".join(_flag(k) for k in self.KNOBS if k != "out")
        return (f"{flag}: {out} was started with {name}={old!r}; a resumed run keeps its recipe (it may raise "
                f"{grow} and change {change}); drop the flag, or start a new --out")

    def resume_state(self, checkpoint: str = "checkpoint.pt") -> dict[str, Any]:
        """The checkpoint in `out` that a resume of this config continues; a one-line error when it is missing,
        is not a checkpoint of this kind of run, or was written with another recipe."""
        from .checkpoint import load_checkpoint  # torch: loaded only by the runs, not by reading settings

        path = Path(self.out) / checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"nothing to resume: {path} does not exist (a {self.KIND} run stopped before its "
                                    "first checkpoint starts again without --resume)")
        state = load_checkpoint(path)
        try:
            differ = self.resume_conflicts(type(self).from_dict(state["config"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a sase {self.KIND} checkpoint ({err})") from None
        if differ:
            raise ValueError(f"{self.out} holds a {self.KIND} run with other settings ({', '.join(differ)}); resume with "
                             f"the saved config ({Path(self.out) / CONFIG}) or start a new --out")
        return state

    def resume_conflicts(self, saved: RunConfig) -> list[str]:
        """The settings that keep this config from continuing the run `saved` describes (none: it may)."""
        mine, theirs = self.recipe(), saved.recipe()
        return sorted(k for k in mine if mine[k] != theirs.get(k)
                      and not (k in self.EXTENDABLE and theirs.get(k) is not None and mine[k] > theirs[k]))

    def with_preset(self: C, name: str) -> C:
        if name not in self.PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid choices: {', '.join(self.PRESETS)}")
        return replace(self, **self.PRESETS[name])  # type: ignore[type-var]

    def recipe(self) -> dict[str, Any]:
        """The settings that decide what a run computes: a resumed run must share them with the saved one."""
        d = asdict(self)  # type: ignore[call-overload]
        for key in self.KNOBS:
            d.pop(key)
        return d
