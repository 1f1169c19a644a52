"""Goal-varying locomotion task families on Gymnasium's MuJoCo v5 robots (the MAML-RL benchmarks).

Each family subclasses Gymnasium's v5 environment and replaces only its reward (``_get_rew``), so
the physics, observations and reset noise are Gymnasium's. The reward terms follow
pytorch-maml-rl's Gymnasium-style models, not the MAML paper's rllab models: Gymnasium's models run
at ``dt = 0.05`` (timestep 0.01, frame skip 5) against rllab's 0.01 (cheetah) / 0.02 (ant), the
horizon is 100 steps against the paper's 200, and velocity is the finite difference of the
main body's position rather than MuJoCo's centre-of-mass velocity. Returns are therefore not on
the paper's scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from numpy.typing import ArrayLike

from envs.base import DirectionTask, GoalTask, TaskEnv, VelocityTask, sample_goal_ring, sample_goal_tasks


def sample_velocities(n: int, rng: np.random.Generator, low: float, high: float) -> list[VelocityTask]:
    """Target velocities uniform in [low, high]."""
    return [VelocityTask(float(v)) for v in rng.uniform(low, high, size=n)]


class VelocityFamily(TaskEnv):
    """Mixin: tasks are target velocities uniform in ``[velocity_low, velocity_high]``."""

    task_type = VelocityTask
    velocity_low: float
    velocity_high: float

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        """Target velocities uniform in ``[velocity_low, velocity_high]``."""
        return sample_velocities(n, rng, self.velocity_low, self.velocity_high)

    def sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        """Out of distribution: velocities above the training range, up to ``velocity_high + 1``."""
        return sample_velocities(n, rng, self.velocity_high, self.velocity_high + 1.0)

    @staticmethod
    def task_values(tasks: Sequence[VelocityTask]) -> np.ndarray:
        """The target velocity of each task, for `forward_reward` over many copies."""
        return np.array([task.velocity for task in tasks], dtype=float)


class DirectionFamily(TaskEnv):
    """Mixin: tasks are directions +1 / -1 with equal probability."""

    task_type = DirectionTask

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[DirectionTask]:
        """Directions +1 / -1 with equal probability."""
        return [DirectionTask(int(d)) for d in rng.choice([-1, 1], size=n)]

    @staticmethod
    def task_values(tasks: Sequence[DirectionTask]) -> np.ndarray:
        """The direction of each task, for `forward_reward` over many copies."""
        return np.array([task.direction for task in tasks], dtype=float)


class HalfCheetahVelEnv(VelocityFamily, HalfCheetahEnv):
    """HalfCheetah that must run at a target forward velocity.

    ## Observation, action, dynamics
    Gymnasium's ``HalfCheetah-v5``: 17-D observation (joint positions without x, joint
    velocities), 6-D action in [-1, 1], ``dt = 0.05``.

    ## Reward
    ``reward_forward = -|v - v*|`` with ``v = Δx / dt`` of the root, and
    ``reward_ctrl = -0.05 ||a||²``; the reward is their sum (both in ``info``).

    ## Episode end
    Never terminates; truncated after 100 steps (``max_episode_steps``).

    ## Task distribution
    ``VelocityTask(velocity=v*)`` with v* uniform in [velocity_low, velocity_high] (default [0, 2]);
    out of distribution, v* in [velocity_high, velocity_high + 1].
    """

    def __init__(
        self,
        velocity_low: float = 0.0,
        velocity_high: float = 2.0,
        task: VelocityTask | Mapping[str, Any] | None = None,
        ctrl_cost_weight: float = 0.05,
        **kwargs: Any,
    ) -> None:
        HalfCheetahEnv.__init__(self, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        # Record our own constructor arguments, so that pickling rebuilds this class, not the parent.
        utils.EzPickle.__init__(self, velocity_low, velocity_high, task, ctrl_cost_weight, **kwargs)
        self.velocity_low, self.velocity_high = float(velocity_low), float(velocity_high)
        self.task = task if task is not None else VelocityTask(1.0)

    @staticmethod
    def forward_reward(x_velocity: ArrayLike, velocity: ArrayLike) -> np.ndarray:
        """``-|v - v*|``; broadcasts over copies (the batched vector env uses it too)."""
        return -np.abs(np.asarray(x_velocity) - velocity)

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        forward = float(self.forward_reward(x_velocity, self.task.velocity))
        ctrl = -self.control_cost(action)
        return forward + ctrl, {"reward_forward": forward, "reward_ctrl": ctrl}


class HalfCheetahDirEnv(DirectionFamily, HalfCheetahEnv):
    """HalfCheetah that must run forward or backward.

    ## Observation, action, dynamics
    As `HalfCheetahVelEnv` (Gymnasium's ``HalfCheetah-v5``).

    ## Reward
    ``reward_forward = d · v`` with ``v = Δx / dt`` and ``reward_ctrl = -0.05 ||a||²``.

    ## Episode end
    Never terminates; truncated after 100 steps.

    ## Task distribution
    ``DirectionTask(direction=d)`` with d = +1 or -1 with equal probability.
    """

    def __init__(
        self, task: DirectionTask | Mapping[str, Any] | None = None, ctrl_cost_weight: float = 0.05, **kwargs: Any
    ) -> None:
        HalfCheetahEnv.__init__(self, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, task, ctrl_cost_weight, **kwargs)
        self.task = task if task is not None else DirectionTask(1)

    @staticmethod
    def forward_reward(x_velocity: ArrayLike, direction: ArrayLike) -> np.ndarray:
        """``d · v``; broadcasts over copies (the batched vector env uses it too)."""
        return np.asarray(x_velocity) * direction

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        forward = float(self.forward_reward(x_velocity, self.task.direction))
        ctrl = -self.control_cost(action)
        return forward + ctrl, {"reward_forward": forward, "reward_ctrl": ctrl}


class _AntTaskEnv(TaskEnv, AntEnv):
    """Gymnasium's ``Ant-v5`` (105-D observation with clipped contact forces, 8-D action in
    [-1, 1], ``dt = 0.05``, terminated when the torso leaves z ∈ [0.2, 1.0]) with the MAML
    lineage's costs: control 0.005‖a‖², contact 0.0005‖clip(cfrc_ext, -1, 1)‖², and a survive
    bonus of 0.05 while healthy, so that ending the episode early never pays. Subclasses define
    the goal term ``_goal_reward(x_velocity)``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs = {"ctrl_cost_weight": 0.005, "contact_cost_weight": 5e-4, "healthy_reward": 0.05, **kwargs}
        AntEnv.__init__(self, **kwargs)

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        terms = {
            "reward_forward": self._goal_reward(x_velocity),
            "reward_ctrl": -self.control_cost(action),
            "reward_contact": -self.contact_cost,
            "reward_survive": self.healthy_reward,
        }
        return sum(terms.values()), terms


