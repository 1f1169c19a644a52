"""A plain gradient step on the meta-objective: Alg. 3, line 10 as written (SGD), or with Adam."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metarl.config import OuterConfig
from metarl.functional import flat
from metarl.inner import InnerLoop, check_finite
from metarl.maml import MetaBatch, inner_loss_stats, loss_and_kl, meta_loss, outer_statistics
from metarl.outer.base import meta_parameters


class GradientStep:
    """θ ← θ − β ∇θ Σ_i L(θ'_i(θ)) with the torch optimiser `optimizer_class`, one step per meta-batch."""

    optimizer_class: type[torch.optim.Optimizer]

    def __init__(self, policy: nn.Module, inner: InnerLoop, config: OuterConfig) -> None:
        self.policy, self.inner, self.config = policy, inner, config
        self.parameters = meta_parameters(policy, inner)
        self.optimizer = self.optimizer_class(self.parameters, lr=config.lr)

    def step(self, batch: MetaBatch) -> dict[str, float]:
        policy, inner, parameters = self.policy, self.inner, self.parameters
        inner_loss_before = inner_loss_stats(policy, batch, inner)
        loss, old_pi = meta_loss(policy, batch, inner)
        self.optimizer.zero_grad()
        loss.backward()
        check_finite("meta-gradient", [p.grad for p in parameters if p.grad is not None])
        if self.config.max_grad_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
        else:
            grad_norm = flat([p.grad for p in parameters]).norm()
        self.optimizer.step()
        check_finite("parameters after the outer step", parameters)
        loss_after, kl_after = loss_and_kl(policy, batch, inner, old_pi)
        return {
            "loss/outer": loss.item(),
            "loss/outer_after": loss_after,
            **inner_loss_before,
            "policy/kl": kl_after,
            **outer_statistics(policy, batch, old_pi),
            "optim/grad_norm": grad_norm.item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class Adam(GradientStep):
    """One Adam step on the meta-objective per meta-batch."""

    optimizer_class = torch.optim.Adam


class SGD(GradientStep):
    """One plain gradient step on the meta-objective per meta-batch."""

    optimizer_class = torch.optim.SGD
