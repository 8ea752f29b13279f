"""sase: find squeeze-and-excitation attention blocks by architecture search, and put them to work.

    import sase
    block = sase.SASEBlock(256, genotype="paper")
    model = sase.create_model("resnet50", attention="paper", num_classes=1000)

The names below are imported on first use (PEP 562): `import sase` alone does not import torch, so the
command line answers `sase --help` at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .utils.lazy import lazy_exports

__version__ = "0.1.0"

_SOURCES = {  # public name -> the submodule that defines it
    "SASEBlock": "block", "Cell": "cell", "EDGES": "cell", "EDGE_NAMES": "cell", "Genotype": "genotype",
    "GenotypeError": "genotype", "MODELS": "models", "create_model": "models", "OPS": "ops",
    "StageGenotypes": "stage_genotypes",
}
__all__ = ["OPS", "EDGES", "EDGE_NAMES", "Cell", "Genotype", "GenotypeError", "StageGenotypes", "SASEBlock", "MODELS",
           "create_model"]

if TYPE_CHECKING:
    from .block import SASEBlock
    from .cell import EDGE_NAMES, EDGES, Cell
    from .genotype import Genotype, GenotypeError
    from .models import MODELS, create_model
    from .ops import OPS
    from .stage_genotypes import StageGenotypes


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
