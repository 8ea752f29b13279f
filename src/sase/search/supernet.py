"""The supernet: any backbone with an attention hook, with a mixed op on every edge of every cell.

Mixed ops are built through the same hook and the same `Cell` wiring as the fixed block; only what
sits on an edge differs. The architecture parameters α (groups, 6 edges, 7 candidates) live on the
`Supernet` itself, registered apart from the weights: one group shared by every cell (Wang et al., 2024), or
with `per_stage=True` one group per stage, a stage being every block of one width.

A forward is a pure function of the parameters and the input: every mixed op holds the supernet's α
itself (the same Parameter, tied) and works out its own softmax. Nothing is handed from the
supernet's forward to the mixed ops through shared state, so `torch.func.functional_call` with
another α, DistributedDataParallel, DataParallel's replicas and `torch.compile` all see α like any
weight. A state dict holds α once, under "alpha".

With `sampling="gumbel"` each mixed op in training mode runs one candidate per forward, drawn by hard
Gumbel-softmax (GDAS, Dong & Yang, CVPR 2019), instead of all seven: a search step then costs about
what training with a fixed block does. α's gradient is the straight-through one of the relaxed sample
at temperature τ (`Supernet.set_temperature`). In eval mode, under `edge_weights_mode` and under
`full_mixture`, every candidate runs as in DARTS.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cell import EDGES, Cell
from ..genotype import Genotype
from ..models import MODELS, create_model
from ..ops import OPS, Features

NUM_CANDIDATES = len(next(iter(OPS.values())))
assert all(len(r) == NUM_CANDIDATES for r in OPS.values()), "α is a dense (edges x candidates) array"


BackboneBuilder = Callable[..., nn.Module]
# how a mixed op runs in training: "none", every candidate (DARTS); "gumbel", one drawn per forward (GDAS)
SAMPLINGS = ("none", "gumbel")


class MixedOp(nn.Module):
    """softmax(α[group, edge])-weighted sum of every candidate of one operation set (DARTS' mixed op).

    `alpha` is the supernet's whole α (groups, 6, K), tied in by `Supernet`; the op reads its own row.
    With `normalize=False` the row is used as the edge's weights as it stands (architecture selection
    scores weights that no softmax gives, see `edge_weights_mode`). With `sampling`, a forward in
    training mode runs one candidate drawn from softmax(α) (see `sampled`).
    """

    alpha: nn.Parameter

    def __init__(self, op_set: str, channels: int, group: int, edge: int, sampling: bool = False) -> None:
        super().__init__()
        self.ops = nn.ModuleList(factory(channels) for factory in OPS[op_set].values())
        self.group, self.edge = group, edge
        self.normalize = True
        self.sampling, self.tau = sampling, 1.0  # τ: the relaxed sample's temperature, set by the search
        self.register_parameter("alpha", None)  # the supernet ties its α in once the groups are known

    def forward(self, x: Tensor | Features) -> Tensor:
        if self.alpha is None:
            raise RuntimeError("a mixed op runs inside a Supernet, which ties its α into every mixed op")
        a = self.alpha[self.group, self.edge]  # (K,)
        if self.sampling and self.normalize and self.training:
            return self.sampled(x, a)
        w = F.softmax(a, dim=-1) if self.normalize else a
        # squeeze candidates share one Features, so each statistic of x is computed once per edge
        outs = torch.stack([op(x) for op in self.ops])  # (K, B, C or 1, H or 1, W or 1)
        return torch.tensordot(w.to(outs.dtype), outs, dims=1)

    def sampled(self, x: Tensor | Features, a: Tensor) -> Tensor:
        """GDAS (Dong & Yang, CVPR 2019): h = one_hot(argmax(α + g)) in value, softmax((α + g) / τ) in gradient.

        g is Gumbel noise, so candidate k is drawn with probability softmax(α)_k whatever τ is. Only that
        candidate runs (a squeeze computes only its own statistic); the output is h_k · op_k(x) + Σ_{j≠k} h_j,
        whose value is op_k(x) and whose α gradient reaches every candidate through the relaxed sample.
        """
        h = F.gumbel_softmax(a, tau=self.tau, hard=True)
        k = int(h.argmax())  # the one host read of the step's edge: which module to run
        others = torch.cat([h[:k], h[k + 1:]]).sum()  # 0 in value
        out = self.ops[k](x)
        return h[k].to(out.dtype) * out + others.to(out.dtype)


class Supernet(nn.Module):
    """A backbone whose every attention slot holds a searchable cell.

    `backbone` is a name of `sase.models.MODELS`, "timm/<name>" for a timm ResNet-family model, or a
    callable `fn(attention, num_classes) -> nn.Module` that builds any network calling
    `attention(channels)` for each of its attention slots.
    """

    def __init__(
        self,
        backbone: str | BackboneBuilder = "resnet20",
        num_classes: int | None = None,
        per_stage: bool = False,
        sampling: str = "none",
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.per_stage, self.sampling = per_stage, sampling
        self._groups: dict[int, int] = {}  # block width -> α group
        self.net = build_backbone(backbone, self._make_cell, num_classes, **backbone_kwargs)
        if not self._groups:
            raise ValueError(f"backbone {backbone!r} has no attention slot: nothing to search")
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self._groups) if per_stage else 1, len(EDGES),
                                                     NUM_CANDIDATES))
        for m in self.mixed_ops():
            m.alpha = self.alpha  # tied: one Parameter, listed once by parameters() and named "alpha"
        self.register_state_dict_post_hook(_drop_tied_alpha)
        self.register_load_state_dict_pre_hook(_tie_loaded_alpha)

    def _make_cell(self, channels: int, device: Any = None, dtype: Any = None, **_: Any) -> Cell:
        group = self._groups.setdefault(channels, len(self._groups))
        group = group if self.per_stage else 0
        edges = [MixedOp(e.op_set, channels, group, i, sampling=self.sampling == "gumbel")
                 for i, e in enumerate(EDGES)]
        # (Wang et al., 2024) the merge BatchNorm is not affine while searching
        return Cell(edges, affine=False).to(device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def mixed_ops(self) -> Iterator[MixedOp]:
        return (m for m in self.modules() if isinstance(m, MixedOp))

    def set_temperature(self, tau: float) -> None:
        """τ of the mixed ops' relaxed samples (with sampling="gumbel"; GDAS anneals it from 10 to 0.1)."""
        if not tau > 0:
            raise ValueError(f"the temperature must be > 0, got {tau}")
        for m in self.mixed_ops():
            m.tau = tau

    # -- parameters, kept apart
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if n != "alpha")

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]

    # -- derivation
    def genotypes(self) -> list[Genotype]:
        """The argmax candidate of each edge, one genotype per α group."""
        return [derive_genotype(a) for a in self.alpha.detach()]

    def genotype(self) -> Genotype:
        """The derived genotype; with per-stage α, that of the group with the most confident choices."""
        return main_genotype(self, self.genotypes())

    @property
    def stage_widths(self) -> list[int]:
        """The block width each α group stands for (all widths in one group when α is shared)."""
        return list(self._groups)


