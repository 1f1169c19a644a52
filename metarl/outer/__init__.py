"""Outer algorithms (Alg. 3, line 10): one file each, behind `metarl.outer.base.OuterAlgorithm`.

`make_algorithm` builds the one a config names, from `metarl.registry.OUTER_ALGORITHMS`.
"""

from __future__ import annotations

from torch import nn

from metarl.config import OuterConfig
from metarl.inner import InnerLoop
from metarl.outer.base import OuterAlgorithm
from metarl.registry import OUTER_ALGORITHMS


def make_algorithm(policy: nn.Module, inner: InnerLoop, config: OuterConfig) -> OuterAlgorithm:
    """The outer algorithm ``config.algo`` for `policy` and its inner loop."""
    return OUTER_ALGORITHMS[config.algo].load()(policy, inner, config)


__all__ = ["OuterAlgorithm", "make_algorithm"]
