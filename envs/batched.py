"""Batched physics for the HalfCheetah task families: every copy advances in one `mujoco.rollout` call.

`HalfCheetahVectorEnv` is the ``vector_entry_point`` of the HalfCheetah families, so
``gymnasium.make_vec`` (and metarl's sampler) use it. The single-copy Gymnasium environment stays
the definition: the vector env keeps one instance per copy for its task, its model (dynamics
tasks rescale each copy's own model) and its seeded reset noise, and computes observations and
rewards with the same formulas (the family's ``forward_reward``), for all copies at once in numpy.
What it replaces is the per-copy Python ``step``: one call per environment step runs
``frame_skip`` MuJoCo steps of all copies on a pool of C threads.

One difference from the reference is invisible at float precision: MuJoCo's constraint solver is
warm-started from the previous step's accelerations in the reference and from zero here (the
rollout state holds positions and velocities only). With the solver's tolerance of 1e-8 the
observations agree to about 1e-10 (tests/test_batched.py checks this).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from mujoco import rollout
from numpy.typing import NDArray


class HalfCheetahVectorEnv(VectorEnv):
    """`num_envs` copies of a HalfCheetah task family (`env_class`), each with its own task.

    Tasks are set per copy with ``set_attr("task", [task_0, task_1, ...])`` (one value sets all
    copies) or for all copies with ``reset(options={"task": task})``. Autoreset is Gymnasium's
    next-step mode. ``reset(seed=s)`` seeds copy i with ``s + i``, as Gymnasium's vector envs do,
    so results do not depend on the number of physics threads.

    Args:
        env_class: the single-copy family (a subclass of Gymnasium's ``HalfCheetahEnv`` with a
            numpy-broadcasting ``forward_reward(x_velocity, task_values)`` and ``task_values(tasks)``).
        num_envs: number of copies.
        max_episode_steps: episodes are truncated after this many steps.
        num_threads: physics threads (default: all cores).
        **kwargs: constructor arguments of `env_class`.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        env_class: type,
        num_envs: int = 1,
        max_episode_steps: int = 100,
        num_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.copies = [env_class(**kwargs) for _ in range(num_envs)]
        first = self.copies[0]
        if not first._exclude_current_positions_from_observation:
            raise ValueError(f"{type(self).__name__} needs exclude_current_positions_from_observation=True")
        self.num_envs, self.max_episode_steps = num_envs, max_episode_steps
        self.single_observation_space, self.single_action_space = first.observation_space, first.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.frame_skip, self.dt = first.frame_skip, first.dt
        self.num_threads = num_threads or os.cpu_count() or 1
        self._models = [env.model for env in self.copies]  # dynamics tasks edit these in place
        self._threads = [mujoco.MjData(first.model) for _ in range(self.num_threads)]
        self._nq, self._nv = first.model.nq, first.model.nv
        self._state = np.zeros((num_envs, mujoco.mj_stateSize(first.model, mujoco.mjtState.mjSTATE_FULLPHYSICS)))
        self._warmstart = np.zeros((num_envs, self._nv))
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._update_task_values()

    @property
    def task(self) -> tuple[Any, ...]:
        """The task of every copy."""
        return tuple(env.task for env in self.copies)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        """The family's task distribution."""
        return self.copies[0].sample_tasks(n, rng)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(getattr(env, name) for env in self.copies)

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} values of {name!r} (one per copy), got {len(values)}")
        for env, value in zip(self.copies, values, strict=True):
            setattr(env, name, value)
        if name == "task":
            self._update_task_values()

    def _update_task_values(self) -> None:
        self._task_values = self.copies[0].task_values(self.task)

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[NDArray[np.float64], dict[str, Any]]:
        super().reset(seed=seed if isinstance(seed, int) or seed is None else None)
        if isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        seeds = seed if seed is not None else [None] * self.num_envs
        if options and "task" in options:
            self.set_attr("task", options["task"])
        for i, s in enumerate(seeds):
            self._reset_copy(i, s)
        self._steps[:] = 0
        self._needs_reset[:] = False
        return self._observations(), {"task": np.array(self.task, dtype=object)}

    def _reset_copy(self, i: int, seed: int | None = None) -> None:
        env = self.copies[i]
        env.reset(seed=seed)
        self._state[i, 0] = env.data.time
        self._state[i, 1 : 1 + self._nq] = env.data.qpos
        self._state[i, 1 + self._nq : 1 + self._nq + self._nv] = env.data.qvel

    def step(self, actions: NDArray[np.floating]) -> tuple[Any, ...]:
        actions = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1)
        x_before = self._state[:, 1].copy()
        states, _ = rollout.rollout(
            self._models,
            self._threads,
            self._state,
            actions[:, None, :],
            nstep=self.frame_skip,
            initial_warmstart=self._warmstart,
            persistent_pool=True,
        )
        self._state = states[:, -1].copy()
        x_velocity = (self._state[:, 1] - x_before) / self.dt
        template = self.copies[0]
        forward = template.forward_reward(x_velocity, self._task_values)
        ctrl = -template._ctrl_cost_weight * np.sum(np.square(actions), axis=1)
        reward = forward + ctrl
        self._steps += 1
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = self._steps >= self.max_episode_steps

        # Next-step autoreset: copies whose episode ended on the previous call restart now.
        for i in np.flatnonzero(self._needs_reset):
            self._reset_copy(int(i))
        restart = self._needs_reset
        reward[restart] = forward[restart] = ctrl[restart] = 0.0
        truncated[restart] = False
        self._steps[restart] = 0
        self._needs_reset = terminated | truncated
        info = {"x_velocity": x_velocity, "reward_forward": forward, "reward_ctrl": ctrl}
        return self._observations(), reward, terminated, truncated, info

    def _observations(self) -> NDArray[np.float64]:
        # Gymnasium's HalfCheetah observation: qpos without the root's x, then qvel.
        return self._state[:, 2 : 1 + self._nq + self._nv].copy()

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.copies:
            env.close()


def vector_entry_point(env_class: type):
    """The ``vector_entry_point`` of a HalfCheetah family: ``(num_envs, **kwargs) -> HalfCheetahVectorEnv``."""

    def make(num_envs: int = 1, num_threads: int | None = None, **kwargs: Any) -> HalfCheetahVectorEnv:
        return HalfCheetahVectorEnv(env_class, num_envs, num_threads=num_threads, **kwargs)

    return make