@contextmanager
def edge_weights_mode(model: Supernet) -> Iterator[None]:
    """Inside, the mixed ops take α as their edge weights as it stands, without the softmax.

    `functional_call(model, {"alpha": weights}, ...)` then runs the supernet with any edge weights,
    one-hot or with a candidate removed (`sase.search.select`).
    """
    ops = list(model.mixed_ops())
    for m in ops:
        m.normalize = False
    try:
        yield
    finally:
        for m in ops:
            m.normalize = True


@contextmanager
def full_mixture(model: Supernet) -> Iterator[None]:
    """Inside, a sampling supernet runs every candidate of every edge, weighted by softmax(α), as in DARTS.

    For what measures the mixture rather than a sample of it (the α Hessian, `sase.search.hessian`).
    """
    ops = [m for m in model.mixed_ops() if m.sampling]
    for m in ops:
        m.sampling = False
    try:
        yield
    finally:
        for m in ops:
            m.sampling = True


def _tied_alpha_names(model: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}{name}.alpha" for name, m in model.named_modules() if isinstance(m, MixedOp)]


def _drop_tied_alpha(model: nn.Module, state: dict[str, Tensor], prefix: str, _: Any) -> None:
    """α once in a state dict, as "alpha": the copies under every mixed op are the same tensor."""
    for key in _tied_alpha_names(model, prefix):
        state.pop(key, None)


def _tie_loaded_alpha(model: nn.Module, state: dict[str, Tensor], prefix: str, *_: Any) -> None:
    """Loading: every tied name gets the "alpha" entry, so a strict load finds each one."""
    if prefix + "alpha" in state:
        for key in _tied_alpha_names(model, prefix):
            state[key] = state[prefix + "alpha"]


def main_genotype(model: Supernet, genotypes: list[Genotype]) -> Genotype:
    """Of one genotype per α group, that of the group whose α is most confident (the only one when shared)."""
    if len(genotypes) == 1:
        return genotypes[0]
    confidence = F.softmax(model.alpha.detach(), -1).amax(-1).sum(-1)  # (groups,)
    return genotypes[int(confidence.argmax())]


def derive_genotype(alpha: Tensor) -> Genotype:
    """Per-edge argmax of α (6, K) -> Genotype."""
    names = [list(OPS[e.op_set]) for e in EDGES]
    return Genotype(tuple(n[int(i)] for n, i in zip(names, alpha.argmax(-1))))


def build_backbone(name: str | BackboneBuilder, attention: Callable[..., nn.Module], num_classes: int | None,
                   **kwargs: Any) -> nn.Module:
    """A backbone of ours by name, "timm/<name>" through timm's `attn_layer` block hook, or a builder's."""
    if callable(name):
        return name(attention, num_classes, **kwargs)
    if name.startswith("timm/"):
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name[5:], pretrained=False, block_args=dict(attn_layer=attention), **extra, **kwargs)
    if name not in MODELS:
        raise ValueError(f"unknown backbone {name!r}; valid choices: {', '.join(MODELS)}, or timm/<resnet name>")
    return create_model(name, attention=attention, num_classes=num_classes, **kwargs)


@functools.cache
def parameter_free(op_set: str, name: str) -> bool:
    """Whether a candidate has no learned parameters (the ops DARTS tends to collapse onto).

    Built on the meta device, on first use: no memory, no draw from the global random stream.
    """
    with torch.device("meta"):
        return not any(True for _ in OPS[op_set][name](8).parameters())
