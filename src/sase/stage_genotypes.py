"""Per-stage genotypes: one genotype per block width, as `sase search --per-stage` writes them.

JSON form, the block width (as a string) mapped to a genotype object:

    {"16": {"channel_squeeze": "gap", ...}, "32": {...}, "64": {...}}

A single genotype's keys are edge names, never integers; that is how the two forms are told apart
(`genotype_or_stages`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .genotype import Genotype, GenotypeError, GenotypeSpec, _read_json_source

_INTEGER = re.compile(r"[+-]?\d+")  # a width key as JSON writes it; "16.0" and "1e2" are not widths


@dataclass(frozen=True)
class StageGenotypes(Mapping):
    """Block width -> Genotype, validated and immutable; widths ascending."""

    stages: tuple[tuple[int, Genotype], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise GenotypeError("per-stage genotypes map at least one block width to a genotype; got none")
        for width, genotype in self.stages:
            _check_width(width)
            if not isinstance(genotype, Genotype):
                raise GenotypeError(f"width {width}: expected a Genotype, got {type(genotype).__name__}")
        widths = [w for w, _ in self.stages]
        if len(set(widths)) != len(widths):
            raise GenotypeError(f"width {_first_repeat(widths)} is given more than once")
        # one order for every equal mapping, so that equality and the JSON text do not depend on input order
        object.__setattr__(self, "stages", tuple(sorted(self.stages, key=lambda s: s[0])))

    # -- Mapping: width -> genotype, widths ascending
    def __getitem__(self, width: int) -> Genotype:
        for w, genotype in self.stages:
            if w == width:
                return genotype
        raise KeyError(width)

    def __iter__(self) -> Iterator[int]:
        return iter(self.widths)

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return f"StageGenotypes({', '.join(f'{w}: {g!r}' for w, g in self.stages)})"

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(w for w, _ in self.stages)

    def genotype_for(self, channels: int) -> Genotype:
        """The genotype of the blocks of width `channels`; a GenotypeError naming the widths there are if none."""
        if channels in self.widths:
            return self[channels]
        raise GenotypeError(f"no genotype for block width {channels}; the per-stage genotypes cover widths "
                            f"{', '.join(map(str, self.widths))}")

    # -- construction
    @classmethod
    def from_dict(cls, data: Any) -> StageGenotypes:
        """From a mapping of widths (ints or integer strings) to genotypes (Genotype or edge -> op mappings)."""
        if not isinstance(data, Mapping):
            raise GenotypeError(f"per-stage genotypes are an object mapping block widths to genotypes, got "
                                f"{type(data).__name__}")
        if not data:
            raise GenotypeError("per-stage genotypes map at least one block width to a genotype; got an empty "
                                "mapping")
        return cls(tuple((_parse_width(key), _parse_genotype(key, value)) for key, value in data.items()))

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> StageGenotypes:
        """From JSON text or the path of a JSON file."""
        text, origin = _read_json_source(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"malformed per-stage genotype JSON{origin}: {err.msg} at line {err.lineno}, "
                                f"column {err.colno}") from None
        return cls.from_dict(data)

    # -- output
    def to_dict(self) -> dict[str, dict[str, str]]:
        """The JSON form: str(width) -> {edge: op}."""
        return {str(w): g.to_dict() for w, g in self.stages}

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 2) -> str:
        """The JSON text; also written to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def is_per_stage(data: Any) -> bool:
    """Whether parsed JSON (or any mapping) is meant as per-stage genotypes: some key is a width.

    One integer key is enough, so that a file with a stray non-integer width is reported as such
    rather than as a genotype with unknown edges.
    """
    return isinstance(data, Mapping) and any(_is_integer_key(k) for k in data)


def genotype_or_stages(spec: GenotypeSpec | StageGenotypes) -> Genotype | StageGenotypes:
    """A StageGenotypes when `spec` is one, or a mapping / JSON text / JSON file of widths to genotypes;
    otherwise `Genotype.resolve(spec)` (a Genotype, preset name, JSON text or file of one genotype)."""
    if isinstance(spec, (Genotype, StageGenotypes)):
        return spec
    data = spec if isinstance(spec, Mapping) else _parsed_json(spec)
    if is_per_stage(data):
        return StageGenotypes.from_dict(data)
    return Genotype.resolve(spec)


AnyGenotypeSpec = Union[GenotypeSpec, StageGenotypes]


def _parsed_json(spec: Any) -> Any:
    """The parsed JSON of JSON text or an existing file; None for anything else, malformed JSON included
    (Genotype.resolve then reports it)."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    try:
        text, _ = _read_json_source(spec)
        return json.loads(text)
    except (GenotypeError, json.JSONDecodeError, OSError):
        return None


def _is_integer_key(key: Any) -> bool:
    if isinstance(key, bool):
        return False
    return isinstance(key, int) or (isinstance(key, str) and _INTEGER.fullmatch(key.strip()) is not None)


def _parse_width(key: Any) -> int:
    if not _is_integer_key(key):
        raise GenotypeError(f"block width {key!r} is not an integer; per-stage genotypes map widths such as "
                            "\"16\" to genotypes")
    width = int(key)
    _check_width(width)
    return width


def _check_width(width: Any) -> None:
    if not isinstance(width, int) or isinstance(width, bool):
        raise GenotypeError(f"block width {width!r} is not an integer")
    if width < 1:
        raise GenotypeError(f"block width {width} is not positive; a width is a number of channels")


def _parse_genotype(key: Any, value: Any) -> Genotype:
    if isinstance(value, Genotype):
        return value
    try:
        return Genotype.from_dict(value)
    except GenotypeError as err:
        raise GenotypeError(f"width {key}: {err}") from None


def _first_repeat(widths: list[int]) -> int:
    return next(w for i, w in enumerate(widths) if w in widths[:i])


__all__ = ["AnyGenotypeSpec", "StageGenotypes", "genotype_or_stages", "is_per_stage"]
