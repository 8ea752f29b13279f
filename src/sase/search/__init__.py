"""DARTS search for SASE blocks: the supernet, the architect, and the search loop.

    from sase.search import Supernet, Architect, SearchConfig, run_search
"""
from .architect import ORDERS, Architect
from .config import PRESETS, SearchConfig
from .loop import Search, SearchDiverged, SearchResult, run_search
from .supernet import MixedOp, Supernet, derive_genotype, parameter_free

__all__ = ["ORDERS", "PRESETS", "Architect", "MixedOp", "Search", "SearchConfig", "SearchDiverged", "SearchResult",
           "Supernet", "derive_genotype", "parameter_free", "run_search"]
