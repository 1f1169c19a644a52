"""What every task family shares: the task values, and a settable ``task`` that survives plain resets.

Tasks are frozen dataclasses: immutable, hashable, readable in logs, and JSON-serialisable through
their fields (``dataclasses.asdict``); every environment accepts that JSON form back as a task.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np


@dataclasses.dataclass(frozen=True)
class GoalTask:
    """A goal position in the plane; the agent never observes it and must infer it from rewards."""

    goal: tuple[float, float]

    def __post_init__(self) -> None:
        goal = tuple(float(g) for g in self.goal)
        if len(goal) != 2 or not all(math.isfinite(g) for g in goal):
            raise ValueError(f"GoalTask.goal must be two finite numbers, got {self.goal!r}")
        object.__setattr__(self, "goal", goal)


@dataclasses.dataclass(frozen=True)
class VelocityTask:
    """A target forward velocity (m/s)."""

    velocity: float

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.velocity)):
            raise ValueError(f"VelocityTask.velocity must be finite, got {self.velocity!r}")
        object.__setattr__(self, "velocity", float(self.velocity))


@dataclasses.dataclass(frozen=True)
class DirectionTask:
    """A direction of travel along x: +1 forward, -1 backward."""

    direction: int

    def __post_init__(self) -> None:
        if self.direction not in (-1, 1):
            raise ValueError(f"DirectionTask.direction must be -1 or +1, got {self.direction!r}")
        object.__setattr__(self, "direction", int(self.direction))


def sample_goal_tasks(n: int, rng: np.random.Generator, low: float, high: float) -> list[GoalTask]:
    """Goals drawn uniformly from the square [low, high]^2."""
    return [GoalTask(tuple(goal)) for goal in rng.uniform(low, high, size=(n, 2))]


def sample_goal_ring(n: int, rng: np.random.Generator, inner: float, outer: float) -> list[GoalTask]:
    """Goals uniform in the square frame ``inner < max(|x|, |y|) <= outer`` (outside the training square)."""
    goals = []
    while len(goals) < n:
        goal = rng.uniform(-outer, outer, size=2)
        if np.abs(goal).max() > inner:
            goals.append(GoalTask(tuple(goal)))
    return goals


def coerce_task(task_type: type, task: Any) -> Any:
    """Accept a task of `task_type` or its JSON form (a mapping of its fields)."""
    if isinstance(task, task_type):
        return task
    if isinstance(task, Mapping):
        return task_type(**task)
    raise TypeError(f"expected a {task_type.__name__} or a mapping of its fields, got {type(task).__name__}: {task!r}")


class TaskEnv:
    """Mixin for a Gymnasium env whose behaviour depends on a task.

    Subclasses set `task_type`, implement ``sample_tasks(n, rng)`` and, where setting a task must
    change the simulator, ``_apply_task(task)``. The task is set with ``env.task = task``,
    ``env.set_task(task)`` or ``reset(options={"task": task})``; a plain ``reset()`` keeps it, and
    ``info["task"]`` echoes it on reset. `reset` wraps the next class's ``reset``, which must
    return ``(observation, info)`` (as Gymnasium's MuJoCo envs do).
    """

    task_type: ClassVar[type]
    task_changes_model: ClassVar[bool] = False  # True where setting a task rewrites the simulator's model
    _task: Any

    @property
    def task(self) -> Any:
        """The current task."""
        return self._task

    @task.setter
    def task(self, task: Any) -> None:
        self._task = coerce_task(self.task_type, task)
        self._apply_task(self._task)

    def _apply_task(self, task: Any) -> None:
        """Hook for tasks that change the simulator; reward-only tasks need nothing."""

    def set_task(self, task: Any) -> None:
        """Switch to `task` (the learn2learn / Meta-World spelling of ``env.task = task``)."""
        self.task = task

    def get_task(self) -> Any:
        """The current task."""
        return self.task

    # Pickling (for worker processes) keeps the current task, also for envs that pickle through
    # gymnasium's EzPickle, which otherwise rebuilds the env from its constructor arguments.
    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_current_task": self.task}  # type: ignore[misc]

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        task = state.pop("_current_task")
        parent = getattr(super(), "__setstate__", None)
        if parent is not None:
            parent(state)
        else:
            self.__dict__.update(state)
        self.task = task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and "task" in options:
            self.task = options["task"]
        observation, info = super().reset(seed=seed, options=options)  # type: ignore[misc]
        return observation, {**info, "task": self.task}
