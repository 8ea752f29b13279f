"""Beta-Decay, a regulariser of α against DARTS' collapse (β-DARTS, Ye et al., CVPR 2022).

    L_β(α) = mean over α groups and edges of logsumexp_k(α_edge,k)

is added to the α (validation) objective with a weight that grows over the search. Its gradient
is ∇α L_β = softmax(α_edge) / (number of edges): every α is pulled down in proportion to its own
softmax weight β, so the candidate that dominates an edge is decayed hardest. The paper argues that
this keeps the activated weights β = softmax(α) and their variance from growing too large, and
links that to robustness against collapse and to architectures that transfer better. Official
code: github.com/Sunshine-Ye/Beta-DARTS (it keeps α's usual Adam weight decay alongside).
"""
from __future__ import annotations

import torch
from torch import Tensor


def beta_decay_loss(alpha: Tensor) -> Tensor:
    """L_β of α (..., K): logsumexp over the K candidates, averaged over every other axis.

    For a supernet's α (groups, edges, K) this is the mean over groups and edges, as the official
    code takes it (`torch.logsumexp(alpha, dim=-1).mean()`).
    """
    return torch.logsumexp(alpha, dim=-1).mean()


def beta_decay_weight(lam: float, epoch: int, epochs: int) -> float:
    """The weight of L_β in `epoch` (counted from 0) of `epochs`: λ · epoch / epochs.

    A linear ramp from 0 in the first epoch, rising by λ / epochs each epoch (it would reach λ one
    epoch after the last). The official code sets `0 + 50 * epoch / 100` for every search: λ = 50
    over 100 epochs in these terms, whatever the real number of epochs (a 50-epoch search there
    ends at 24.5).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not 0 <= epoch <= epochs:
        raise ValueError(f"epoch must lie in [0, {epochs}], got {epoch}")
    return lam * epoch / epochs


__all__ = ["beta_decay_loss", "beta_decay_weight"]
