"""A task distribution written from scratch against metarl's task protocol (no metarl base classes).

A cart on a frictional 1-D track must stop at a goal it cannot see; the track's friction changes
from task to task too. Importing this module registers ``Custom/SlipperyCart-v0``, so a config can
name it ``experiments.custom_env_example:Custom/SlipperyCart-v0`` (run metarl from the repository root).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np


@dataclasses.dataclass(frozen=True)
class CartTask:
    """Where to stop (unobserved) and the fraction of velocity that friction takes each step."""

    goal: float = 0.5
    friction: float = 0.1


class SlipperyCartEnv(gym.Env):
    """Observation (position, velocity); action: a push in [-1, 1]; reward -|position - goal|."""

    metadata = {"render_modes": []}

    def __init__(self, goal_range: float = 1.0, friction_range: tuple[float, float] = (0.05, 0.3)) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.goal_range, self.friction_range = float(goal_range), tuple(friction_range)
        self.task = CartTask()
        self._state = np.zeros(2)

    @property
    def task(self) -> CartTask:
        return self._task

    @task.setter
    def task(self, task: CartTask | dict[str, float]) -> None:
        # Accept the JSON form ({"goal": ..., "friction": ...}) that metarl logs and evaluates with.
        self._task = task if isinstance(task, CartTask) else CartTask(**task)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[CartTask]:
        """`n` tasks from the caller's generator: goal uniform in ±goal_range, friction in friction_range."""
        goals, frictions = rng.uniform(-self.goal_range, self.goal_range, n), rng.uniform(*self.friction_range, n)
        return [CartTask(float(g), float(f)) for g, f in zip(goals, frictions, strict=True)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)  # a plain reset keeps the task
        if options and "task" in options:
            self.task = options["task"]
        self._state = np.array([self.np_random.uniform(-0.05, 0.05), 0.0])
        return self._state.astype(np.float32), {}

    def step(self, action: np.ndarray):
        position, velocity = self._state
        velocity = (1.0 - self.task.friction) * velocity + 0.02 * float(np.clip(action[0], -1.0, 1.0))
        self._state = np.array([position + velocity, velocity])
        reward = -abs(float(self._state[0]) - self.task.goal)
        return self._state.astype(np.float32), reward, False, False, {}


if "Custom/SlipperyCart-v0" not in gym.registry:
    gym.register("Custom/SlipperyCart-v0", entry_point=SlipperyCartEnv, max_episode_steps=50)
