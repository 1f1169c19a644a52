"""Model-Agnostic Meta-Learning for reinforcement learning (Finn, Abbeel & Levine 2017, Algorithm 3).

    for each task T_i in the meta-batch:
        D_i  ← episodes of f_θ on T_i                         (line 5)
        θ'_i = θ − α ∇θ L_Ti(f_θ; D_i)                        (lines 6–7, `metarl.inner`)
        D'_i ← episodes of f_θ'_i on T_i                      (line 8)
    θ ← outer step on Σ_i L_Ti(f_θ'_i(θ); D'_i)               (line 10, `metarl.outer`)

This module is the meta-batch (lines 5–8: `sample_meta_batch`) and the meta-objective of line 10
(`meta_loss`), which every outer algorithm optimises in its own way. Everything is batched over
tasks: parameters carry a leading task dimension, so the inner gradients of all tasks come from
one backward pass (each task's loss depends on its own slice). With the ``reinforce`` inner
estimator this is the standard MAML-RL gradient (as in the paper and pytorch-maml-rl): it
differentiates through the inner update but not through the sampling distribution of D_i; the
``lvc`` and ``dice`` estimators add that dependence (`metarl.inner`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from metarl.config import AdvantageConfig
from metarl.episodes import Episodes
from metarl.functional import Params, detach, detach_distribution, distribution, flat, parameters_of, per_task
from metarl.inner import InnerLoop, check_finite, estimate_advantages
from metarl.returns import masked_mean
from metarl.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class MetaBatch:
    """Episodes of a meta-batch: ``inner[k]`` was sampled with the policy adapted k times, `outer`
    with the fully adapted policy (``len(inner)`` steps)."""

    tasks: list[Any]
    inner: tuple[Episodes, ...]
    outer: Episodes
    returns: tuple[Tensor, ...]  # mean episode return per task [B] after 0, 1, …, len(inner) steps
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # What sampling computed on the way, which the outer step reuses while the meta-parameters are
    # unchanged: their flat values (θ, and learned step sizes), the adapted parameters θ^(1), …,
    # θ^(K) = θ' per task, and each inner step's loss per task.
    sampled_with: Tensor | None = None
    adapted: tuple[Params, ...] = ()
    inner_losses: tuple[Tensor, ...] = ()
    # Info metrics (e.g. success) per task [B] after 0, 1, …, len(inner) steps: `Episodes.mean_metrics`.
    metrics: tuple[dict[str, Tensor], ...] = ()
    # π_θ^(k) on inner step k's observations, as each inner step evaluated them (detached; None
    # where the policy's distribution cannot be detached).
    inner_policies: tuple[Distribution | None, ...] = ()

    def adaptation_at(self, policy: nn.Module, inner: InnerLoop) -> list[Params] | None:
        """θ^(0), θ^(1), …, θ' per task if the batch was sampled with the current meta-parameters, else None."""
        if self.sampled_with is None or not torch.equal(meta_parameters_flat(policy, inner), self.sampled_with):
            return None
        return [per_task(detach(parameters_of(policy)), len(self.tasks)), *self.adapted]

    def inner_policies_at(self, policy: nn.Module, inner: InnerLoop) -> list[Distribution] | None:
        """π_θ^(k) on every inner step's observations if the batch was sampled with the current
        meta-parameters (and the policies were recorded), else None."""
        if not self.inner_policies or any(pi is None for pi in self.inner_policies):
            return None
        return list(self.inner_policies) if self.adaptation_at(policy, inner) is not None else None


def meta_parameters_flat(policy: nn.Module, inner: InnerLoop) -> Tensor:
    """θ and the learned step sizes (if any), as one detached vector."""
    return flat([*policy.parameters(), *inner.learned_parameters()]).detach()


def sample_meta_batch(
    sampler: Sampler, policy: nn.Module, tasks: Sequence[Any], inner: InnerLoop, advantages: AdvantageConfig, steps: int
) -> MetaBatch:
    """Alg. 3, lines 5–8 for every task at once: sample, adapt (`steps` times), sample again with θ'."""
    timings = {"sample_s": 0.0, "advantages_s": 0.0, "adapt_s": 0.0}

    metrics: list[dict[str, Tensor]] = []

    def sample_with(params: Params) -> tuple[Episodes, Tensor]:
        start = time.perf_counter()
        sampled = sampler.sample(policy, params, tasks)
        middle = time.perf_counter()
        episodes = estimate_advantages(sampled, advantages)
        timings["sample_s"] += middle - start
        timings["advantages_s"] += time.perf_counter() - middle
        metrics.append(sampled.mean_metrics)
        return episodes, sampled.mean_returns

    sampled_with = meta_parameters_flat(policy, inner).clone()
    params = per_task(detach(parameters_of(policy)), len(tasks))
    inner_episodes, returns, adapted, inner_losses, inner_policies = [], [], [], [], []
    for _ in range(steps):
        episodes, mean_returns = sample_with(params)
        start = time.perf_counter()
        params, losses, pi = inner.step_with_policy(policy, params, episodes, create_graph=False)
        params = detach(params)
        inner_policies.append(detach_distribution(pi))
        check_finite("adapted parameters after the inner step", params, tasks)
        timings["adapt_s"] += time.perf_counter() - start
        inner_episodes.append(episodes)
        returns.append(mean_returns)
        adapted.append(params)
        inner_losses.append(losses)
    outer_episodes, mean_returns = sample_with(params)
    returns.append(mean_returns)
    return MetaBatch(
        list(tasks),
        tuple(inner_episodes),
        outer_episodes,
        tuple(returns),
        timings,
        sampled_with=sampled_with,
        adapted=tuple(adapted),
        inner_losses=tuple(inner_losses),
        metrics=tuple(metrics),
        inner_policies=tuple(inner_policies),
    )


