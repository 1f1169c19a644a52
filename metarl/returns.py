"""Discounted returns, generalised advantage estimation and masked statistics.

All functions take tensors whose **last** dimension is time (``[..., T]``) and a ``mask`` that is
1 on steps that belong to an episode and 0 after it ended. Episodes are finite-horizon: nothing is
bootstrapped at truncation (the MAML-RL objective).
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``G_t = sum_{k >= t} gamma^(k-t) r_k`` within each episode, zero outside it."""
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + gamma * running
        returns[..., t] = running
    return returns * mask


def generalized_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """GAE(γ, λ) (Schulman et al. 2016) with V = 0 after the last step of each episode.

    ``δ_t = r_t + γ V_{t+1} - V_t`` and ``A_t = δ_t + γλ A_{t+1}``. With ``lam=1`` this is
    ``G_t - V_t``, the REINFORCE-with-baseline advantage.
    """
    rewards, values = rewards * mask, values * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[..., 0])
    for t in reversed(range(deltas.shape[-1])):
        running = deltas[..., t] + gamma * lam * running
        advantages[..., t] = running
    return advantages * mask


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Tensor:
    """Mean of `x` over the entries where `mask` is 1 (over `dim`, or everything)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim, keepdim=keepdim) / mask.sum(dim, keepdim=keepdim).clamp(min=1)


def normalize(x: Tensor, mask: Tensor, dim: tuple[int, ...], eps: float = 1e-8) -> Tensor:
    """Shift and scale `x` to zero mean and unit variance over `dim`, on masked entries only."""
    mean = masked_mean(x, mask, dim, keepdim=True)
    var = masked_mean((x - mean) ** 2, mask, dim, keepdim=True)
    return (x - mean) / (var.sqrt() + eps) * mask
