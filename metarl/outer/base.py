"""The protocol every outer algorithm follows (Alg. 3, line 10), and what they share.

An outer algorithm is built from the policy, its inner loop (whose step sizes it also updates
when they are learned) and the ``outer`` config; `step` updates the meta-parameters from one
meta-batch and returns statistics for the logs; `state_dict` / `load_state_dict` carry its own
state (optimiser moments, penalty coefficients) through checkpoints, so that resuming is
bit-identical. `metarl.registry` lists the algorithms.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from metarl.config import OuterConfig
from metarl.inner import InnerLoop
from metarl.maml import MetaBatch


class OuterAlgorithm(Protocol):
    """Updates θ (and learned inner step sizes) from a meta-batch."""

    def __init__(self, policy: nn.Module, inner: InnerLoop, config: OuterConfig) -> None: ...

    def step(self, batch: MetaBatch) -> dict[str, float]:
        """One outer update from `batch`; returns statistics (TensorBoard tags)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def meta_parameters(policy: nn.Module, inner: InnerLoop) -> list[Tensor]:
    """What the outer loop learns: θ, then the learned inner step sizes (if any)."""
    return [*policy.parameters(), *inner.learned_parameters()]
