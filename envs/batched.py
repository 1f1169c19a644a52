"""Batched physics for the HalfCheetah task families: every copy advances in one `mujoco.rollout` call.

`HalfCheetahVectorEnv` is the ``vector_entry_point`` of the HalfCheetah families, so
``gymnasium.make_vec`` (and metarl's sampler) use it. The single-copy Gymnasium environment stays
the definition: the vector env resets copies with its ``reset_model`` (each copy with its own
seeded generator), takes each task's model from an instance of it (dynamics tasks rescale the
model), and computes observations and rewards with the same formulas (the family's
``forward_reward``), for all copies at once in numpy.
What it replaces is the per-copy Python ``step``: one call per environment step runs
``frame_skip`` MuJoCo steps of all copies on a pool of C threads.

The rollout state holds positions and velocities, not the constraint solver's warm start, which
the vector env recovers from the last two substeps' velocities. Observations agree with the
reference to about 1e-10 over whole episodes of exploration-sized actions (tests/test_batched.py);
under full-torque random actions the robot tumbles, a chaotic motion in which solver-tolerance
differences grow to visible ones after some 50 steps, as between any two MuJoCo builds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from mujoco import rollout
from numpy.typing import NDArray

from envs.base import coerce_task


class HalfCheetahVectorEnv(VectorEnv):
    """`num_envs` copies of a HalfCheetah task family (`env_class`), each with its own task.

    Tasks are set per copy with ``set_attr("task", [task_0, task_1, ...])`` (one value sets all
    copies) or for all copies with ``reset(options={"task": task})``. Autoreset is Gymnasium's
    next-step mode. ``reset(seed=s)`` seeds copy i with ``s + i``, as Gymnasium's vector envs do,
    so results do not depend on the number of physics threads.

    Memory stays small: one instance of `env_class` draws every copy's reset noise (with that
    copy's own random generator), and copies share MuJoCo models: all of them for goal tasks, one
    per distinct task for families whose task changes the model (``task_changes_model``).

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
        self._env_class, self._kwargs = env_class, kwargs
        self.template = env_class(**kwargs)
        if not self.template._exclude_current_positions_from_observation:
            raise ValueError(f"{type(self).__name__} needs exclude_current_positions_from_observation=True")
        self.num_envs, self.max_episode_steps = num_envs, max_episode_steps
        self.single_observation_space = self.template.observation_space
        self.single_action_space = self.template.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.frame_skip, self.dt = self.template.frame_skip, self.template.dt
        self._timestep = self.template.model.opt.timestep
        if self.template.model.opt.integrator != mujoco.mjtIntegrator.mjINT_EULER or self.frame_skip < 2:
            raise ValueError(f"{type(self).__name__} expects the Euler integrator and a frame skip of at least 2")
        self.num_threads = num_threads or os.cpu_count() or 1
        model = self.template.model
        self._nq, self._nv, self._nu = model.nq, model.nv, model.nu
        self._pool = rollout.Rollout(nthread=self.num_threads if self.num_threads > 1 else 0)
        self._threads = [mujoco.MjData(model) for _ in range(self.num_threads)]
        self._bodies: list[Any] = []  # one env per distinct task, for families whose task changes the model
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        nstate = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        self._state = np.zeros((num_envs, nstate))
        self._states = np.zeros((num_envs, self.frame_skip, nstate))  # rollout's output buffer
        self._no_sensors = np.zeros((num_envs, self.frame_skip, 0))
        self._warmstart = np.zeros((num_envs, self._nv))
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self.set_attr("task", self.template.task)

    @property
    def task(self) -> tuple[Any, ...]:
        """The task of every copy."""
        return self._tasks

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        """The family's task distribution."""
        return self.template.sample_tasks(n, rng)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        if name == "task":
            return self.task
        return (getattr(self.template, name),) * self.num_envs

    def set_attr(self, name: str, values: Any) -> None:
        if name != "task":
            raise AttributeError(f"{type(self).__name__} only supports set_attr('task', ...), not {name!r}")
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks (one per copy), got {len(values)}")
        self._tasks = tuple(coerce_task(self.template.task_type, task) for task in values)
        self._task_values = self.template.task_values(self._tasks)
        if not self.template.task_changes_model:
            self._models = [self.template.model] * self.num_envs
            return
        distinct = list(dict.fromkeys(self._tasks))
        while len(self._bodies) < len(distinct):
            self._bodies.append(self._env_class(**self._kwargs))
        for body, task in zip(self._bodies, distinct, strict=False):
            body.task = task
        index = {task: i for i, task in enumerate(distinct)}
        self._models = [self._bodies[index[task]].model for task in self._tasks]

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
        """The reference env's reset (``MujocoEnv.reset``) with copy i's own random generator."""
        if seed is not None:
            self._rngs[i] = seeding.np_random(seed)[0]
        env = self.template
        env.np_random = self._rngs[i]
        mujoco.mj_resetData(env.model, env.data)
        env.reset_model()
        self._state[i, 0] = env.data.time
        self._state[i, 1 : 1 + self._nq] = env.data.qpos
        self._state[i, 1 + self._nq : 1 + self._nq + self._nv] = env.data.qvel
        self._warmstart[i] = 0.0  # mj_resetData clears the warm start

    def step(self, actions: NDArray[np.floating]) -> tuple[Any, ...]:
        actions = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, self._nu)
        x_before = self._state[:, 1].copy()
        control = np.ascontiguousarray(np.broadcast_to(actions[:, None, :], (self.num_envs, self.frame_skip, self._nu)))
        self._pool.rollout(
            self._models,
            self._threads,
            self._state,
            control,
            nstep=self.frame_skip,
            initial_warmstart=self._warmstart,
            state=self._states,
            sensordata=self._no_sensors,
            skip_checks=True,  # shapes are fixed at construction; the per-model checks cost a loop per step
        )
        self._state[:] = self._states[:, -1]
        # MuJoCo warm-starts each step's constraint solver from the previous step's accelerations;
        # the rollout state holds velocities only, so recover them (Euler: qvel' = qvel + h qacc).
        qvel = slice(1 + self._nq, 1 + self._nq + self._nv)
        np.subtract(self._states[:, -1, qvel], self._states[:, -2, qvel], out=self._warmstart)
        self._warmstart /= self._timestep
        x_velocity = (self._state[:, 1] - x_before) / self.dt
        forward = self.template.forward_reward(x_velocity, self._task_values)
        ctrl = -self.template._ctrl_cost_weight * np.sum(np.square(actions), axis=1)
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
        self._pool.close()
        for env in (self.template, *self._bodies):
            env.close()


def vector_entry_point(env_class: type):
    """The ``vector_entry_point`` of a HalfCheetah family: ``(num_envs, **kwargs) -> HalfCheetahVectorEnv``."""

    def make(num_envs: int = 1, num_threads: int | None = None, **kwargs: Any) -> HalfCheetahVectorEnv:
        return HalfCheetahVectorEnv(env_class, num_envs, num_threads=num_threads, **kwargs)

    return make
