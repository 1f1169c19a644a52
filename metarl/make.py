"""Making task-distribution environments: one copy (`make_env`) or many (`make_vector_env`).

Above the vector backends: a family's own batched implementation (``gymnasium.make_vec``), a
next-step-autoreset ``SyncVectorEnv`` in this process (`metarl.workers.KeyedSyncVectorEnv`), or
`metarl.workers.WorkerVectorEnv` processes, which receive a picklable `EnvFactory` and build their
copies themselves (they never import this module back).
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec, load_env_creator, registry
from gymnasium.vector import VectorEnv

from metarl.errors import EnvError
from metarl.task_space_env import TaskSpaceEnv
from metarl.tasks import ensure_registered, environment_errors
from metarl.workers import KeyedSyncVectorEnv, WorkerVectorEnv


def make_env(
    env_id: str,
    kwargs: Mapping[str, Any] | None = None,
    horizon: int | None = None,
    task_space: Mapping[str, Any] | None = None,
    check: bool = True,
) -> gym.Env:
    """``gymnasium.make`` for a task distribution (a horizon overrides ``max_episode_steps``).

    With a `task_space` (the ``env.task_space`` mapping of a config) the environment is wrapped in
    `metarl.task_space_env.TaskSpaceEnv`, which makes any environment a task distribution; `check`
    validates the task space against the built environment (`metarl.config.ConfigError`).
    """
    ensure_registered(env_id)
    if task_space is not None:
        return TaskSpaceEnv(env_id, kwargs, horizon, task_space, check=check)
    extra = {"max_episode_steps": horizon} if horizon is not None else {}
    with environment_errors(f"creating '{env_id}'"):
        env = gym.make(env_id, **dict(kwargs or {}), **extra)
    if not isinstance(env.unwrapped, gym.Env):
        made = type(env.unwrapped).__name__
        raise EnvError(f"'{env_id}' is not an environment: it made a {made}, not a gymnasium.Env")
    return env


def make_vector_env(
    env_id: str,
    num_envs: int,
    kwargs: Mapping[str, Any] | None = None,
    horizon: int | None = None,
    workers: int | None = None,
    task_space: Mapping[str, Any] | None = None,
    worker_timeout: float | None = None,
    info_keys: Sequence[str] = (),
    step_in_parent: bool = False,
    group: int = 1,
) -> VectorEnv:
    """``gymnasium.make_vec``: the id's own batched implementation when it registers one, else sync.

    `workers`: a batched implementation that takes ``num_threads`` runs its physics on that many
    threads (None: its default). Other ids step their copies in that many processes when
    ``workers > 1`` (`metarl.workers.WorkerVectorEnv`, same results as sync).
    `task_space`: copies of `make_env`'s task-space wrapper (never the id's batched implementation),
    in a next-step-autoreset ``SyncVectorEnv``, or in worker processes when ``workers > 1``.
    `worker_timeout`: seconds a worker process may take to answer before it is an error.
    `info_keys`: the step-info keys returned for copies stepped one by one (in this process or in
    workers; the other keys are not gathered); a batched implementation returns its own infos.
    `step_in_parent`: with worker processes, this process steps the first share of the copies
    itself (`WorkerVectorEnv`'s ``parent_slice``). `group`: copies that stay in one worker's slice (a
    task's episodes; `num_envs` a multiple of it).
    """
    ensure_registered(env_id)
    if task_space is not None:
        factory = env_factory(env_id, kwargs, horizon, task_space)
        if workers is not None and workers > 1:
            return WorkerVectorEnv(
                [factory] * num_envs,
                min(workers, num_envs // group),
                timeout=worker_timeout,
                info_keys=info_keys,
                parent_slice=step_in_parent,
                group=group,
            )
        return KeyedSyncVectorEnv([factory] * num_envs, info_keys)
    spec = registry.get(env_id)
    batched = spec is not None and spec.vector_entry_point is not None
    extra: dict[str, Any] = {"max_episode_steps": horizon} if horizon is not None else {}
    if batched and workers is not None and _accepts(spec.vector_entry_point, "num_threads"):
        extra["num_threads"] = workers
    elif not batched and workers is not None and workers > 1:
        factory = env_factory(env_id, kwargs, horizon)
        return WorkerVectorEnv(
            [factory] * num_envs,
            min(workers, num_envs // group),
            timeout=worker_timeout,
            info_keys=info_keys,
            parent_slice=step_in_parent,
            group=group,
        )
    if not batched:
        return KeyedSyncVectorEnv([env_factory(env_id, kwargs, horizon)] * num_envs, info_keys)
    return gym.make_vec(env_id, num_envs=num_envs, **dict(kwargs or {}), **extra)


def _accepts(entry_point: Any, argument: str) -> bool:
    if isinstance(entry_point, str):
        entry_point = load_env_creator(entry_point)
    try:
        parameters = inspect.signature(entry_point).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters


@dataclasses.dataclass(frozen=True)
class EnvFactory:
    """A picklable ``make_env(env_id, kwargs, horizon, task_space)`` for worker processes.

    `spec` is the parent's registration of `env_id` (see `env_factory`): a worker registers it when
    the id is unknown there, so ids registered at run time in the parent work too. A `task_space`
    (``env.task_space`` mapping) is not checked again: the parent's `make_env` checked it.
    """

    env_id: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    horizon: int | None = None
    spec: EnvSpec | None = None
    task_space: Mapping[str, Any] | None = None

    def prepare(self) -> None:
        """Register the id and import its modules: what a worker does at start-up, before it builds
        copies, so that the per-copy timeout measures the constructor alone."""
        if self.spec is not None and self.env_id not in registry:
            registry[self.env_id] = self.spec
        ensure_registered(self.env_id)  # imports a "module:Name" id's module
        spec = registry.get(self.env_id.split(":", 1)[-1])
        if spec is not None and isinstance(spec.entry_point, str):
            load_env_creator(spec.entry_point)  # the family's module

    def __call__(self) -> gym.Env:
        if self.spec is not None and self.env_id not in registry:
            registry[self.env_id] = self.spec
        return make_env(self.env_id, self.kwargs, self.horizon, self.task_space, check=False)


def env_factory(
    env_id: str,
    kwargs: Mapping[str, Any] | None = None,
    horizon: int | None = None,
    task_space: Mapping[str, Any] | None = None,
) -> EnvFactory:
    """An `EnvFactory` carrying the parent's registration of `env_id` when it can be pickled."""
    spec = registry.get(env_id) if ":" not in env_id else None
    if spec is not None:
        # Workers build single environments: a batched implementation's entry point is not needed there.
        spec = dataclasses.replace(spec, vector_entry_point=None)
        try:
            pickle.dumps(spec)
        except Exception:  # e.g. a lambda entry point; workers then rely on their own registry
            spec = None
    return EnvFactory(env_id, dict(kwargs or {}), horizon, spec, dict(task_space) if task_space is not None else None)
