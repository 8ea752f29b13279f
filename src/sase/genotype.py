"""The genotype: which op sits on each of the six edges of the cell, as a validated, frozen value.

JSON form, one key per edge in cell order:

    {"channel_squeeze": "gap_gmp", "channel_excitation": "fc", "channel_refine": "affine",
     "spatial_squeeze_refined": "pnorm", "spatial_squeeze_input": "gap", "spatial_excitation": "conv_3x2"}
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from .cell import EDGE_NAMES, EDGES
from .ops import OPS


class GenotypeError(ValueError):
    """A genotype that names an unknown edge or op, or is not well-formed."""


@dataclass(frozen=True)
class Genotype(Mapping):
    """Edge name -> op name for the six edges of the cell, validated against the op registries."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.ops, list):
            object.__setattr__(self, "ops", tuple(self.ops))
        if not isinstance(self.ops, tuple) or len(self.ops) != len(EDGES):
            raise GenotypeError(f"a genotype holds {len(EDGES)} op names, one per edge ({', '.join(EDGE_NAMES)})"
                                f"; got {self.ops!r}")
        for edge, op in zip(EDGES, self.ops):
            _check_op(edge.name, edge.op_set, op)

    # -- Mapping: edge name -> op name, in edge order
    def __getitem__(self, edge: str) -> str:
        if edge not in EDGE_NAMES:
            raise KeyError(f"unknown edge {edge!r}; edges: {', '.join(EDGE_NAMES)}")
        return self.ops[EDGE_NAMES.index(edge)]

    def __iter__(self) -> Iterator[str]:
        return iter(EDGE_NAMES)

    def __len__(self) -> int:
        return len(EDGE_NAMES)

    def __repr__(self) -> str:
        return f"Genotype({', '.join(f'{e}={o!r}' for e, o in zip(EDGE_NAMES, self.ops))})"

    # -- construction
    @classmethod
    def from_dict(cls, edges: Any) -> Genotype:
        """From a mapping of all six edge names to op names."""
        if not isinstance(edges, Mapping):
            raise GenotypeError(f"a genotype is an object mapping each edge to an op name, got {type(edges).__name__}"
                                f"; edges: {', '.join(EDGE_NAMES)}")
        extra = [k for k in edges if k not in EDGE_NAMES]
        if extra:
            raise GenotypeError(f"unknown edge {extra[0]!r}; valid edges: {', '.join(EDGE_NAMES)}")
        missing = [e for e in EDGE_NAMES if e not in edges]
        if missing:
            raise GenotypeError(f"missing edge {missing[0]!r}; a genotype names all six edges: {', '.join(EDGE_NAMES)}")
        return cls(tuple(edges[e] for e in EDGE_NAMES))

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> Genotype:
        """From JSON text or the path of a JSON file."""
        text, origin = _read_json_source(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"malformed genotype JSON{origin}: {err.msg} at line {err.lineno}, "
                                f"column {err.colno}") from None
        return cls.from_dict(data)

    @classmethod
    def paper(cls) -> Genotype:
        """The published genotype (CIFAR-10, second order, seed 2; Wang et al., 2024)."""
        return PRESETS["paper"]

    @classmethod
    def resolve(cls, spec: GenotypeSpec) -> Genotype:
        """A Genotype from a Genotype, a mapping, a preset name, JSON text or a JSON file path."""
        if isinstance(spec, Genotype):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if isinstance(spec, str) and spec in PRESETS:
            return PRESETS[spec]
        if isinstance(spec, (str, os.PathLike)):
            if isinstance(spec, str) and spec.lstrip().startswith(("{", "[")):
                return cls.from_json(spec)
            if Path(spec).is_file():
                return cls.from_json(Path(spec))
            raise GenotypeError(f"genotype {str(spec)!r} is neither a preset ({', '.join(PRESETS)}), "
                                "JSON text, nor an existing JSON file")
        raise GenotypeError(f"cannot make a genotype from {type(spec).__name__}; give a Genotype, a preset name "
                            f"({', '.join(PRESETS)}), JSON text or a JSON file path")

    @classmethod
    def random(cls, rng: np.random.RandomState | int) -> Genotype:
        """A genotype drawn uniformly from the search space: each edge's op uniform over its registry.

        `rng` is a NumPy RandomState or its seed; RandomState's stream is frozen by NumPy, so a seed
        draws the same genotype on every machine and version.
        """
        rng = rng if isinstance(rng, np.random.RandomState) else np.random.RandomState(rng)
        choices = [list(OPS[edge.op_set]) for edge in EDGES]
        return cls(tuple(names[rng.randint(len(names))] for names in choices))

    # -- output
    def to_dict(self) -> dict[str, str]:
        return dict(zip(EDGE_NAMES, self.ops))

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 2) -> str:
        """The JSON text; also written to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


GenotypeSpec = Union[Genotype, Mapping, str, os.PathLike]


def random_genotypes(k: int, seed: int = 0) -> list[Genotype]:
    """`k` distinct genotypes drawn uniformly from the search space, a repeat drawn again.

    The random-search baseline of Li & Talwalkar, "Random Search and Reproducibility for Neural
    Architecture Search" (UAI 2019). The draws come in sequence from one stream, so the first j of
    `random_genotypes(k, seed)` are `random_genotypes(j, seed)`: asking for more keeps the earlier ones.
    """
    space = math.prod(len(OPS[edge.op_set]) for edge in EDGES)
    if not 1 <= k <= space:
        raise ValueError(f"the number of random genotypes is between 1 and {space} (the size of the search "
                         f"space), got {k}")
    rng = np.random.RandomState(seed)
    drawn: dict[Genotype, None] = {}  # a dict keeps the order of first draw
    while len(drawn) < k:
        drawn.setdefault(Genotype.random(rng))
    return list(drawn)


def _check_op(edge: str, op_set: str, op: Any) -> None:
    registry = OPS[op_set]
    if not isinstance(op, str):
        raise GenotypeError(f"edge {edge!r}: an op name is a string, got {type(op).__name__} {op!r}; "
                            f"valid choices: {', '.join(registry)}")
    if op in registry:
        return
    other = [s for s, r in OPS.items() if op in r]
    why = f"{op!r} is a {' / '.join(other)} op, not a {op_set} op" if other else f"unknown {op_set} op {op!r}"
    raise GenotypeError(f"edge {edge!r}: {why}; valid choices: {', '.join(registry)}")


def _read_json_source(source: str | os.PathLike) -> tuple[str, str]:
    """(text, ' in PATH' or '') for JSON text or a path to a JSON file."""
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        return source, ""
    path = Path(source)
    if not path.is_file():
        raise GenotypeError(f"genotype file {str(path)!r} does not exist (nor is it JSON text)")
    return path.read_text(), f" in {path}"


PRESETS: dict[str, Genotype] = {
    "paper": Genotype(("gap_gmp", "fc", "affine", "pnorm", "gap", "conv_3x2")),
}
PRESETS["sase"] = PRESETS["paper"]
