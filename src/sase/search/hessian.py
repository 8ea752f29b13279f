"""The dominant eigenvalue of the α Hessian of the validation loss, a signal of DARTS' collapse.

Zela et al. (ICLR 2020, "Understanding and Robustifying Differentiable Architecture Search") show
that the dominant eigenvalue of ∇²α L_val grows during searches that end in poor architectures; in
their account, with sharp curvature in α the final discretisation (α snapped to one-hot) costs much
validation loss.
Here it is found by power iteration on exact Hessian-vector products (double backward through
`torch.func.functional_call`, α the differentiated input), never forming the Hessian.

BatchNorm works as in the architect's α step: training mode, batch statistics, running statistics
written to copies of the buffers; a sampling supernet runs its full mixture (the Hessian is that of
the relaxation DARTS' argmax discretises). The model's parameters, buffers and train/eval flags are
left as they were.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .supernet import Supernet, full_mixture

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Every submodule in training (or eval) mode inside, each one's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def alpha_hvp(model: Supernet, batches: Sequence[Batch], v: Tensor, loss_fn: LossFn = F.cross_entropy) -> Tensor:
    """H v, H = ∇²α of the loss averaged over every sample of `batches`, at the model's w and α.

    `loss_fn` returns a batch mean; batch b is weighted by its share of the samples. One forward,
    one backward with a graph, and one double backward per batch.
    """
    weights = {n: p.detach() for n, p in model.named_weight_parameters()}
    alpha = model.alpha.detach().requires_grad_()
    total = sum(len(y) for _, y in batches)
    hv = torch.zeros_like(alpha)
    with module_mode(model, True), full_mixture(model), torch.enable_grad():
        for x, y in batches:
            x, y = x.to(alpha.device), y.to(alpha.device)
            buffers = {n: b.clone() for n, b in model.named_buffers()}
            logits = functional_call(model, ({**weights, "alpha": alpha}, buffers), (x,))
            loss = loss_fn(logits, y) * (len(y) / total)
            (grad,) = torch.autograd.grad(loss, alpha, create_graph=True)
            hv += torch.autograd.grad((grad * v).sum(), alpha)[0]
    return hv


def dominant_eigenvalue(
    model: Supernet,
    batches: Sequence[Batch],
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
) -> float:
    """The eigenvalue of largest magnitude of ∇²α L_val, with its sign, by power iteration.

    v ← Hv / ‖Hv‖ from a seeded random v; the estimate is the Rayleigh quotient vᵀHv (‖v‖ = 1).
    Stops after `iters` products, or once the estimate changes by at most `tol` relative to its
    size. Costs one `alpha_hvp` per iteration, i.e. per batch one forward, one backward and one
    double backward. (If the two extreme eigenvalues are ±λ of equal size, v does not settle and
    the estimate is not meaningful.)
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    if not batches:
        raise ValueError("the Hessian needs at least one batch")
    generator = torch.Generator().manual_seed(seed)
    alpha = model.alpha.detach()
    v = torch.randn(alpha.shape, generator=generator, dtype=alpha.dtype).to(alpha.device)
    v /= v.norm()
    estimate = previous = float("nan")
    for _ in range(iters):
        hv = alpha_hvp(model, batches, v, loss_fn)
        previous, estimate = estimate, float((v * hv).sum())
        norm = hv.norm()
        if norm == 0 or abs(estimate - previous) <= tol * abs(estimate):
            break
        v = hv / norm
    return estimate


__all__ = ["alpha_hvp", "dominant_eigenvalue", "module_mode"]
