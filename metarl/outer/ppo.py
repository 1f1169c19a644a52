"""MAML-PPO: several Adam epochs of PPO's clipped surrogate on one meta-batch (Schulman et al. 2017).

Each epoch adapts again from the current θ (second order, through the inner step), evaluates the
adapted policies on the post-adaptation episodes, and takes one Adam step on

    L_CLIP(θ) = −mean_t min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t),   r_t = π_θ'(θ)(a_t|s_t) / π_old(a_t|s_t),

with π_old the adapted policy that sampled the episodes. No conjugate gradient: the clip keeps
the epochs close to the sampling policy. ProMP (`metarl.outer.promp`) adds its KL penalty.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from metarl.config import OuterConfig
from metarl.episodes import Episodes
from metarl.functional import Params, detach, detach_distribution, distribution, flat, parameters_of, per_task
from metarl.inner import InnerLoop, check_finite
from metarl.maml import MetaBatch, inner_loss_stats, mean_kl, outer_statistics, surrogate_loss
from metarl.outer.base import meta_parameters
from metarl.returns import masked_mean


def clipped_surrogate(log_probs: Tensor, episodes: Episodes, clip: float) -> Tensor:
    """PPO's clipped objective as a loss, averaged over each task's steps, then over tasks.

    `log_probs` are the current policy's on ``episodes.actions``; ``episodes.log_probs`` the
    sampling policy's. At the sampling parameters it equals the unclipped surrogate; a step whose
    ratio left ``[1 − clip, 1 + clip]`` in the direction of its advantage has no gradient.
    """
    ratio = torch.exp(log_probs - episodes.log_probs)
    advantages = episodes.advantages
    objective = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -masked_mean(objective, episodes.mask, dim=(-2, -1)).mean()


class PPO:
    """MAML-PPO over θ (and learned inner step sizes): `epochs` Adam steps per meta-batch."""

    def __init__(self, policy: nn.Module, inner: InnerLoop, config: OuterConfig) -> None:
        self.policy, self.inner, self.config = policy, inner, config
        self.parameters = meta_parameters(policy, inner)
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.lr)

    def prepare(self, batch: MetaBatch) -> Any:
        """What a penalty needs from before the first epoch (ProMP: the sampling policies); none here."""
        return None

    def penalty(self, batch: MetaBatch, policies: list[Distribution], prepared: Any) -> Tensor | None:
        """An extra term of each epoch's loss, given π_θ^(k) on every inner step's observations
        (`InnerLoop.adaptation`; ProMP's KL penalty); none here."""
        return None

    def finish(self, batch: MetaBatch, prepared: Any, policies: list[Distribution], stats: dict[str, float]) -> None:
        """After the epochs, given π_θ^(k) on every inner step's observations at the new θ: add
        statistics, adapt coefficients (ProMP); nothing here."""

    def step(self, batch: MetaBatch) -> dict[str, float]:
        """`epochs` Adam steps on the clipped meta-objective (Alg. 3, line 10); returns statistics."""
        policy, inner, config = self.policy, self.inner, self.config
        inner_loss_before = inner_loss_stats(policy, batch, inner)
        prepared = self.prepare(batch)
        losses, grad_norms = [], []
        old_pi = None
        for _ in range(config.epochs):
            with self._precision():
                # Adapt again from the current θ every epoch: the meta-gradient flows through the inner step.
                path, inner_policies = self._adaptation(batch)
                pi = distribution(policy, path[-1], batch.outer.observations)
                log_probs = pi.log_prob(batch.outer.actions).float()
                penalty = self.penalty(batch, inner_policies, prepared)
            if old_pi is None:  # the adapted policies at the meta-batch's θ, for the KL statistic
                old_pi = detach_distribution(pi) or distribution(policy, detach(path[-1]), batch.outer.observations)
            loss = clipped_surrogate(log_probs, batch.outer, config.clip)
            losses.append(loss.item())
            if penalty is not None:
                loss = loss + penalty.float()
            self.optimizer.zero_grad()
            loss.backward()
            check_finite("meta-gradient", [p.grad for p in self.parameters if p.grad is not None])
            if config.max_grad_norm is not None:
                grad_norms.append(nn.utils.clip_grad_norm_(self.parameters, config.max_grad_norm).item())
            else:
                grad_norms.append(flat([p.grad for p in self.parameters]).norm().item())
            self.optimizer.step()
            check_finite("parameters after the outer step", self.parameters)
        # At the new θ, in the epochs' arithmetic, like `old_pi`. Against the float32 sampling
        # policies (ProMP's inner KLs), bfloat16 adds under 1e-6 to KLs of about 0.01 (2D navigation).
        with self._precision():
            path, inner_policies = self._adaptation(batch, create_graph=False)
        with torch.no_grad(), self._precision():
            pi = distribution(policy, path[-1], batch.outer.observations)
            loss_after = surrogate_loss(policy, path[-1], batch.outer, pi).item()
            kl_after = mean_kl(old_pi, pi, batch.outer.mask).item()
        stats = {
            "loss/outer": losses[0],
            "loss/outer_after": loss_after,
            **inner_loss_before,
            "policy/kl": kl_after,
            **outer_statistics(policy, batch, old_pi),
            "optim/grad_norm": grad_norms[0],
        }
        self.finish(batch, prepared, inner_policies, stats)
        return stats

    def _precision(self) -> torch.autocast:
        """The arithmetic of the epochs' policy evaluations (``outer.precision``)."""
        device = next(self.policy.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16")

    def current_path(self, batch: MetaBatch) -> list[Params]:
        """θ^(0), …, θ' at the current θ, without a graph (what sampling recorded, while θ is unchanged)."""
        recorded = batch.adaptation_at(self.policy, self.inner)
        return recorded if recorded is not None else self._adaptation(batch, create_graph=False)[0]

    def _adaptation(self, batch: MetaBatch, create_graph: bool = True) -> tuple[list[Params], list[Distribution]]:
        """θ^(0) = θ, θ^(1), …, θ' per task, differentiable in θ (second order unless first-order),
        and π_θ^(k) on every inner step's observations (`InnerLoop.adaptation`). Without
        `create_graph`: constants (statistics at the current θ)."""
        if not create_graph:
            theta = per_task(detach(parameters_of(self.policy)), len(batch.tasks))
            with torch.no_grad():
                path, policies = self.inner.adaptation(self.policy, theta, batch.inner, create_graph=False)
            return [detach(p) for p in path], policies
        theta = per_task(parameters_of(self.policy), len(batch.tasks))
        return self.inner.adaptation(self.policy, theta, batch.inner, create_graph=not self.inner.first_order)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def inner_kls(batch: MetaBatch, new: list[Distribution], old: list[Distribution]) -> list[Tensor]:
    """Per inner step k: the mean KL between the policy that sampled ``batch.inner[k]`` (`old`) and
    the current π_θ^(k) (`new`) on those observations."""
    return [mean_kl(o, n, episodes.mask) for o, n, episodes in zip(old, new, batch.inner, strict=True)]
