"""metarl: model-agnostic meta-reinforcement learning for robots, on Gymnasium and PyTorch.

import metarl
run_dir = metarl.train(metarl.load_config("experiments/navigation_2d.yaml"))
run_dir = metarl.resume(run_dir)           # continue a stopped run exactly where it stopped
result = metarl.evaluate(run_dir)          # adaptation curve on held-out tasks
policy = metarl.load(run_dir)              # adapt to a new robot variant, then act
adapted = policy.adapt(env, episodes=20)
action = adapted.act(observation)

The names below are imported on first use, so that ``import metarl.cli`` (the ``metarl`` command)
and worker processes start without loading torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Idle OpenMP threads of torch sleep instead of spinning. Spinning threads take the cores that
# another training on the same machine (a second seed) is computing on: two runs side by side were
# 2.4-4.1x slower each instead of 1.3-1.8x. Alone on an idle machine, spinning threads are faster
# where the outer step runs many short parallel operations (ProMP on 2D navigation: 0.48 s per
# iteration against 0.63 s): set OMP_WAIT_POLICY=ACTIVE there (README, "Speed").
# OpenMP reads this once, when torch is first imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "metarl.config",
    "ConfigError": "metarl.errors",
    "MetarlError": "metarl.errors",
    "config_from_dict": "metarl.config",
    "load_config": "metarl.config",
    "EvaluationResult": "metarl.evaluation",
    "MetaPolicy": "metarl.evaluation",
    "evaluate": "metarl.evaluation",
    "load": "metarl.evaluation",
    "InnerLoop": "metarl.inner",
    "make_algorithm": "metarl.outer",
    "sample_meta_batch": "metarl.maml",
    "Episodes": "metarl.episodes",
    "Sampler": "metarl.sampler",
    "TaskDistribution": "metarl.tasks",
    "make_env": "metarl.make",
    "resume": "metarl.training",
    "train": "metarl.training",
}

__all__ = [
    "Config",
    "ConfigError",
    "Episodes",
    "EvaluationResult",
    "MetaPolicy",
    "MetarlError",
    "Sampler",
    "TaskDistribution",
    "InnerLoop",
    "config_from_dict",
    "evaluate",
    "load",
    "load_config",
    "make_env",
    "make_algorithm",
    "resume",
    "sample_meta_batch",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'metarl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from metarl.config import Config, config_from_dict, load_config
    from metarl.episodes import Episodes
    from metarl.errors import ConfigError, MetarlError
    from metarl.evaluation import EvaluationResult, MetaPolicy, evaluate, load
    from metarl.inner import InnerLoop
    from metarl.make import make_env
    from metarl.maml import sample_meta_batch
    from metarl.outer import make_algorithm
    from metarl.sampler import Sampler
    from metarl.tasks import TaskDistribution
    from metarl.training import resume, train
