"""Three deployable forms of a model, each with dynamic batch, height and width, and a check against PyTorch.

- `onnx`: `torch.onnx.export(dynamo=True)`, run back with onnxruntime;
- `torchscript`: `torch.jit.trace`, with the tracer's own check at a second input size;
- `exported`: a `torch.export` program saved with `torch.export.save` (`.pt2`).

    path = export_model(model, "onnx", "model.onnx", torch.randn(2, 3, 224, 224))
    checks = verify(model, path, "onnx", [(2, 3, 224, 224), (3, 3, 280, 168)])
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

Runner = Callable[[Tensor], Tensor]
Exportable = Union[nn.Module, torch.export.ExportedProgram]
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass(frozen=True)
class Format:
    """How one format is written and run back."""

    suffix: str
    what: str  # for messages
    save: Callable[[Exportable, Tensor, Tensor, Path, int | None], None]  # (model, example, check, path, opset)
    load: Callable[[Path], Runner]


@dataclass(frozen=True)
class Check:
    """The exported file against the PyTorch model on one input."""

    shape: tuple[int, ...]
    max_abs_diff: float
    max_abs_output: float  # the scale the difference is read against

    def close(self, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
        return self.max_abs_diff <= atol + rtol * self.max_abs_output


def dynamic_sizes() -> tuple[dict[int, object], ...]:
    """Batch, height and width dynamic, for a model with one (B, C, H, W) input."""
    dim = getattr(torch.export.Dim, "DYNAMIC", None)
    if dim is None:
        raise ValueError(f"exporting with dynamic sizes needs torch 2.6 or later (torch.export.Dim.DYNAMIC); this "
                         f"is torch {torch.__version__}")
    return ({0: dim, 2: dim, 3: dim},)


def program(model: Exportable, example: Tensor) -> torch.export.ExportedProgram:
    """`model` through torch.export with dynamic batch, height and width (a program is returned as it is)."""
    if isinstance(model, torch.export.ExportedProgram):
        return model
    with _size_oblivious():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_sizes())


def _size_oblivious() -> contextlib.AbstractContextManager:
    """Trace without assuming that a dynamic size is not 1: otherwise the program refuses batch 1 (a size of 1
    broadcasts, so the tracer guards each symbolic size against it). A private switch of torch: where it is
    missing, the program takes batch 2 and up."""
    config = torch.fx.experimental._config
    if not hasattr(config, "backed_size_oblivious"):
        return contextlib.nullcontext()
    return config.patch(backed_size_oblivious=True)


def _save_onnx(model: Exportable, example: Tensor, check: Tensor, path: Path, opset: int | None) -> None:
    require_onnx()
    graph = program(model, example)  # the exporter's own first step, done here so a program can be passed
    with _quiet():  # the exporter prints its progress, step by step
        torch.onnx.export(graph, (example,), str(path), dynamo=True, opset_version=opset, input_names=["input"],
                          output_names=["output"], external_data=False)


def _load_onnx(path: Path) -> Runner:
    require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def _save_torchscript(model: Exportable, example: Tensor, check: Tensor, path: Path, opset: int | None) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError("a torch.export program cannot be traced to TorchScript; pass the model")
    with _quiet():
        # a TracerWarning means a size or value was frozen into the graph: an error here, not a note
        warnings.simplefilter("error", torch.jit.TracerWarning)
        # check_inputs: the tracer reruns the graph at a second size and compares it with the model
        traced = torch.jit.trace(model, (example,), check_inputs=[(check,)])
        torch.jit.save(traced, str(path))


def _load_torchscript(path: Path) -> Runner:
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu")


def _save_exported(model: Exportable, example: Tensor, check: Tensor, path: Path, opset: int | None) -> None:
    torch.export.save(program(model, example), str(path))


def _load_exported(path: Path) -> Runner:
    return torch.export.load(str(path)).module()


FORMATS: dict[str, Format] = {
    "onnx": Format(".onnx", "ONNX", _save_onnx, _load_onnx),
    "torchscript": Format(".pt", "TorchScript (traced)", _save_torchscript, _load_torchscript),
    "exported": Format(".pt2", "torch.export program", _save_exported, _load_exported),
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown export format {name!r}; valid choices: {', '.join(FORMATS)}")
    return FORMATS[name]


def require_onnx() -> None:
    """A ValueError naming the packages ONNX export and checking need, when any is missing."""
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"ONNX export needs {', '.join(ONNX_PACKAGES)}; missing: {', '.join(missing)} "
                         "(pip install 'sase[export]')")


def export_model(model: Exportable, fmt: str, path: str | os.PathLike, example: Tensor,
                 check: Tensor | None = None, opset: int | None = None) -> Path:
    """Write `model` (put in eval mode, on the CPU) in format `fmt` to `path`, traced at `example` (B, C, H, W).

    `check` is a second input of another size, for formats that check their trace (default: `example`).
    A program from `program()` goes to onnx or exported as it is, traced once for both.
    """
    spec = get_format(fmt)
    if opset is not None and fmt != "onnx":
        raise ValueError(f"--opset is for --format onnx, not {fmt}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; name the file to write")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} to write {path.name} into")
    if isinstance(model, nn.Module):
        model = model.eval().cpu()
    with torch.no_grad():
        spec.save(model, example, example if check is None else check, path, opset)
    return path


def load_exported(path: str | os.PathLike, fmt: str) -> Runner:
    """The exported model at `path`, as a function of one input tensor on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    return get_format(fmt).load(path)


def verify(model: nn.Module, path: str | os.PathLike, fmt: str, shapes: Sequence[Sequence[int]],
           seed: int = 0) -> list[Check]:
    """Run the file at `path` and `model` (eval, CPU) on a random input of each shape; one Check each."""
    runner = load_exported(path, fmt)
    model = model.eval().cpu()
    generator = torch.Generator().manual_seed(seed)
    checks = []
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(*shape, generator=generator)
            want, got = model(x), runner(x)
            if got.shape != want.shape:
                raise ValueError(f"{path} gives an output of shape {tuple(got.shape)} at input {tuple(shape)}, "
                                 f"PyTorch {tuple(want.shape)}")
            diff = (got.to(want.dtype) - want).abs().max().item()
            checks.append(Check(tuple(shape), diff, want.abs().max().item()))
    return checks


@contextlib.contextmanager
def _quiet():
    """No progress lines on stdout, no tracer or deprecation warnings: a failure still raises."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


__all__ = ["FORMATS", "Check", "Exportable", "Format", "dynamic_sizes", "export_model", "get_format",
           "load_exported", "program", "require_onnx", "verify"]
