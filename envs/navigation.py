"""2-D point-robot navigation to a hidden goal (Finn, Abbeel & Levine 2017, section 5.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from envs.base import GoalTask, TaskEnv, coerce_task, sample_goal_ring, sample_goal_tasks

MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01


def move(position: NDArray[np.float64], action: NDArray[Any], goal: NDArray[np.float64]):
    """One step of the point robot; works on single states and on batches alike.

    Returns the new position, the reward -||p' - g|| and whether the goal box was reached.
    """
    position = position + np.clip(action, -MAX_SPEED, MAX_SPEED)
    offset = position - goal
    reward = -np.linalg.norm(offset, axis=-1)
    reached = np.all(np.abs(offset) < GOAL_TOLERANCE, axis=-1)
    return position, reward, reached


class Navigation2DEnv(TaskEnv, gym.Env[NDArray[np.float32], NDArray[np.float32]]):
    """Move a point robot from the origin to a goal it cannot see.

    ## Observation
    The robot's position ``(x, y)``, float32. Every episode starts at exactly ``(0, 0)``.

    ## Action
    A velocity ``(dx, dy)``, clipped to ``[-0.1, 0.1]`` per axis before it is applied.

    ## Reward
    ``reward_distance = -||p - g||_2`` after the move (the plain Euclidean distance, as in the
    original code; the paper's text says "squared"). ``info["reward_distance"]`` equals the reward.

    ## Episode end
    Terminated when ``|x - g_x| < 0.01`` and ``|y - g_y| < 0.01`` (a box, as in the original code).
    Truncated by Gymnasium's ``TimeLimit`` after 100 steps (``max_episode_steps`` of the registered id).

    ## Task distribution
    ``GoalTask(goal=(g_x, g_y))`` with the goal uniform in ``[goal_low, goal_high]^2`` (default
    ``[-0.5, 0.5]^2``); out of distribution, goals up to twice as far (outside that square). Set
    with ``reset(options={"task": task})``, ``env.set_task(task)`` or ``env.task = task``; a plain
    ``reset()`` keeps the current task. ``info["task"]`` echoes it.

    ## Arguments
    - ``goal_low``, ``goal_high``: bounds of the goal square used by ``sample_tasks``.
    - ``task``: the initial task (default goal ``(0.5, 0.5)``).
    - ``render_mode``: ``"rgb_array"`` draws the square ``[-1, 1]^2`` (goal red, path grey, robot blue).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    task_type = GoalTask

    def __init__(
        self,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        task: GoalTask | Mapping[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if not goal_low < goal_high:
            raise ValueError(f"goal_low ({goal_low}) must be below goal_high ({goal_high})")
        self.goal_low, self.goal_high = float(goal_low), float(goal_high)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
        self.task = task if task is not None else GoalTask((0.5, 0.5))
        self._position = np.zeros(2)
        self._path = [self._position]  # for render()

    def _apply_task(self, task: GoalTask) -> None:
        self._goal = np.array(task.goal)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        """Draw `n` goals uniformly from ``[goal_low, goal_high]^2`` with the caller's generator."""
        return sample_goal_tasks(n, rng, self.goal_low, self.goal_high)

    def sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        """Out of distribution: goals up to twice as far, outside the training square."""
        return sample_goal_ring(n, rng, max(abs(self.goal_low), abs(self.goal_high)), 2 * self.goal_high)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        gym.Env.reset(self, seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        self._position = np.zeros(2)
        self._path = [self._position]
        return self._position.astype(np.float32), {"task": self.task}

    def step(self, action: NDArray[np.float32]) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        self._position, reward, reached = move(self._position, np.asarray(action), self._goal)
        self._path.append(self._position)
        info = {"task": self.task, "reward_distance": float(reward)}
        return self._position.astype(np.float32), float(reward), bool(reached), False, info

    def render(self) -> NDArray[np.uint8] | None:
        """A 256 × 256 picture of ``[-1, 1]^2``: the goal, the path so far and the robot."""
        if self.render_mode != "rgb_array":
            return None
        size = 256
        frame = np.full((size, size, 3), 255, dtype=np.uint8)
        pixels = np.mgrid[0:size, 0:size].transpose(1, 2, 0)[..., ::-1]  # (x, y) of every pixel

        def disc(point: NDArray[np.float64], radius: float, colour: tuple[int, int, int]) -> None:
            centre = (np.array([point[0], -point[1]]) + 1.0) * 0.5 * (size - 1)
            frame[((pixels - centre) ** 2).sum(-1) <= radius**2] = colour

        frame[size // 2, :] = frame[:, size // 2] = 225
        disc(self._goal, 6, (220, 40, 40))
        for point in self._path:
            disc(point, 1.5, (150, 150, 150))
        disc(self._position, 4, (40, 80, 220))
        return frame


class Navigation2DVectorEnv(VectorEnv):
    """`num_envs` copies of `Navigation2DEnv` stepped together with numpy, each with its own task.

    Per-copy tasks are set with ``envs.set_attr("task", [task_0, task_1, ...])`` (one value sets
    all copies), or ``reset(options={"task": task})`` for all copies. Autoreset is Gymnasium's
    next-step mode: the step after an episode ends resets that copy and returns reward 0.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int = 100,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        task: GoalTask | Mapping[str, Any] | None = None,
    ) -> None:
        self._single = Navigation2DEnv(goal_low, goal_high, task)
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.single_observation_space = self._single.observation_space
        self.single_action_space = self._single.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.task = [self._single.task] * num_envs
        self._position = np.zeros((num_envs, 2))
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    @property
    def task(self) -> tuple[GoalTask, ...]:
        """The task of every copy."""
        return self._tasks

    @task.setter
    def task(self, tasks: Sequence[GoalTask | Mapping[str, Any]]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks (one per copy), got {len(tasks)}")
        self._tasks = tuple(coerce_task(GoalTask, t) for t in tasks)
        self._goals = np.array([t.goal for t in self._tasks])

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        """Same distribution as `Navigation2DEnv.sample_tasks`."""
        return self._single.sample_tasks(n, rng)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        if name == "task":
            return self.task
        return (getattr(self._single, name),) * self.num_envs

    def set_attr(self, name: str, values: Any) -> None:
        if name != "task":
            raise AttributeError(f"{type(self).__name__} only supports set_attr('task', ...), not {name!r}")
        self.task = list(values) if isinstance(values, (list, tuple)) else [values] * self.num_envs

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed if not isinstance(seed, list) else seed[0])
        if options and "task" in options:
            self.set_attr("task", options["task"])
        self._position[:] = 0.0
        self._steps[:] = 0
        self._needs_reset[:] = False
        return self._position.astype(np.float32), {"task": np.array(self.task, dtype=object)}

    def step(self, actions: NDArray[np.float32]):
        position, reward, terminated = move(self._position, np.asarray(actions), self._goals)
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps
        # Next-step autoreset: copies whose episode ended on the previous call restart now.
        restart = self._needs_reset
        position[restart] = 0.0
        reward[restart] = 0.0
        terminated[restart] = False
        truncated[restart] = False
        self._steps[restart] = 0
        self._position = position
        self._needs_reset = terminated | truncated
        info = {"task": np.array(self.task, dtype=object), "reward_distance": reward.copy()}
        return position.astype(np.float32), reward, terminated, truncated, info
