"""The task-space wrapper: any Gymnasium environment as a task distribution, from its `TaskSpace`.

`TaskSpaceEnv` applies a task's values (constructor arguments, attributes, MuJoCo model fields, a
reward goal) and implements the task protocol of `metarl.tasks`. The spec itself (distributions,
parsing, sampling) is `metarl.task_space`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator

from metarl.errors import ConfigError, EnvError
from metarl.task_space import PROBE_STEPS, Apply, TaskSpace, format_value
from metarl.tasks import ensure_registered


@dataclasses.dataclass(frozen=True)
class _Target:
    """Where a model-field parameter writes: rows (and columns) of one field of the MuJoCo model."""

    field: str
    index: tuple[np.ndarray, ...]
    mode: str


class TaskSpaceEnv(gym.Wrapper):
    """A Gymnasium environment whose task is a point of a `TaskSpace`.

    Setting a task applies it at once: constructor arguments (``kwarg``) rebuild the wrapped
    environment when their value changes; attributes are set on the unwrapped environment (again
    before every episode); MuJoCo model fields are written as nominal × scale (or set), always from
    the nominal model, so switching tasks never drifts; ``reward_goal`` parameters change the reward
    to ``reward - info[replace] - |info[info_key] - value|`` and report the goal term in
    ``info["reward_goal"]``. A plain ``reset()`` keeps the task; the task never enters the observation.

    Args:
        env_id: Gymnasium id or ``module:Id``.
        kwargs: constructor arguments (task ``kwarg`` parameters add to them).
        horizon: ``max_episode_steps`` (None: the id's).
        task_space: the ``env.task_space`` mapping, or a parsed `TaskSpace`.
        check: validate every parameter against the built environment and check that each one
            changes something (`ConfigError` otherwise). Copies of an already checked env skip it.
    """

    def __init__(
        self,
        env_id: str,
        kwargs: Mapping[str, Any] | None = None,
        horizon: int | None = None,
        task_space: Mapping[str, Any] | TaskSpace | None = None,
        check: bool = True,
    ) -> None:
        if task_space is None:
            raise ValueError("TaskSpaceEnv needs a task_space")
        self.env_id, self.env_kwargs, self.horizon = env_id, dict(kwargs or {}), horizon
        self.space = TaskSpace.parse(task_space)
        self._task = self.space.default_task()
        self._built_kwargs = self._kwargs_of(self._task)
        super().__init__(self._make(self._built_kwargs))
        self._bind()
        self._apply(self._task)
        if check:
            self._check()

    # --- the task protocol

    @property
    def task(self) -> dict[str, float]:
        """The current task, ``{name: value}``."""
        return dict(self._task)

    @task.setter
    def task(self, task: Any) -> None:
        task = self.space.coerce(task)
        self._apply(task)
        self._task = task

    def set_task(self, task: Any) -> None:
        """Switch to `task` (same as ``env.task = task``)."""
        self.task = task

    def get_task(self) -> dict[str, float]:
        """The current task."""
        return self.task

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """`n` tasks of the task space, from the caller's generator."""
        return self.space.sample(n, rng)

    def sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """`n` out-of-distribution tasks (parameters with an ``ood`` entry draw from it)."""
        if not self.space.has_ood:
            raise EnvError(
                f"'{self.space.path}' defines no out-of-distribution split: give a parameter an "
                "ood: {low: ..., high: ...} entry, or use --split test"
            )
        return self.space.sample_ood(n, rng)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if options and "task" in options:
            self.task = options["task"]
            options = {k: v for k, v in options.items() if k != "task"} or None
        self._apply_attributes()
        observation, info = self.env.reset(seed=seed, options=options)
        self._apply_attributes()  # in case the environment's reset restored them
        return observation, {**info, "task": self.task}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        if self._goals:
            goal = 0.0
            try:
                for info_key, replace, value in self._goals:
                    if replace is not None:
                        reward = reward - info[replace]
                    goal -= abs(float(info[info_key]) - value)
            except KeyError as error:
                raise EnvError(
                    f"{self.env_id}'s step info has no key {error} for a reward_goal of '{self.space.path}' "
                    f"(it has: {', '.join(map(str, info))})"
                ) from None
            reward = float(reward) + goal
            info = {**info, "reward_goal": goal}
        return observation, reward, terminated, truncated, info

    # Pickling rebuilds the environment and sets the task again (for worker processes).
    def __getstate__(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "kwargs": self.env_kwargs,
            "horizon": self.horizon,
            "task_space": self.space.spec,
            "task": self.task,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["env_id"], state["kwargs"], state["horizon"], state["task_space"], check=False)
        self.task = state["task"]

    # --- building and applying

    def _kwargs_of(self, task: Mapping[str, float]) -> dict[str, float]:
        return {p.apply.target: task[p.name] for p in self.space.parameters if p.apply.kind == "kwarg"}

    def _make(self, task_kwargs: Mapping[str, float]) -> gym.Env:
        ensure_registered(self.env_id)
        extra = {"max_episode_steps": self.horizon} if self.horizon is not None else {}
        try:
            return gym.make(self.env_id, **{**self.env_kwargs, **task_kwargs}, **extra)
        except TypeError as error:
            raise ConfigError(self._kwarg_problems(task_kwargs, error)) from None
        except gym.error.Error as error:
            raise EnvError(f"cannot create '{self.env_id}': {error}") from None

    def _kwarg_problems(self, task_kwargs: Mapping[str, float], error: Exception) -> list[str]:
        accepted, open_ended = _constructor_arguments(self.env_id)
        problems, kwargs = [], [p for p in self.space.parameters if p.apply.kind == "kwarg"]
        for p in kwargs:
            rejected = f"unexpected keyword argument '{p.apply.target}'" in str(error)
            if p.apply.target not in accepted and (rejected or not open_ended):
                problems.append(
                    f"'{self.space.path}.{p.name}.apply.kwarg': {self.env_id} has no constructor argument "
                    f"'{p.apply.target}' (it takes: {', '.join(accepted) or 'none'})"
                )
        if not problems:
            values = ", ".join(f"{k}={format_value(v)}" for k, v in task_kwargs.items())
            where = ", ".join(f"'{self.space.path}.{p.name}'" for p in kwargs) or f"'{self.space.path}'"
            problems.append(f"{where}: creating {self.env_id} with {values} failed: {error}")
        return problems

    def _bind(self) -> None:
        """Resolve attributes and model fields on the (re)built environment; remember nominal values."""
        unwrapped, path = self.env.unwrapped, self.space.path
        problems: list[str] = []
        self._targets: dict[str, _Target] = {}
        for p in self.space.parameters:
            where = f"'{path}.{p.name}.apply.{p.apply.kind}'"
            if p.apply.kind == "attribute" and not hasattr(unwrapped, p.apply.target):
                public = [a for a in dir(unwrapped) if not a.startswith("_")]
                close = difflib.get_close_matches(p.apply.target, public, n=3)
                problems.append(
                    f"{where}: the unwrapped env ({type(unwrapped).__name__}) has no attribute '{p.apply.target}'"
                    + (f" (did you mean {', '.join(close)}?)" if close else "")
                )
            elif p.apply.kind == "model_field":
                target = _resolve_model_field(unwrapped, p.apply, where, problems)
                if target is not None:
                    self._targets[p.name] = target
        if problems:
            raise ConfigError(problems)
        model = getattr(unwrapped, "model", None)
        self._nominal = {t.field: getattr(model, t.field).copy() for t in self._targets.values()}
        self._goals: list[tuple[str, str | None, float]] = []

    def _apply(self, task: Mapping[str, float]) -> None:
        task_kwargs = self._kwargs_of(task)
        if task_kwargs != self._built_kwargs:
            old = self.env
            self.env = self._make(task_kwargs)
            self._built_kwargs = task_kwargs
            if self.env.observation_space != old.observation_space or self.env.action_space != old.action_space:
                raise ConfigError(
                    [f"'{self.space.path}': the constructor arguments {task_kwargs} change the environment's spaces"]
                )
            old.close()
            self._bind()
        self._pending_attributes = {
            p.apply.target: task[p.name] for p in self.space.parameters if p.apply.kind == "attribute"
        }
        self._apply_attributes()
        if self._targets:
            model = self.env.unwrapped.model
            values = {field: nominal.copy() for field, nominal in self._nominal.items()}
            for name, target in self._targets.items():
                if target.mode == "scale":
                    values[target.field][target.index] *= task[name]
                else:
                    values[target.field][target.index] = task[name]
            for field, value in values.items():
                getattr(model, field)[...] = value
        self._goals = [
            (p.apply.info_key, p.apply.replace, float(task[p.name]))
            for p in self.space.parameters
            if p.apply.kind == "reward_goal"
        ]

    def _apply_attributes(self) -> None:
        unwrapped = self.env.unwrapped
        for attribute, value in self._pending_attributes.items():
            setattr(unwrapped, attribute, value)

    # --- validation against the built environment

    def _check(self) -> None:
        """Every reward_goal's info keys exist, and every other parameter changes the environment."""
        default, path = self.space.default_task(), self.space.path
        problems = []
        if self._goals:
            self.reset(seed=0)
            self.env.step(_probe_action(self.action_space, np.random.default_rng(0)))
            _, _, _, _, info = self.env.step(_probe_action(self.action_space, np.random.default_rng(1)))
            for p in self.space.parameters:
                if p.apply.kind != "reward_goal":
                    continue
                for key, label in ((p.apply.info_key, "info_key"), (p.apply.replace, "replace")):
                    if key is not None and key not in info:
                        problems.append(
                            f"'{path}.{p.name}.apply.reward_goal.{label}': {self.env_id}'s step info has no key "
                            f"'{key}' (it has: {', '.join(map(str, info)) or 'nothing'})"
                        )
            if problems:
                raise ConfigError(problems)
        for p in self.space.parameters:
            pair = p.distribution.two_values()
            if p.apply.kind == "reward_goal" or pair is None:
                continue
            if p.apply.kind == "model_field":
                target = self._targets[p.name]
                written = []
                for value in pair:
                    self.task = {**default, p.name: value}
                    written.append(getattr(self.env.unwrapped.model, target.field).copy())
                if np.array_equal(*written):
                    problems.append(
                        f"'{path}.{p.name}' has no effect: {target.field} is the same for "
                        f"{p.name}={format_value(pair[0])} and {format_value(pair[1])} (mode {target.mode} on "
                        "elements whose nominal value is 0?)"
                    )
                continue
            if np.array_equal(*(self._rollout({**default, p.name: value}) for value in pair)):
                problems.append(
                    f"'{path}.{p.name}' has no effect: {p.name}={format_value(pair[0])} and "
                    f"{format_value(pair[1])} give the same {PROBE_STEPS}-step rollout (observations, rewards) of "
                    f"{self.env_id} from the same seed"
                    + (
                        "; an attribute read only when the env is built needs apply: {kwarg: ...}"
                        if p.apply.kind == "attribute"
                        else ""
                    )
                )
        self.task = default
        if problems:
            raise ConfigError(problems)

    def _rollout(self, task: Mapping[str, float]) -> np.ndarray:
        """Observations and rewards of a short rollout with fixed random actions, from seed 0."""
        self.task = task
        observation, _ = self.reset(seed=0)
        rng = np.random.default_rng(0)
        trace = [np.asarray(observation, dtype=float).ravel()]
        for _ in range(PROBE_STEPS):
            observation, reward, terminated, truncated, _ = self.step(_probe_action(self.action_space, rng))
            trace += [np.asarray(observation, dtype=float).ravel(), np.array([reward, terminated, truncated], float)]
            if terminated or truncated:
                break
        return np.concatenate(trace)


def _probe_action(space: gym.Space, rng: np.random.Generator) -> Any:
    """An action drawn from `rng` (Box: uniform within the finite bounds, else in [-1, 1])."""
    if isinstance(space, spaces.Box):
        low = np.where(np.isfinite(space.low), space.low, -1.0)
        high = np.where(np.isfinite(space.high), space.high, 1.0)
        return rng.uniform(low, high).astype(space.dtype)
    if isinstance(space, spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    space.seed(int(rng.integers(2**31)))
    return space.sample()


def _constructor_arguments(env_id: str) -> tuple[list[str], bool]:
    """The named arguments of the id's entry point, and whether it also takes ``**kwargs`` (or is unknown)."""
    try:
        entry_point = gym.spec(env_id.split(":")[-1]).entry_point
        creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
        parameters = list(inspect.signature(creator).parameters.values())
    except Exception:
        return [], True
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# Name prefix of a model field -> the MuJoCo object its rows belong to (dof_* rows are joint dofs).
_FIELD_OBJECTS = {
    "body": "mjOBJ_BODY",
    "jnt": "mjOBJ_JOINT",
    "dof": "mjOBJ_JOINT",
    "geom": "mjOBJ_GEOM",
    "site": "mjOBJ_SITE",
    "actuator": "mjOBJ_ACTUATOR",
    "tendon": "mjOBJ_TENDON",
}
_OBJECT_COUNTS = {"body": "nbody", "jnt": "njnt", "dof": "nv", "geom": "ngeom", "site": "nsite"}
_OBJECT_COUNTS |= {"actuator": "nu", "tendon": "ntendon"}


def _resolve_model_field(unwrapped: gym.Env, apply: Apply, where: str, problems: list[str]) -> _Target | None:
    """The rows and columns of a MuJoCo model field that a parameter writes (problems listed otherwise)."""
    import mujoco

    model = getattr(unwrapped, "model", None)
    if not isinstance(model, mujoco.MjModel):
        problems.append(
            f"{where}: '{apply.target}' is a MuJoCo model field, but {type(unwrapped).__name__} "
            "has no MuJoCo model (env.unwrapped.model)"
        )
        return None
    fields = sorted(
        name
        for name in dir(model)
        if not name.startswith("_")
        and isinstance(getattr(model, name, None), np.ndarray)
        and getattr(model, name).dtype.kind == "f"
    )
    if apply.target not in fields:
        close = difflib.get_close_matches(apply.target, fields, n=3)
        problems.append(
            f"{where}: the MuJoCo model has no floating-point field '{apply.target}'"
            + (f" (did you mean {', '.join(close)}?)" if close else " (e.g. body_mass, dof_damping, geom_friction)")
        )
        return None
    array = getattr(model, apply.target)
    prefix = apply.target.split("_")[0]
    if apply.names:
        if prefix not in _FIELD_OBJECTS:
            problems.append(
                f"{where}: names select rows of fields of {', '.join(_FIELD_OBJECTS)}; use indices for '{apply.target}'"
            )
            return None
        obj = getattr(mujoco.mjtObj, _FIELD_OBJECTS[prefix])
        count = model.njnt if prefix == "dof" else getattr(model, _OBJECT_COUNTS[prefix])
        valid = [mujoco.mj_id2name(model, obj, i) for i in range(count)]
        rows: list[int] = []
        for name in apply.names:
            index = mujoco.mj_name2id(model, obj, name)
            if index < 0:
                kind = "joint" if prefix in ("jnt", "dof") else prefix
                shown = [v for v in valid if v][:12]
                plural = "bodies" if kind == "body" else f"{kind}s"
                problems.append(
                    f"{where}: the model has no {kind} named '{name}' (its {plural}: {', '.join(shown)}"
                    + (", ..." if len([v for v in valid if v]) > 12 else "")
                    + ")"
                )
                continue
            if prefix == "dof":
                width = {mujoco.mjtJoint.mjJNT_FREE: 6, mujoco.mjtJoint.mjJNT_BALL: 3}.get(model.jnt_type[index], 1)
                rows += range(model.jnt_dofadr[index], model.jnt_dofadr[index] + width)
            else:
                rows.append(index)
        if len(rows) == 0:
            return None
    elif apply.indices:
        bad = [i for i in apply.indices if i >= array.shape[0]]
        if bad:
            problems.append(f"{where}: indices {bad} are out of range for {apply.target} ({array.shape[0]} rows)")
            return None
        rows = list(apply.indices)
    else:
        rows = list(range(array.shape[0]))
    if apply.column:
        if array.ndim != 2:
            problems.append(f"{where}: column needs a 2-D field; {apply.target} has shape {array.shape}")
            return None
        bad = [c for c in apply.column if c >= array.shape[1]]
        if bad:
            problems.append(f"{where}: columns {bad} are out of range for {apply.target} ({array.shape[1]} columns)")
            return None
        index = np.ix_(rows, list(apply.column))
    else:
        index = (np.asarray(rows),)
    return _Target(apply.target, index, apply.mode)