class AntVelEnv(VelocityFamily, _AntTaskEnv):
    """Ant that must walk forward at a target velocity.

    ## Reward
    ``reward_forward = -|v - v*| + 1`` with ``v = Δx / dt`` of the torso, plus the Ant costs and
    survive bonus of `_AntTaskEnv` (all four terms in ``info``; they sum to the reward).

    ## Episode end
    Terminated when unhealthy; truncated after 100 steps.

    ## Task distribution
    ``VelocityTask(velocity=v*)`` with v* uniform in [velocity_low, velocity_high] (default [0, 3]);
    out of distribution, v* in [velocity_high, velocity_high + 1].
    """

    def __init__(
        self,
        velocity_low: float = 0.0,
        velocity_high: float = 3.0,
        task: VelocityTask | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        utils.EzPickle.__init__(self, velocity_low, velocity_high, task, **kwargs)
        self.velocity_low, self.velocity_high = float(velocity_low), float(velocity_high)
        self.task = task if task is not None else VelocityTask(1.0)

    def _goal_reward(self, x_velocity: float) -> float:
        return -abs(x_velocity - self.task.velocity) + 1.0


class AntDirEnv(DirectionFamily, _AntTaskEnv):
    """Ant that must walk forward or backward along x.

    ## Reward
    ``reward_forward = d · v`` with ``v = Δx / dt`` of the torso, plus the Ant costs and survive
    bonus of `_AntTaskEnv`.

    ## Episode end
    Terminated when unhealthy; truncated after 100 steps.

    ## Task distribution
    ``DirectionTask(direction=d)`` with d = +1 or -1 with equal probability.
    """

    def __init__(self, task: DirectionTask | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        utils.EzPickle.__init__(self, task, **kwargs)
        self.task = task if task is not None else DirectionTask(1)

    def _goal_reward(self, x_velocity: float) -> float:
        return self.task.direction * x_velocity


class AntGoalEnv(_AntTaskEnv):
    """Ant that must walk to a goal position in the plane.

    ## Reward
    ``reward_forward = -||xy - g||_1 + 4`` with ``xy`` the torso position after the step (the free
    joint's ``qpos[:2]``, reported as ``info["x_position"]`` and ``info["y_position"]``), plus the
    Ant costs and survive bonus of `_AntTaskEnv`.

    ## Episode end
    Terminated when unhealthy; truncated after 100 steps.

    ## Task distribution
    ``GoalTask(goal=(g_x, g_y))`` uniform in [goal_low, goal_high]² (default [-3, 3]²); out of
    distribution, goals outside that square with max(|g_x|, |g_y|) up to 4.
    """

    task_type = GoalTask

    def __init__(
        self,
        goal_low: float = -3.0,
        goal_high: float = 3.0,
        task: GoalTask | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        utils.EzPickle.__init__(self, goal_low, goal_high, task, **kwargs)
        self.goal_low, self.goal_high = float(goal_low), float(goal_high)
        self.task = task if task is not None else GoalTask((1.0, 1.0))

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        """Goals uniform in ``[goal_low, goal_high]^2``."""
        return sample_goal_tasks(n, rng, self.goal_low, self.goal_high)

    def sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        """Out of distribution: goals outside the training square, up to 4/3 as far."""
        return sample_goal_ring(n, rng, self.goal_high, self.goal_high * 4 / 3)

    def _goal_reward(self, x_velocity: float) -> float:
        xy = self.data.qpos[:2]  # the torso's position after the step, as info["x_position"], ["y_position"]
        return -float(np.abs(xy - np.array(self.task.goal)).sum()) + 4.0
