"""DARTS search for SASE blocks: the supernet, the architect, the search loop, and what it concludes.

    from sase.search import Supernet, Architect, SearchConfig, run_search

Names load on first use (PEP 562): importing the package builds nothing and draws no random numbers;
`from sase.search import SearchConfig` loads the configuration alone, not the supernet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "ORDERS": "architect", "Architect": "architect",
    "PRESETS": "config", "SearchConfig": "config",
    "Search": "loop", "SearchDiverged": "loop", "SearchResult": "loop", "ensure_search": "finished",
    "run_search": "loop",
    "Stability": "stability", "aggregate": "stability", "run_seeds": "stability", "write_stability": "stability",
    "MixedOp": "supernet", "Supernet": "supernet", "derive_genotype": "supernet", "parameter_free": "supernet",
    "DECIDED_MARGIN": "verdict", "Verdict": "verdict", "judge": "verdict", "read_verdict": "verdict",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .architect import ORDERS, Architect
    from .config import PRESETS, SearchConfig
    from .finished import ensure_search
    from .loop import Search, SearchDiverged, SearchResult, run_search
    from .stability import Stability, aggregate, run_seeds, write_stability
    from .supernet import MixedOp, Supernet, derive_genotype, parameter_free
    from .verdict import DECIDED_MARGIN, Verdict, judge, read_verdict


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
