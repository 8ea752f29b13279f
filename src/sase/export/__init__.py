"""Ship and measure a model: export to ONNX, TorchScript or a torch.export program (`formats`), and the cost
of each attention module on a backbone (`bench`).

    from sase.export import export_model, verify
    export_model(model, "onnx", "model.onnx", torch.randn(2, 3, 224, 224))
"""
from __future__ import annotations

from .formats import FORMATS, Check, export_model, load_exported, program, verify

__all__ = ["FORMATS", "Check", "export_model", "load_exported", "program", "verify"]
