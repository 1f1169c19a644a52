"""The outer algorithms metarl knows: one entry each, read by config validation, ``--help`` and training.

An entry names the class that implements the algorithm (``module:Class``, loaded when a run uses
it, as Gymnasium's registry loads environments), says in one line what it is and where it comes
from, and lists the ``outer.*`` settings it reads: config validation refuses a setting the chosen
algorithm would ignore. Adding an algorithm is one file under ``metarl/outer/`` (a class with the
`metarl.outer.base.OuterAlgorithm` protocol) and one entry here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """One outer algorithm: where it lives, what it is, which ``outer.*`` keys it reads."""

    entry_point: str  # "module:Class"
    summary: str
    reference: str
    settings: tuple[str, ...]
    estimator: str = "reinforce"  # the inner objective when inner.estimator is null

    def load(self) -> Any:
        """The class named by `entry_point`."""
        module, name = self.entry_point.split(":")
        return getattr(importlib.import_module(module), name)


_TRUST_REGION = ("max_kl", "cg_iters", "cg_damping", "curvature_stride", "curvature_precision")
_LINE_SEARCH = ("ls_max_steps", "ls_backtrack_ratio")
_CLIPPED = ("lr", "epochs", "clip", "max_grad_norm", "precision")

OUTER_ALGORITHMS: dict[str, AlgorithmSpec] = {
    "trpo": AlgorithmSpec(
        "metarl.outer.trpo:TRPO",
        "MAML-TRPO: a natural-gradient step within a KL trust region between old and new adapted policies "
        "(conjugate gradient, line search); the MAML paper's outer loop",
        "Finn, Abbeel & Levine 2017; Schulman et al. 2015",
        (*_TRUST_REGION, *_LINE_SEARCH),
    ),
    "adam": AlgorithmSpec(
        "metarl.outer.gradient:Adam",
        "one Adam step on the meta-objective per meta-batch",
        "Finn, Abbeel & Levine 2017 (Alg. 3, line 10); Kingma & Ba 2015",
        ("lr", "max_grad_norm"),
    ),
    "sgd": AlgorithmSpec(
        "metarl.outer.gradient:SGD",
        "one plain gradient step on the meta-objective per meta-batch (Alg. 3, line 10 as written)",
        "Finn, Abbeel & Levine 2017",
        ("lr", "max_grad_norm"),
    ),
    "ppo": AlgorithmSpec(
        "metarl.outer.ppo:PPO",
        "MAML-PPO: several Adam epochs of PPO's clipped surrogate on one meta-batch, re-adapting through θ "
        "every epoch; no conjugate gradient",
        "Schulman et al. 2017; Rothfuss et al. 2019",
        _CLIPPED,
    ),
    "promp": AlgorithmSpec(
        "metarl.outer.promp:ProMP",
        "ProMP: MAML-PPO with the LVC inner estimator and a KL penalty (adaptive with outer.adaptive_kl) "
        "between the sampling and the current pre-update policy",
        "Rothfuss et al. 2019",
        (*_CLIPPED, "kl_target", "kl_coef", "adaptive_kl"),
        estimator="lvc",
    ),
}
