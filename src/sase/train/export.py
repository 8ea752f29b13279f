"""What it takes to rebuild a trained model, and the files that carry it: checkpoints and safetensors.

A `ModelSpec` names the backbone, the attention (a zoo name, or the genotype itself, one or one per
block width, never a path that may be gone by the time the model is loaded), the classes and the
input. It is stored in every checkpoint and in the metadata of `model.safetensors`, so either file
alone rebuilds the model:

    model, spec = load_model("runs/train/model.safetensors")
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..attention import ATTENTIONS
from ..genotype import Genotype, GenotypeError
from ..models import create_model
from ..stage_genotypes import StageGenotypes, genotype_or_stages
from ..utils.checkpoint import load_checkpoint, temporary_for

SAFETENSORS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
_CIFAR_MODELS = ("resnet20", "resnet56", "resnet110")  # the ones whose stem takes `in_chans`


def resolve_genotype(attention: str) -> Genotype | StageGenotypes | None:
    """None for a zoo module; the genotype for `sase`, a preset, or JSON text or a JSON file of one
    genotype; the StageGenotypes for JSON text or a JSON file mapping block widths to genotypes.

    A ValueError for anything else, or for a malformed genotype of either form.
    """
    name = attention.lower()
    if name in ATTENTIONS and name != "sase":
        return None
    try:
        return genotype_or_stages("paper" if name == "sase" else attention)
    except GenotypeError as err:
        raise ValueError(f"unknown attention {attention!r}: not one of {', '.join(ATTENTIONS)} "
                         f"and not a genotype ({err})") from None


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the network again, as plain values."""

    model: str  # sase.models name
    attention: str  # what the run was given: a zoo name, a preset, or a genotype path (for the record)
    # SASE blocks: the genotype as JSON text, one genotype or per-stage width -> genotype; else None
    genotype: Optional[str]
    num_classes: int
    in_chans: int  # input channels of the stem
    image_size: int  # side of the images the model was trained on
    dataset: str  # the dataset it was trained on (the default for evaluation)

    @classmethod
    def create(cls, model: str, attention: str, num_classes: int, image_size: int, dataset: str,
               in_chans: int = 3) -> ModelSpec:
        genotype = resolve_genotype(attention)
        return cls(model, attention, genotype.to_json(indent=None) if genotype else None, num_classes,
                   in_chans, image_size, dataset)

    def build(self) -> nn.Module:
        """The model, freshly initialised; a ValueError when per-stage genotypes miss a block width of it."""
        kwargs: dict[str, Any] = {}
        if self.in_chans != 3:
            if self.model not in _CIFAR_MODELS:
                raise ValueError(f"{self.model} takes 3 input channels, not {self.in_chans}")
            kwargs["in_chans"] = self.in_chans
        # the stored genotype, never `attention`: a genotype file named there may have changed or gone
        attention = genotype_or_stages(self.genotype) if self.genotype else self.attention
        return create_model(self.model, attention=attention, num_classes=self.num_classes, **kwargs)

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata: a flat str -> str mapping."""
        return {"format": "pt", "sase.model_spec": json.dumps(asdict(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)


def save_safetensors(model: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> None:
    """The weights (and BatchNorm buffers) of `model` as safetensors, the spec in the metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with temporary_for(path, tmp, "weights"):
        save_file(state, str(tmp), metadata=spec.to_metadata())
        os.replace(tmp, path)  # never a half-written file under the final name


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """The ModelSpec stored in a sase safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    if "sase.model_spec" not in metadata:
        raise ValueError(f"{path}: no sase model spec in its metadata; was it written by sase train?")
    return ModelSpec.from_dict(json.loads(metadata["sase.model_spec"]))


def locate(path: str | os.PathLike, names: tuple[str, str] = (SAFETENSORS, CHECKPOINT)) -> Path:
    """A model file: the path itself, or a run folder's `names[0]` (else its `names[1]`)."""
    path = Path(path)
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds neither {names[0]} nor {names[1]}")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return path


def load_model(path: str | os.PathLike) -> tuple[nn.Module, ModelSpec]:
    """Rebuild and load the model of a checkpoint.pt, a model.safetensors or a run folder (on the CPU)."""
    path = locate(path)
    if path.suffix == ".safetensors":
        spec = read_spec(path)
        state = load_file(str(path))
    else:
        saved = load_checkpoint(path)  # weights_only=True
        if "model_spec" not in saved:
            raise ValueError(f"{path}: not a sase training checkpoint (it has no model spec)")
        spec, state = ModelSpec.from_dict(saved["model_spec"]), saved["model"]
    model = spec.build()
    model.load_state_dict(state)
    return model.eval(), spec


__all__ = ["CHECKPOINT", "SAFETENSORS", "ModelSpec", "load_model", "locate", "read_spec", "resolve_genotype",
           "save_safetensors"]