def adapted_parameters(policy: nn.Module, batch: MetaBatch, inner: InnerLoop, *, create_graph: bool) -> Params:
    """θ'_i(θ) for every task of the batch, recomputed from the policy's current θ."""
    params = per_task(parameters_of(policy), len(batch.tasks))
    return inner.adapt(policy, params, batch.inner, create_graph=create_graph)


def surrogate_loss(policy: nn.Module, adapted: Params, episodes: Episodes, pi: Distribution | None = None) -> Tensor:
    """Post-adaptation loss ``-E[π_θ'(a|s) / π_old(a|s) · Â]``, averaged over tasks.

    At the sampling parameters the ratio is 1 and its gradient is the policy gradient. `pi`: π_θ'
    on ``episodes.observations``, if already computed.
    """
    return surrogate_losses(policy, adapted, episodes, pi).mean()


def surrogate_losses(policy: nn.Module, adapted: Params, episodes: Episodes, pi: Distribution | None = None) -> Tensor:
    """`surrogate_loss` of every task, ``[B]``."""
    pi = distribution(policy, adapted, episodes.observations) if pi is None else pi
    log_probs = pi.log_prob(episodes.actions)
    ratio = torch.exp(log_probs - episodes.log_probs)
    return -masked_mean(ratio * episodes.advantages, episodes.mask, dim=(-2, -1))


def mean_kl(old: Distribution, new: Distribution, mask: Tensor) -> Tensor:
    """KL(old ‖ new) averaged over the valid steps of each task, then over tasks."""
    return masked_mean(kl_divergence(old, new), mask, dim=(-2, -1)).mean()


def meta_loss(policy: nn.Module, batch: MetaBatch, inner: InnerLoop) -> tuple[Tensor, Distribution]:
    """The meta-objective ``mean_i L(θ'_i(θ); D'_i)`` (Alg. 3, line 10), differentiable in θ (and
    learned step sizes), and the current adapted policies π_θ' on the post-adaptation observations
    (detached, for KLs)."""
    adapted = adapted_parameters(policy, batch, inner, create_graph=not inner.first_order)
    with torch.no_grad():
        old_pi = distribution(policy, detach(adapted), batch.outer.observations)
    return surrogate_loss(policy, adapted, batch.outer), old_pi


def loss_and_kl(policy: nn.Module, batch: MetaBatch, inner: InnerLoop, old_pi: Distribution) -> tuple[float, float]:
    """Meta-objective and mean KL from `old_pi` at the current meta-parameters (no graph)."""
    adapted = adapted_parameters(policy, batch, inner, create_graph=False)
    with torch.no_grad():
        pi = distribution(policy, adapted, batch.outer.observations)
        loss = surrogate_loss(policy, adapted, batch.outer, pi)
        kl = mean_kl(old_pi, pi, batch.outer.mask)
    return loss.item(), kl.item()


def inner_loss_stats(policy: nn.Module, batch: MetaBatch, inner: InnerLoop) -> dict[str, float]:
    """The first inner step's objective at the current θ, averaged over tasks (none without inner steps)."""
    if not batch.inner:
        return {}
    if batch.inner_losses and batch.adaptation_at(policy, inner) is not None:  # recorded while sampling
        return {"loss/inner": batch.inner_losses[0].mean().item()}
    with torch.no_grad():
        params = per_task(detach(parameters_of(policy)), len(batch.tasks))
        return {"loss/inner": inner.loss(policy, params, batch.inner[0]).mean().item()}


def outer_statistics(policy: nn.Module, batch: MetaBatch, old_pi: Distribution) -> dict[str, float]:
    """The policy's entropy on the post-adaptation steps (every outer algorithm logs it)."""
    return {"policy/entropy": masked_mean(old_pi.entropy(), batch.outer.mask).item()}
