"""What every run-settings dataclass (search, training) shares: JSON in and out, presets, and the settings
that decide what a run computes, as opposed to where it writes or how fast it loads data."""
from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="RunConfig")


class RunConfig:
    """Mixin for frozen dataclasses of run settings; subclasses set KIND, PRESETS and KNOBS."""

    KIND: ClassVar[str] = "run"  # names the settings in error messages
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    KNOBS: ClassVar[tuple[str, ...]] = ()  # settings a resumed run may change: they do not change its result

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.KIND} setting(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def resumed(cls: type[C], out: str | Path, **knobs: Any) -> C:
        """The settings saved in run folder `out`; the given `knobs` (unset ones skipped) replace theirs."""
        saved = Path(out) / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"nothing to resume: {saved} does not exist")
        return replace(cls.load(saved), **{k: v for k, v in knobs.items() if v is not None})  # type: ignore[type-var]

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
