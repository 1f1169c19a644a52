"""Trust-region optimisation helpers (Schulman et al. 2015): conjugate gradient and a KL-constrained
backtracking line search (the curvature products live in `metarl.curvature`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given ``x -> A x``.

    Returns ``x`` and ``A x``. CG keeps the residual ``r = b - A x`` up to date, so ``A x = b - r``
    comes for free (saving the extra product TRPO needs for the step's curvature ``xᵀ A x``).
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    if rr < tol:  # b = 0 (e.g. all advantages zero): x = 0, not 0/0
        return x, b - r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = r @ r
        if rr_next < tol:
            break
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x, b - r


def line_search(
    evaluate: Callable[[Tensor], tuple[float, float]],
    full_step: Tensor,
    loss_before: float,
    max_kl: float,
    max_steps: int,
    ratio: float,
) -> tuple[int | None, float, float]:
    """Try steps ``ratio^k · full_step``; accept the first that lowers the loss within `max_kl`.

    Args:
        evaluate: ``step -> (loss, kl)`` for the parameters moved by `step`.
    Returns:
        The accepted backtracking index (None if no step was accepted), and the loss and KL of the
        last step tried.
    """
    loss, kl = loss_before, 0.0
    for k in range(max_steps):
        loss, kl = evaluate(ratio**k * full_step)
        if loss < loss_before and kl <= max_kl:
            return k, loss, kl
    return None, loss, kl
