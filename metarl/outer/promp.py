"""ProMP: Proximal Meta-Policy Search (Rothfuss et al. 2019).

MAML-PPO (`metarl.outer.ppo`) with two changes:

- the inner step uses the low-variance curvature (LVC) objective (``inner.estimator: lvc``, the
  default for ``outer.algo: promp``), so the meta-gradient accounts for how the pre-update
  sampling distribution depends on θ;
- the loss adds ``η_k · KL(π_θo^(k) ‖ π_θ^(k))`` for every inner step k: the KL between the policy
  that sampled that step's episodes and the current pre-update policy, 0 with zero gradient at the
  first epoch, keeping the epochs from drifting away from the sampling distribution.

With ``outer.adaptive_kl`` each coefficient η_k is halved when its KL ended below target/1.5 and
doubled above 1.5 × target (``outer.kl_target``) after every meta-batch, as in ProMP's code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from metarl.config import OuterConfig
from metarl.functional import Params, distribution
from metarl.inner import InnerLoop
from metarl.maml import MetaBatch
from metarl.outer.ppo import PPO, inner_kls


def adapt_kl_coef(coef: float, kl: float, target: float) -> float:
    """ProMP's rule: halve the coefficient below target/1.5, double it above 1.5 × target."""
    if kl < target / 1.5:
        return coef / 2
    if kl > target * 1.5:
        return coef * 2
    return coef


class ProMP(PPO):
    """MAML-PPO with the LVC inner objective and a KL penalty on every inner step's policy."""

    def __init__(self, policy: nn.Module, inner: InnerLoop, config: OuterConfig) -> None:
        super().__init__(policy, inner, config)
        self.kl_coefs: list[float] | None = None  # η_k, one per inner step, set at the first meta-batch

    def prepare(self, batch: MetaBatch) -> list[Distribution]:
        """The policies that sampled each inner step's episodes: θ^(k) at the meta-batch's θ."""
        if self.kl_coefs is None:
            self.kl_coefs = [self.config.kl_coef] * len(batch.inner)
        return self._inner_policies(batch)

    def penalty(self, batch: MetaBatch, policies: list[Distribution], prepared: list[Distribution]) -> Tensor:
        """``Σ_k η_k KL(π_θo^(k) ‖ π_θ^(k))``, each KL a mean over steps and tasks, differentiable in θ
        (through `policies`, the inner steps' own evaluations of π_θ^(k))."""
        kls = inner_kls(batch, policies, prepared)
        return sum((coef * kl for coef, kl in zip(self.kl_coefs, kls, strict=True)), torch.zeros(()))

    def finish(
        self, batch: MetaBatch, prepared: list[Distribution], policies: list[Distribution], stats: dict[str, float]
    ) -> None:
        """The inner KLs after the epochs, and the coefficients (adapted to them when ``outer.adaptive_kl``)."""
        with torch.no_grad():
            kls = [kl.item() for kl in inner_kls(batch, policies, prepared)]
        stats["policy/inner_kl"] = sum(kls) / max(len(kls), 1)
        stats["optim/kl_coef"] = sum(self.kl_coefs) / max(len(self.kl_coefs), 1)
        if self.config.adaptive_kl:
            target = self.config.kl_target
            self.kl_coefs = [adapt_kl_coef(coef, kl, target) for coef, kl in zip(self.kl_coefs, kls, strict=True)]

    def _inner_policies(self, batch: MetaBatch) -> list[Distribution]:
        """π_θ^(k) on inner step k's observations, at the current θ (constants): as sampling's
        inner steps evaluated them, while θ is unchanged."""
        recorded = batch.inner_policies_at(self.policy, self.inner)
        if recorded is not None:
            return recorded
        with torch.no_grad():
            return self._policies(batch, self.current_path(batch))

    def _policies(self, batch: MetaBatch, path: list[Params]) -> list[Distribution]:
        """π_θ^(k) on inner step k's observations for the adaptation path `path`."""
        return [distribution(self.policy, p, e.observations) for p, e in zip(path, batch.inner, strict=False)]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl_coefs": self.kl_coefs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kl_coefs = state["kl_coefs"]
