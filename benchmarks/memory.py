"""Peak resident memory of a piece of work, in MiB: `sase.export.memory.peak_rise_mib`, for the scripts here."""
from sase.export.memory import peak_rise_mib

__all__ = ["peak_rise_mib"]
