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
    """Accumulates `metrics` (key → aggregation) over the steps of `num_envs` lockstep episodes.

    Each step's values are only written down (`add` runs between two batches of environment steps);
    they are folded into one value per episode once, in `result`."""

    def __init__(self, metrics: Mapping[str, str], num_envs: int, steps: int = 16) -> None:
        unknown = {how for how in metrics.values() if how not in AGGREGATIONS}
        if unknown:
            raise ValueError(f"unknown aggregation {sorted(unknown)[0]!r}; one of {', '.join(AGGREGATIONS)}")
        self.metrics, self.num_envs = dict(metrics), num_envs
        self._values = {key: np.zeros((max(steps, 1), num_envs)) for key in metrics}  # [step, copy]
        self._counted = {key: np.zeros((max(steps, 1), num_envs), bool) for key in metrics}
        self._steps = 0
        self.seen: set[str] = set()

    def add(self, infos: Mapping[str, Any], alive: np.ndarray) -> None:
        """One step's infos; `alive` marks the copies whose episode this step belongs to."""
        t = self._steps
        if t == len(next(iter(self._counted.values()), ())):  # room for twice as many steps
            self._values = {key: np.concatenate([v, np.zeros_like(v)]) for key, v in self._values.items()}
            self._counted = {key: np.concatenate([c, np.zeros_like(c)]) for key, c in self._counted.items()}
        self._steps += 1
        for key in self.metrics:
            values = infos.get(key)
            if values is None:
                continue
            self.seen.add(key)
            self._values[key][t] = np.reshape(values, -1)  # one value per copy, or one for all
            present = infos.get(f"_{key}")  # Gymnasium's mask of the copies that reported the key
            np.logical_and(alive, True if present is None else np.reshape(present, -1), out=self._counted[key][t])

    def result(self) -> dict[str, np.ndarray]:
        """Per copy, the aggregated value of every key some step reported (NaN where none of its steps did)."""
        results = {}
        for key in self.seen:
            how = self.metrics[key]
            values, counted = self._values[key][: self._steps], self._counted[key][: self._steps]
            count = counted.sum(0)
            if how == "any":
                value = ((values != 0) & counted).any(0).astype(np.float64)
            elif how == "max":
                value = np.where(counted, values, -np.inf).max(0)
            elif how == "last":  # the value at each copy's last counted step
                last = len(counted) - 1 - counted[::-1].argmax(0)
                value = values[last, np.arange(self.num_envs)]
            else:
                value = np.where(counted, values, 0.0).sum(0)
                if how == "mean":
                    value = value / np.maximum(count, 1)
            results[key] = np.where(count > 0, value, np.nan)
        return results
