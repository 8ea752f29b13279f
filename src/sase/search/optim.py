"""Optimisers for α: DARTS' Adam, and Adam with one second moment per edge.

Adam divides every coordinate's gradient by that coordinate's own running RMS, so two candidates of
an edge whose gradients keep the same sign move at the same speed, however different their sizes:
over a short search the favoured candidates of an edge rise in lockstep and the edge never decides
between them. `EdgeAdam` shares the second moment among the K candidates of an edge (the mean of
their squared gradients, as Adafactor factors its second moment over an axis; Shazeer & Stern, ICML
2018): each edge's step is still invariant to the loss scale, as Adam's is, but a candidate with a
twice larger gradient moves twice as far, so the evidence that separates candidates is kept.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

ARCH_OPTIMIZERS = ("adam", "edge_adam")


class EdgeAdam(torch.optim.Optimizer):
    """Adam whose second moment is averaged over the last axis (the candidates of an edge).

    Weight decay is added to the gradient (L2, as torch.optim.Adam does), and both moments are
    bias-corrected as in Adam (Kingma & Ba, ICLR 2015). The step count is a tensor beside the parameter,
    so a step reads nothing back to the host and can be recorded in a CUDA graph (`sase.search.graphs`).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p[..., :1])  # (..., 1): one per edge
                elif not torch.is_tensor(state["step"]) or state["step"].device != p.device:
                    # loaded from a checkpoint: written on another device, or when the count was a Python int
                    state["step"] = torch.as_tensor(state["step"], dtype=torch.float64).to(p.device)
                state["step"] += 1
                t = state["step"]
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).add_(grad.square().mean(-1, keepdim=True), alpha=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1 ** t).to(p.dtype)
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** t).to(p.dtype)
                p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))
        return loss


def arch_optimizer(name: str, params: Iterable[Tensor], lr: float, betas: tuple[float, float],
                   weight_decay: float, capturable: bool = False) -> torch.optim.Optimizer:
    """The α optimiser by name: "adam" (DARTS, Wang et al., 2024) or "edge_adam".

    `capturable`: Adam keeps its step count on the device, so its step can be recorded in a CUDA graph
    (EdgeAdam always does).
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, capturable=capturable)
    if name == "edge_adam":
        return EdgeAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown α optimiser {name!r}; valid choices: {', '.join(ARCH_OPTIMIZERS)}")


__all__ = ["ARCH_OPTIMIZERS", "EdgeAdam", "arch_optimizer"]
