"""DARTS search for SASE blocks: the supernet, the architect, the search loop, and what it concludes.

    from sase.search import Supernet, Architect, SearchConfig, run_search
"""
from .architect import ORDERS, Architect
from .config import PRESETS, SearchConfig
from .loop import Search, SearchDiverged, SearchResult, ensure_search, run_search
from .stability import Stability, aggregate, run_seeds, write_stability
from .supernet import MixedOp, Supernet, derive_genotype, parameter_free
from .verdict import DECIDED_MARGIN, Verdict, judge, read_verdict

__all__ = ["DECIDED_MARGIN", "ORDERS", "PRESETS", "Architect", "MixedOp", "Search", "SearchConfig", "SearchDiverged",
           "SearchResult", "Stability", "Supernet", "Verdict", "aggregate", "derive_genotype", "ensure_search", "judge",
           "parameter_free", "read_verdict", "run_search", "run_seeds", "write_stability"]
