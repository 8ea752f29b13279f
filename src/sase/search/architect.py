"""The architect: one α step of DARTS' bi-level optimisation (Wang et al., 2024), first or second order.

Second order follows DARTS (Liu et al., ICLR 2019): a virtual step
    w' = w - ξ (∇w L_train(w, α) + momentum * buffer + weight_decay * w)
then  ∇α L_val(w', α) - ξ ∇²_{α,w} L_train(w, α) · v,  v = ∇w' L_val(w', α),
the Hessian-vector product by a central finite difference (`order=2`) or by double backward
(`order="exact"`). Every loss is evaluated with `torch.func.functional_call` on a dict of tensors:
no second copy of the network, and the network's own weights and buffers are never written.

With `beta_decay` the α objective also holds weight · L_β(α), Beta-Decay (β-DARTS, Ye et al., CVPR
2022; see `regularizers`). L_β depends on α alone, so its gradient is added to the hypergradient of
any order; the loss an α step reports stays the plain validation loss.

Under torchrun each process holds its share of both batches, and every gradient of the step is
averaged over the processes where the single-process step would take it over the whole batch: the
virtual step's weight gradient, v = ∇w' L_val, and the α gradient itself (`torch.autograd.grad`
bypasses DistributedDataParallel's hooks, so this is done here). Every process thus takes the same w',
and the same α step, as one process on the whole batch (up to BatchNorm, whose batch statistics are
each process's own).

With `amp` the losses are computed under autocast (the attention cells themselves run in float32,
see `sase.ops.features.no_autocast`). Under fp16 every gradient is taken of the loss times the
gradient scaler's scale and divided back, so small half-precision gradients do not flush to zero; a
step whose α gradient still overflows is skipped. α and its gradient are float32 throughout. No
step reads a value back to the host except the overflow check under fp16.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..train.recipe import full_precision
from ..utils.distributed import average_
from .evidence import EdgeEvidence
from .regularizers import beta_decay_loss
from .optim import arch_optimizer
from .supernet import Supernet

Order = Literal[1, 2, "exact"]
Batch = tuple[Tensor, Tensor]
ORDERS: dict[str, Order] = {"1": 1, "2": 2, "exact": "exact"}


class Architect:
    """Updates α of a `Supernet` with Adam (the SASE paper's settings) or EdgeAdam on the validation loss."""

    def __init__(
        self,
        model: Supernet,
        w_optimizer: torch.optim.SGD,
        order: Order = 2,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 1e-3,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        fd_scale: float = 0.01,
        beta_decay: float = 0.0,
        optimizer: str = "adam",
        autocast: Callable[[], ContextManager] = contextlib.nullcontext,
        scaler: torch.amp.GradScaler | None = None,
        capturable: bool = False,
        track_evidence: bool = True,
    ) -> None:
        if order not in (1, 2, "exact"):
            raise ValueError(f"order must be 1, 2 or 'exact', got {order!r}")
        if beta_decay < 0:
            raise ValueError(f"beta_decay must be >= 0, got {beta_decay}")
        self.model, self.w_optimizer, self.order, self.loss_fn = model, w_optimizer, order, loss_fn
        self.fd_scale = fd_scale  # ε = fd_scale / ‖v‖ (Wang et al., 2024: 0.01)
        self.beta_decay = beta_decay  # λ of Beta-Decay
        # the weight of L_β in use: λ unless the search loop ramps it (`regularizers.beta_decay_weight`)
        self.beta_weight = beta_decay
        # "adam": Wang et al., 2024; "edge_adam": one second moment per edge (see sase.search.optim)
        # capturable: the step can be recorded in a CUDA graph (sase.search.graphs)
        self.optimizer = arch_optimizer(optimizer, model.arch_parameters(), lr, betas, weight_decay, capturable)
        self.autocast, self.scaler = autocast, scaler  # mixed precision: the search's, see the module's doc
        # each step's validation-loss gradient, summed for the verdict's indifference test (sase.search.evidence)
        self.evidence: EdgeEvidence | None = EdgeEvidence(model.alpha) if track_evidence else None

    def step(self, train_batch: Batch, val_batch: Batch, xi: float | None = None) -> Tensor | None:
        """One α step; returns the validation loss it measured, None when fp16 overflowed and the step was skipped.

        The loss is a tensor on the device: read it when you log, not per step. ξ defaults to the weights'
        current lr.
        """
        self.optimizer.zero_grad(set_to_none=True)
        grad, loss = self.validation_gradient(train_batch, val_batch, xi)
        if self.scaler is not None and not bool(torch.isfinite(grad).all()):
            return None  # as the weights' scaler skips their step; the scale is lowered by the weights' step
        if self.evidence is not None:
            self.evidence.add(grad, self.model.alpha)  # the validation loss's own gradient, without L_β
        self.model.alpha.grad = self.add_beta_decay(grad)
        self.optimizer.step()
        return loss

    def alpha_gradient(self, train_batch: Batch, val_batch: Batch, xi: float | None = None) -> tuple[Tensor, Tensor]:
        """(∇α of the chosen order + beta_weight · ∇α L_β, validation loss), without stepping anything."""
        grad, loss = self.validation_gradient(train_batch, val_batch, xi)
        return self.add_beta_decay(grad), loss

    def validation_gradient(self, train_batch: Batch, val_batch: Batch,
                            xi: float | None = None) -> tuple[Tensor, Tensor]:
        """The hypergradient averaged over the processes (itself in one process), and the validation loss."""
        grad, loss = self.hypergradient(train_batch, val_batch, xi)
        average_([grad])
        return grad, loss

    def add_beta_decay(self, grad: Tensor) -> Tensor:
        """grad + beta_weight · ∇α L_β(α) (grad itself when Beta-Decay is off)."""
        if not self.beta_weight:
            return grad
        alpha = self.model.alpha.detach().requires_grad_()
        return grad + self.beta_weight * torch.autograd.grad(beta_decay_loss(alpha), alpha)[0]

    def hypergradient(self, train_batch: Batch, val_batch: Batch, xi: float | None = None) -> tuple[Tensor, Tensor]:
        """(∇α of the validation loss, of the chosen order, validation loss)."""
        xi = self.w_optimizer.param_groups[0]["lr"] if xi is None else xi
        weights = {n: p.detach() for n, p in self.model.named_weight_parameters()}
        alpha = self.model.alpha.detach().requires_grad_()
        if self.order == 1:
            loss = self.loss({**weights, "alpha": alpha}, val_batch)
            return self.grad(loss, alpha)[0], loss.detach()

        virtual = self.virtual_step(weights, alpha, train_batch, xi)
        loss = self.loss({**virtual, "alpha": alpha}, val_batch)
        grads = self.grad(loss, [alpha, *virtual.values()])
        dalpha, v = grads[0], dict(zip(virtual, grads[1:]))
        average_(list(v.values()))  # v of the whole batch; dα is averaged with the final gradient
        hvp = self.hessian_vector_fd(weights, alpha, v, train_batch) if self.order == 2 else \
            self.hessian_vector_exact(weights, alpha, v, train_batch)
        return dalpha - xi * hvp, loss.detach()

    def virtual_step(self, weights: dict[str, Tensor], alpha: Tensor, batch: Batch, xi: float) -> dict[str, Tensor]:
        """w' = w - ξ (∇w L_train + momentum * buffer + weight_decay * w), as leaves that require grad."""
        params = {n: w.requires_grad_() for n, w in _fresh(weights).items()}
        loss = self.loss({**params, "alpha": alpha.detach()}, batch)
        grads = self.grad(loss, list(params.values()), allow_unused=True)
        average_(grads)  # the whole batch's gradient: every process takes the same virtual step
        group = self.w_optimizer.param_groups[0]
        momentum, decay = group["momentum"], group["weight_decay"]
        by_name = dict(self.model.named_weight_parameters())
        virtual = {}
        for (name, w), g in zip(weights.items(), grads):
            step = torch.zeros_like(w) if g is None else g.clone()
            step.add_(w, alpha=decay)
            buf = self.w_optimizer.state.get(by_name[name], {}).get("momentum_buffer")
            if buf is not None:
                step.add_(buf, alpha=momentum)
            virtual[name] = (w - xi * step).requires_grad_()
        return virtual

    def hessian_vector_fd(self, weights: dict[str, Tensor], alpha: Tensor, v: dict[str, Tensor],
                          batch: Batch) -> Tensor:
        """∇²_{α,w} L_train · v by a central difference, ε = fd_scale / ‖v‖."""
        eps = self.fd_scale / torch.sqrt(sum(t.square().sum() for t in v.values())).clamp_min(1e-12)
        grads = []
        for sign in (1.0, -1.0):
            shifted = {n: w + sign * eps * v[n] for n, w in weights.items()}
            loss = self.loss({**shifted, "alpha": alpha}, batch)
            grads.append(self.grad(loss, alpha)[0])
        return (grads[0] - grads[1]) / (2 * eps)

    def hessian_vector_exact(self, weights: dict[str, Tensor], alpha: Tensor, v: dict[str, Tensor],
                             batch: Batch) -> Tensor:
        """∇α (∇w L_train · v) by double backward."""
        params = {n: w.requires_grad_() for n, w in _fresh(weights).items()}
        loss = self.loss({**params, "alpha": alpha}, batch)
        gw = self.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
        dot = sum((g * v[n]).sum() for n, g in zip(params, gw) if g is not None)
        return self.grad(dot, alpha)[0]

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        """The loss of the network at `params`. BatchNorm statistics go to copies of the buffers."""
        x, y = batch
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        with self.autocast():
            logits = functional_call(self.model, (params, buffers), (x,))
        return self.loss_fn(full_precision(logits), y)

    def grad(self, output: Tensor, inputs: Tensor | list[Tensor], **kwargs) -> tuple[Tensor | None, ...]:
        """torch.autograd.grad of `output`; under fp16 taken at the scaler's scale and divided back."""
        if self.scaler is None:
            return torch.autograd.grad(output, inputs, **kwargs)
        scale = self.scaler.scale(torch.ones((), device=output.device))  # a tensor: no wait for the device
        grads = torch.autograd.grad(output * scale, inputs, **kwargs)
        return tuple(None if g is None else g / scale for g in grads)

    # -- checkpointing: α's optimiser state and the evidence of the epoch so far
    def state_dict(self) -> dict:
        state = self.optimizer.state_dict()
        return state if self.evidence is None else {**state, "evidence": self.evidence.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        evidence = state.pop("evidence", None)  # absent from checkpoints written before it was kept
        self.optimizer.load_state_dict(state)
        if self.evidence is not None:
            self.evidence.reset()
            if evidence is not None:
                self.evidence.load_state_dict(evidence)


def _fresh(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached aliases of the weights, so marking them as requiring grad leaves the model's own untouched."""
    return {n: w.detach() for n, w in weights.items()}
