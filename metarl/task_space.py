"""No-code task spaces: a task distribution declared in a config around any Gymnasium environment.

A config's ``env.task_space`` maps parameter names to a distribution and a way of applying the
value to the environment::

    env:
      id: Pendulum-v1
      task_space:
        g: {distribution: uniform, low: 5.0, high: 15.0, apply: {kwarg: g}}
        m: {distribution: log_uniform, low: 0.5, high: 2.0, apply: {attribute: m}}

A task is a plain dict ``{name: value}`` (JSON as it is). `TaskSpace` is the parsed, validated
spec; `TaskSpaceEnv` wraps the environment and implements the task protocol of `metarl.tasks`
(``task``, ``set_task``, ``sample_tasks``, ``sample_ood_tasks``, ``reset(options={"task": ...})``).
Mistakes in the spec are `ConfigError`s naming the key path; those that need the environment
(an unknown attribute, model field or body name, a parameter without effect) are found when the
environment is first built, before any training.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator

from metarl.config import ConfigError
from metarl.tasks import EnvError, ensure_registered

# distribution -> (required keys, optional keys)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "uniform": (("low", "high"), ()),
    "log_uniform": (("low", "high"), ()),
    "normal": (("mean", "std", "low", "high"), ()),
    "choice": (("values",), ("weights",)),
}
DISTRIBUTION_KEYS = ("distribution", "low", "high", "mean", "std", "values", "weights")
PARAMETER_KEYS = (*DISTRIBUTION_KEYS, "ood", "apply")
APPLY_KINDS = ("kwarg", "attribute", "model_field", "reward_goal")
MODEL_FIELD_KEYS = ("model_field", "names", "indices", "column", "mode")
MODES = ("scale", "set")
PROBE_STEPS = 20  # length of the fixed-action rollouts that check a parameter has an effect


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _suggest(key: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), choices, n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(choices)}"


def _number(value: Any) -> float | int | None:
    """`value` as a finite int or float (numbers YAML reads as strings, like 3e-4, included), else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if not math.isfinite(value):
        return None
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One parameter's distribution: ``uniform``, ``log_uniform``, ``normal`` (truncated to
    [low, high] by redrawing) or ``choice`` (one of `values`, with optional `weights`)."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    values: tuple[float, ...] = ()
    weights: tuple[float, ...] | None = None

    def sample(self, n: int, rng: np.random.Generator) -> list[float]:
        """`n` draws from the caller's generator, within the bounds."""
        if self.kind == "choice":
            return [self.values[i] for i in rng.choice(len(self.values), size=n, p=self.weights)]
        if self.kind == "uniform":
            draws = rng.uniform(self.low, self.high, size=n)
        elif self.kind == "log_uniform":
            draws = np.exp(rng.uniform(math.log(self.low), math.log(self.high), size=n))
        else:
            draws = self._truncated_normal(n, rng)
        return [float(v) for v in np.clip(draws, self.low, self.high)]

    def _truncated_normal(self, n: int, rng: np.random.Generator) -> np.ndarray:
        kept = np.empty(0)
        for _ in range(1000):
            draws = rng.normal(self.mean, self.std, size=max(64, 4 * (n - len(kept))))
            kept = np.concatenate([kept, draws[(draws >= self.low) & (draws <= self.high)]])
            if len(kept) >= n:
                return kept[:n]
        # [low, high] holds almost none of the mass: the clipped normal is the best we can do.
        return np.concatenate([kept, rng.normal(self.mean, self.std, size=n - len(kept))])

    def centre(self) -> float:
        """The value a parameter holds until a task is set."""
        if self.kind == "choice":
            return self.values[0]
        if self.kind == "log_uniform":
            return float(math.sqrt(self.low * self.high))
        if self.kind == "normal":
            return self.mean
        return (self.low + self.high) / 2

    def two_values(self) -> tuple[float, float] | None:
        """Two different values of the distribution (its bounds), or None when it has only one."""
        if self.kind == "choice":
            distinct = list(dict.fromkeys(self.values))
            return (distinct[0], distinct[1]) if len(distinct) > 1 else None
        return (self.low, self.high) if self.low != self.high else None


