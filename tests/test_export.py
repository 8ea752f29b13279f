"""Every attention exports with dynamic batch, height and width: ONNX (run back with onnxruntime),
torch.export, torch.jit.trace (with its own checks), and torch.compile without a graph break in the block.

The SASE ops are covered through genotypes built from the registries: genotype k puts op k of each set on
its edges (the second edge of a set takes the next op), so every op of every set sits in some block and an
op added to a registry is exported here without a change to this file. Several modules go through one
export at a time (`Fanout`), each keeping its own output, so a failure names the module.
"""
from __future__ import annotations

import pytest
import torch
from test_op_values import randomise
from torch import Tensor, nn

from sase import EDGES, Genotype, SASEBlock
from sase.attention import ATTENTIONS, create_attention
from sase.export import export_model, load_exported, program, verify
from sase.ops import OPS

CHANNELS = 14  # cov's channel pooling then has uneven groups (14 channels into 3 rows)
SHAPES = [(2, CHANNELS, 9, 9), (1, CHANNELS, 16, 7), (3, CHANNELS, 5, 11)]  # square, batch 1, non-square


def covering_genotypes() -> list[Genotype]:
    """Genotype k takes op k (mod the set's size) of each set, op k + 1 on a set's second edge."""
    count = max(len(registry) for registry in OPS.values())
    genotypes = []
    for k in range(count):
        ops, used = {}, {s: 0 for s in OPS}
        for edge in EDGES:
            names = list(OPS[edge.op_set])
            ops[edge.name] = names[(k + used[edge.op_set]) % len(names)]
            used[edge.op_set] += 1
        genotypes.append(Genotype.from_dict(ops))
    return genotypes


