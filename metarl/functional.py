"""Parameters as plain dicts of tensors: the substrate of the differentiable inner loop.

A policy is an ordinary ``nn.Module``; it is evaluated with explicit parameters through
``torch.func.functional_call``, so adaptation never mutates the module. Parameters may carry a
leading task dimension (one parameter set per task); the policies broadcast over it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

Params = dict[str, Tensor]


def parameters_of(module: nn.Module) -> Params:
    """The module's own parameters (θ), as a dict that shares storage with the module."""
    return dict(module.named_parameters())


def distribution(policy: nn.Module, params: Params, observations: Tensor) -> Distribution:
    """Evaluate `policy` with `params` instead of its own parameters; the module is unchanged.

    metarl's policies take the parameters directly (``forward_with``); any other module is
    evaluated through ``torch.func.functional_call``.
    """
    forward_with = getattr(policy, "forward_with", None)
    if forward_with is not None:
        return forward_with(params, observations)
    return torch.func.functional_call(policy, params, (observations,))


def detach_distribution(pi: Distribution) -> Distribution | None:
    """`pi` cut from the autograd graph (the same values); None for a kind metarl's policies do not
    return (the caller evaluates the policy again instead)."""
    if isinstance(pi, Independent):
        base = detach_distribution(pi.base_dist)
        return None if base is None else Independent(base, pi.reinterpreted_batch_ndims)
    if isinstance(pi, Normal):
        return Normal(pi.loc.detach(), pi.scale.detach())
    if isinstance(pi, Categorical):
        return Categorical(logits=pi.logits.detach())
    return None


def per_task(params: Params, num_tasks: int) -> Params:
    """Repeat θ along a new leading task dimension (a differentiable view, no copy)."""
    return {name: p.expand(num_tasks, *p.shape) for name, p in params.items()}


def detach(params: Params) -> Params:
    """Cut `params` from the autograd graph."""
    return {name: p.detach() for name, p in params.items()}


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def assign(tensors: Sequence[Tensor], vector: Tensor) -> None:
    """Copy consecutive pieces of `vector` into `tensors` in place (the inverse of `flat`)."""
    with torch.no_grad():
        offset = 0
        for t in tensors:
            t.copy_(vector[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
