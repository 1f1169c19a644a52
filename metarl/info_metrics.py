"""Per-episode numbers from the environments' step infos, such as Meta-World's success.

Environments report per-step facts in ``info`` (Gymnasium's convention): Meta-World's
``info["success"]`` is 1.0 on the steps where the task is solved. `InfoMetrics` folds the step
infos of a vector env into one value per episode, counting only the steps of the episode itself:

- ``any``: 1 if the value was non-zero at any step (an episode succeeds if it succeeded once,
  Meta-World's protocol), else 0;
- ``mean``, ``sum``, ``max``, ``last``: of the values over the episode's steps.

An episode whose steps never reported the key gets NaN, and is left out of the means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

AGGREGATIONS = ("any", "mean", "sum", "max", "last")
# What metarl reports unless `env.info_metrics` says otherwise: the success rate, where steps report one.
DEFAULT_INFO_METRICS = {"success": "any"}


def step_values(infos: Mapping[str, Any], key: str, num_envs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The values of `key` in a vector env's step infos and where they are present, or None if absent.

    Vector envs put ``info[key]`` as an array over copies, with ``info["_" + key]`` marking the
    copies that reported it (Gymnasium's convention); an array without that mask counts everywhere.
    """
    if key not in infos:
        return None
    values = np.broadcast_to(np.asarray(infos[key], dtype=np.float64).reshape(-1), (num_envs,))
    present = infos.get(f"_{key}")
    present = np.ones(num_envs, dtype=bool) if present is None else np.asarray(present, dtype=bool).reshape(num_envs)
    return values, present


class InfoMetrics:
    """Accumulates `metrics` (key → aggregation) over the steps of `num_envs` lockstep episodes."""

    def __init__(self, metrics: Mapping[str, str], num_envs: int) -> None:
        unknown = {how for how in metrics.values() if how not in AGGREGATIONS}
        if unknown:
            raise ValueError(f"unknown aggregation {sorted(unknown)[0]!r}; one of {', '.join(AGGREGATIONS)}")
        self.metrics, self.num_envs = dict(metrics), num_envs
        self._total = {key: np.zeros(num_envs) for key in metrics}
        self._count = {key: np.zeros(num_envs) for key in metrics}
        self._last = {key: np.full(num_envs, np.nan) for key in metrics}
        self.seen: set[str] = set()

    def add(self, infos: Mapping[str, Any], alive: np.ndarray) -> None:
        """One step's infos; `alive` marks the copies whose episode this step belongs to."""
        for key, how in self.metrics.items():
            found = step_values(infos, key, self.num_envs)
            if found is None:
                continue
            self.seen.add(key)
            values, present = found
            counted = alive & present
            if how == "any":
                values = (values != 0).astype(np.float64)
            if how in ("any", "max"):
                current = np.where(self._count[key] > 0, self._total[key], -np.inf)
                self._total[key] = np.where(counted, np.maximum(current, values), self._total[key])
            else:
                self._total[key] += np.where(counted, values, 0.0)
            self._last[key] = np.where(counted, values, self._last[key])
            self._count[key] += counted

    def result(self) -> dict[str, np.ndarray]:
        """Per copy, the aggregated value of every key some step reported (NaN where none of its steps did)."""
        results = {}
        for key in self.seen:
            how, count = self.metrics[key], self._count[key]
            value = self._last[key] if how == "last" else self._total[key]
            if how == "mean":
                value = value / np.maximum(count, 1)
            results[key] = np.where(count > 0, value, np.nan)
        return results