class Fanout(nn.Module):
    """Several modules on one input, one output each: one export for all of them."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.names = list(modules)
        self.parts = nn.ModuleList(modules.values())

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(part(x) for part in self.parts)


def blocks(dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
    """A block of each covering genotype, parameters and running statistics off their init."""
    torch.manual_seed(0)
    return {",".join(g.ops): randomise(SASEBlock(CHANNELS, g, dtype=dtype), seed=i).eval()
            for i, g in enumerate(covering_genotypes())}


def zoo(dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
    """Every zoo module (`sase`: the published block), parameters and running statistics off their init."""
    torch.manual_seed(0)
    return {a: randomise(create_attention(a, CHANNELS, dtype=dtype), seed=100 + i).eval()
            for i, a in enumerate(ATTENTIONS)}


def inputs(dtype: torch.dtype = torch.float32) -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def assert_parity(names: list[str], got: tuple[Tensor, ...], want: tuple[Tensor, ...], shape: tuple[int, ...],
                  tol: float) -> None:
    assert len(got) == len(want) == len(names)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, f"{name} at {shape}: shape {tuple(g.shape)}, PyTorch {tuple(w.shape)}"
        err = float((g.to(w.dtype) - w).abs().max())
        assert err <= tol * (1 + float(w.abs().max())), f"{name} at {shape}: max abs difference {err:.2e}"


def test_covering_genotypes_use_every_op_of_every_set():
    used = {(e.op_set, op) for g in covering_genotypes() for e, op in zip(EDGES, g.ops)}
    assert used == {(s, op) for s, registry in OPS.items() for op in registry}


@pytest.mark.parametrize("part", ["blocks", "zoo"])  # two programs, not one: the halves run on both workers
def test_torch_export_and_onnx_run_like_pytorch_at_any_size(tmp_path, part):
    """One torch.export program with dynamic batch, height and width, saved as .pt2 and as ONNX (run back
    with onnxruntime), for every op of every set (blocks covering them) and for every zoo module."""
    import onnxruntime

    model = Fanout(blocks() if part == "blocks" else zoo())
    with torch.no_grad():
        graph = program(model, inputs()[0])
    (name,) = graph.graph_signature.user_inputs
    shape = next(n for n in graph.graph.nodes if n.name == name).meta["val"].shape
    assert [isinstance(s, torch.SymInt) for s in shape] == [True, False, True, True]  # batch, H, W symbolic
    saved = load_exported(export_model(graph, "exported", tmp_path / "m.pt2", inputs()[0]), "exported")
    export_model(graph, "onnx", tmp_path / "m.onnx", inputs()[0])
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    onnx_input = session.get_inputs()[0].name
    for x in inputs():
        with torch.no_grad():
            want = model(x)
            if x.shape[0] > 1:  # the program of a block with cov or spatial l2 refuses batch 1 (docs/export.md)
                assert_parity(model.names, saved(x), want, tuple(x.shape), tol=1e-6)
        got = tuple(torch.from_numpy(y) for y in session.run(None, {onnx_input: x.numpy()}))
        assert_parity(model.names, got, want, tuple(x.shape), tol=1e-5)


def test_trace_passes_its_checks_and_runs_at_other_sizes(tmp_path):
    model = Fanout({**blocks(), **zoo()})
    first, *others = inputs()
    # traced at one size and checked by the tracer at another; a TracerWarning fails the export
    path = export_model(model, "torchscript", tmp_path / "m.pt", first, check=others[-1])
    run = load_exported(path, "torchscript")
    for x in inputs():
        with torch.no_grad():
            assert_parity(model.names, run(x), model(x), tuple(x.shape), tol=1e-6)


def test_export_path_gives_the_eager_values_and_gradients_in_float64():
    """Traced, the ops take their export path (no in-place buffers, no batch-as-groups convolution, bins
    built from tensor ops); in eager mode the fast one. Same values, with and without autograd, and same
    gradients of the input and of every parameter."""
    model = Fanout({**blocks(torch.float64), **zoo(torch.float64)})
    xs = inputs(torch.float64)
    traced = torch.jit.trace(model, (xs[0],), check_trace=False)
    for x in xs:
        with torch.no_grad():  # eager: the inference path that reuses buffers in place
            assert_parity(model.names, traced(x), model(x), tuple(x.shape), tol=1e-12)
        grads = []
        for run in (model, traced):
            x = x.detach().requires_grad_()
            model.zero_grad()
            outs = run(x)
            sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs).backward()
            grads.append([x.grad] + [p.grad for p in model.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) > 1
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_compile_has_no_graph_break_in_any_block():
    torch._dynamo.reset()
    explained = torch._dynamo.explain(Fanout({**blocks(), **zoo()}))(inputs()[0])
    reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


def test_compile_runs_the_published_block_at_new_sizes_without_recompiling():
    """Inductor, dynamic sizes: compiled at a first size, then run at others with a recompile made an error.

    Sizes of 1 are left out: torch.compile specialises them by design (one more graph, not a storm)."""
    torch._dynamo.reset()
    block = zoo()["sase"]
    assert block.genotype == Genotype.paper()
    compiled = torch.compile(block, backend="inductor", dynamic=True)
    shapes = [(2, CHANNELS, 9, 7), (3, CHANNELS, 12, 12), (2, CHANNELS, 5, 11), (4, CHANNELS, 16, 16)]
    for i, shape in enumerate(shapes):
        x = torch.randn(shape)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=i > 0):
            torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-6)


def test_verify_reports_the_difference_of_a_wrong_file(tmp_path):
    block = zoo()["sase"]
    path = export_model(block, "exported", tmp_path / "m.pt2", inputs()[0])
    assert all(c.close() for c in verify(block, path, "exported", SHAPES))
    with torch.no_grad():
        block.edges[1].fc2.weight.mul_(2)  # the model moves on; the file does not
    checks = verify(block, path, "exported", SHAPES)
    assert [c.shape for c in checks] == SHAPES
    assert all(c.max_abs_diff > 1e-3 and not c.close() for c in checks)


@pytest.mark.parametrize("fmt,words", [("pickle", "unknown export format"), ("torchscript", "--opset")])
def test_bad_format_or_opset_is_one_clear_error(tmp_path, fmt, words):
    with pytest.raises(ValueError, match=words):
        export_model(nn.Identity(), fmt, tmp_path / "m", torch.zeros(1, 1, 2, 2), opset=18)


@pytest.mark.parametrize("name", ["fca", "cov"])
def test_pooling_matrices_cached_in_inference_mode_still_train(name):
    """Eager mode caches the averaging matrices of adaptive pooling per size; one first built under
    torch.inference_mode must not be an inference tensor, which a later training forward could not use."""
    genotype = {**Genotype.paper().to_dict(), "spatial_squeeze_input": "cov"}
    module = create_attention("fca" if name == "fca" else Genotype.from_dict(genotype), CHANNELS)
    x = torch.randn(2, CHANNELS, 23, 19)  # a size no other test uses: the cache starts empty for it
    with torch.inference_mode():
        module.eval()(x)
    x.requires_grad_()  # as a feature map inside a network: the pooling's backward needs its matrices
    module.train()(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
