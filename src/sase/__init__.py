"""sase: find squeeze-and-excitation attention blocks by architecture search, and put them to work.

    import sase
    block = sase.SASEBlock(256, genotype="paper")
    model = sase.create_model("resnet50", attention="paper", num_classes=1000)
"""
from .block import SASEBlock
from .cell import EDGE_NAMES, EDGES, Cell
from .genotype import Genotype, GenotypeError
from .models import MODELS, create_model
from .ops import OPS
from .stage_genotypes import StageGenotypes

__all__ = ["OPS", "EDGES", "EDGE_NAMES", "Cell", "Genotype", "GenotypeError", "StageGenotypes", "SASEBlock", "MODELS",
           "create_model"]
__version__ = "0.1.0"