@dataclasses.dataclass(frozen=True)
class Apply:
    """How a parameter's value reaches the environment (`kind` is one of `APPLY_KINDS`)."""

    kind: str
    target: str = ""  # kwarg, attribute or model field name
    names: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    column: tuple[int, ...] = ()
    mode: str = "scale"
    info_key: str = ""
    replace: str | None = None

    def describe(self) -> str:
        if self.kind == "reward_goal":
            return f"reward_goal on info['{self.info_key}']"
        return f"{self.kind} '{self.target}'"


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    distribution: Distribution
    apply: Apply
    ood: Distribution | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpace:
    """A parsed and validated ``env.task_space``: parameters in their declared order."""

    parameters: tuple[Parameter, ...]
    spec: dict[str, Any]  # the mapping it was parsed from (what travels to worker processes)
    path: str = "env.task_space"

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | TaskSpace, path: str = "env.task_space") -> TaskSpace:
        """Parse a task-space mapping; raises `ConfigError` listing every problem, naming the key path."""
        if isinstance(spec, TaskSpace):
            return spec
        problems: list[str] = []
        parameters = _parse(spec, path, problems)
        if problems:
            raise ConfigError(problems)
        return cls(tuple(parameters), dict(spec), path)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def has_ood(self) -> bool:
        return any(p.ood is not None for p in self.parameters)

    def sample(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """`n` tasks; parameters are drawn in declared order, so the same generator gives the same tasks."""
        columns = [p.distribution.sample(n, rng) for p in self.parameters]
        return [dict(zip(self.names, row, strict=True)) for row in zip(*columns, strict=True)]

    def sample_ood(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """`n` out-of-distribution tasks: parameters with an ``ood`` entry draw from it, the others as usual."""
        columns = [(p.ood or p.distribution).sample(n, rng) for p in self.parameters]
        return [dict(zip(self.names, row, strict=True)) for row in zip(*columns, strict=True)]

    def default_task(self) -> dict[str, float]:
        """The task before one is set: every parameter at the centre of its distribution."""
        return {p.name: p.distribution.centre() for p in self.parameters}

    def coerce(self, task: Any) -> dict[str, float]:
        """Validate a task (a mapping ``{name: number}`` with every parameter) and return a copy."""
        if not isinstance(task, Mapping):
            raise TypeError(
                f"a task of this task space is a mapping of {', '.join(self.names)} to numbers, "
                f"got {type(task).__name__}: {task!r}"
            )
        unknown, missing = set(task) - set(self.names), set(self.names) - set(task)
        if unknown or missing:
            raise ValueError(
                f"a task must give exactly the parameters {', '.join(self.names)}"
                + (f"; unknown: {', '.join(map(str, sorted(unknown, key=str)))}" if unknown else "")
                + (f"; missing: {', '.join(sorted(missing))}" if missing else "")
            )
        coerced = {}
        for name in self.names:
            value = _number(task[name]) if not isinstance(task[name], str) else None
            if value is None:
                raise ValueError(f"task parameter '{name}' must be a finite number, got {task[name]!r}")
            coerced[name] = value
        return coerced


def task_space_problems(spec: Any, path: str = "env.task_space") -> list[str]:
    """Every problem of a task-space mapping that can be found without building the environment."""
    problems: list[str] = []
    _parse(spec, path, problems)
    return problems


def _parse(spec: Any, path: str, problems: list[str]) -> list[Parameter]:
    if not isinstance(spec, Mapping) or not spec:
        problems.append(f"'{path}' must be a non-empty mapping of parameter names to their specs, got {spec!r}")
        return []
    parameters = []
    for name, entry in spec.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            problems.append(f"'{where}': parameter names must be identifiers (letters, digits, _), got {name!r}")
            continue
        if not isinstance(entry, Mapping):
            problems.append(f"'{where}' must be a mapping with distribution, its bounds and apply, got {entry!r}")
            continue
        for key in entry:
            if key not in PARAMETER_KEYS:
                problems.append(f"unknown key '{where}.{key}' ({_suggest(key, PARAMETER_KEYS)})")
        distribution = _parse_distribution({k: v for k, v in entry.items() if k in DISTRIBUTION_KEYS}, where, problems)
        ood = None
        if "ood" in entry:
            ood_spec = entry["ood"]
            if not isinstance(ood_spec, Mapping):
                problems.append(f"'{where}.ood' must be a mapping like {{low: ..., high: ...}}, got {ood_spec!r}")
            else:
                for key in ood_spec:
                    if key not in DISTRIBUTION_KEYS:
                        problems.append(f"unknown key '{where}.ood.{key}' ({_suggest(key, DISTRIBUTION_KEYS)})")
                ood_spec = {k: v for k, v in ood_spec.items() if k in DISTRIBUTION_KEYS}
                if "distribution" not in ood_spec:  # same distribution, other bounds
                    base = {k: v for k, v in entry.items() if k in DISTRIBUTION_KEYS}
                    ood_spec = {**base, **ood_spec}
                ood = _parse_distribution(ood_spec, f"{where}.ood", problems)
        apply = _parse_apply(entry.get("apply"), f"{where}.apply", problems)
        if distribution is not None and apply is not None:
            parameters.append(Parameter(name, distribution, apply, ood))
    _check_targets(parameters, path, problems)
    return parameters


def _parse_distribution(spec: Mapping[str, Any], path: str, problems: list[str]) -> Distribution | None:
    kind = spec.get("distribution")
    choices = ", ".join(DISTRIBUTIONS)
    if kind is None:
        problems.append(f"'{path}.distribution' is missing (one of {choices})")
        return None
    if kind not in DISTRIBUTIONS:
        problems.append(f"'{path}.distribution' must be one of {choices}; got {kind!r}")
        return None
    required, optional = DISTRIBUTIONS[kind]
    before = len(problems)
    for key in spec:
        if key != "distribution" and key not in required + optional:
            takes = ", ".join(required + optional)
            problems.append(f"'{path}.{key}' is not used by distribution '{kind}' (it takes {takes})")
    for key in required:
        if key not in spec:
            problems.append(f"'{path}.{key}' is missing (distribution '{kind}' needs {', '.join(required)})")
    if len(problems) > before:
        return None
    if kind == "choice":
        return _parse_choice(spec, path, problems)
    numbers = {}
    for key in required:
        numbers[key] = _number(spec[key])
        if numbers[key] is None:
            problems.append(f"'{path}.{key}' must be a finite number, got {spec[key]!r}")
    if len(problems) > before:
        return None
    low, high = float(numbers["low"]), float(numbers["high"])
    if low > high:
        problems.append(f"'{path}.low' must be <= high (got {low:g} > {high:g})")
    if kind == "log_uniform" and low <= 0:
        problems.append(f"'{path}.low' must be positive for distribution 'log_uniform' (got {low:g})")
    if kind == "normal":
        mean, std = float(numbers["mean"]), float(numbers["std"])
        if std < 0:
            problems.append(f"'{path}.std' must be non-negative (got {std:g})")
        if not low <= mean <= high:
            problems.append(f"'{path}.mean' must lie in [low, high] (got {mean:g} outside [{low:g}, {high:g}])")
        if len(problems) == before:
            return Distribution(kind, low, high, mean=mean, std=std)
        return None
    return Distribution(kind, low, high) if len(problems) == before else None


def _parse_choice(spec: Mapping[str, Any], path: str, problems: list[str]) -> Distribution | None:
    raw = spec["values"]
    values = [_number(v) for v in raw] if isinstance(raw, (list, tuple)) else None
    if not values or any(v is None for v in values):
        problems.append(f"'{path}.values' must be a non-empty list of finite numbers, got {raw!r}")
        return None
    weights = None
    if "weights" in spec:
        raw_weights = spec["weights"]
        parsed = [_number(w) for w in raw_weights] if isinstance(raw_weights, (list, tuple)) else None
        if parsed is None or len(parsed) != len(values) or any(w is None or w < 0 for w in parsed) or not sum(parsed):
            problems.append(
                f"'{path}.weights' must be {len(values)} non-negative numbers (one per value) with a positive sum, "
                f"got {raw_weights!r}"
            )
            return None
        weights = tuple(float(w) / sum(parsed) for w in parsed)
    low, high = float(min(values)), float(max(values))
    return Distribution("choice", low=low, high=high, values=tuple(values), weights=weights)


def _parse_apply(spec: Any, path: str, problems: list[str]) -> Apply | None:
    kinds = ", ".join(APPLY_KINDS)
    if spec is None:
        problems.append(f"'{path}' is missing: say how the value reaches the environment (one of {kinds})")
        return None
    if not isinstance(spec, Mapping):
        problems.append(f"'{path}' must be a mapping with one of {kinds}, e.g. {{kwarg: g}}; got {spec!r}")
        return None
    given = [k for k in APPLY_KINDS if k in spec]
    if len(given) != 1:
        what = f"got {', '.join(map(str, spec))}" if spec else "got nothing"
        problems.append(f"'{path}' must name exactly one apply kind of {kinds} ({what})")
        return None
    kind = given[0]
    allowed = MODEL_FIELD_KEYS if kind == "model_field" else (kind,)
    for key in spec:
        if key not in allowed:
            problems.append(f"'{path}.{key}' is not used by apply kind '{kind}' (it takes {', '.join(allowed)})")
    value = spec[kind]
    if kind == "reward_goal":
        if not isinstance(value, Mapping) or not isinstance(value.get("info_key"), str):
            problems.append(f"'{path}.reward_goal' must be a mapping {{info_key: ..., replace: ...}}, got {value!r}")
            return None
        for key in value:
            if key not in ("info_key", "replace"):
                problems.append(f"'{path}.reward_goal.{key}' is unknown (reward_goal takes info_key, replace)")
        replace = value.get("replace")
        if replace is not None and not isinstance(replace, str):
            problems.append(f"'{path}.reward_goal.replace' must be an info key (a string), got {replace!r}")
            return None
        return Apply(kind, info_key=value["info_key"], replace=replace)
    if not isinstance(value, str) or not value.isidentifier():
        problems.append(f"'{path}.{kind}' must be a name (an identifier), got {value!r}")
        return None
    if kind != "model_field":
        return Apply(kind, target=value)
    names = spec.get("names", ())
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        problems.append(f"'{path}.names' must be a list of names, got {spec['names']!r}")
        return None
    indices = _int_list(spec.get("indices", ()), f"{path}.indices", problems)
    column = _int_list(spec.get("column", ()), f"{path}.column", problems)
    mode = spec.get("mode", "scale")
    if mode not in MODES:
        problems.append(f"'{path}.mode' must be one of {', '.join(MODES)}; got {mode!r}")
    if names and indices:
        problems.append(f"'{path}' takes names or indices, not both")
    if indices is None or column is None or mode not in MODES or (names and indices):
        return None
    return Apply(kind, target=value, names=tuple(names), indices=indices, column=column, mode=mode)


def _int_list(value: Any, path: str, problems: list[str]) -> tuple[int, ...] | None:
    items = [value] if isinstance(value, int) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        problems.append(f"'{path}' must be a non-negative integer or a list of them, got {value!r}")
        return None
    if any(i < 0 for i in items):
        problems.append(f"'{path}' must be non-negative, got {value!r}")
        return None
    return tuple(items)


def _check_targets(parameters: Sequence[Parameter], path: str, problems: list[str]) -> None:
    """Two parameters must not set the same constructor argument or attribute, or replace the same reward term."""
    seen: dict[tuple[str, str], str] = {}
    for p in parameters:
        if p.apply.kind == "model_field" or (p.apply.kind == "reward_goal" and not p.apply.replace):
            continue  # model fields may overlap: they apply in order
        key = (p.apply.kind, p.apply.replace if p.apply.kind == "reward_goal" else p.apply.target)
        if key in seen:
            problems.append(f"'{path}.{p.name}.apply' sets the same {p.apply.kind} as '{path}.{seen[key]}'")
        seen[key] = p.name


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
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in task_kwargs.items())
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
                        f"'{path}.{p.name}' has no effect: {target.field} is the same for {p.name}={_fmt(pair[0])} "
                        f"and {_fmt(pair[1])} (mode {target.mode} on elements whose nominal value is 0?)"
                    )
                continue
            if np.array_equal(*(self._rollout({**default, p.name: value}) for value in pair)):
                problems.append(
                    f"'{path}.{p.name}' has no effect: {p.name}={_fmt(pair[0])} and {_fmt(pair[1])} give the same "
                    f"{PROBE_STEPS}-step rollout (observations, rewards) of {self.env_id} from the same seed"
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
