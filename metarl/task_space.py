"""No-code task spaces: a task distribution declared in a config around any Gymnasium environment.

This module is the spec (parsing, validation without an environment, sampling); the wrapper that
applies tasks to an environment is `metarl.task_space_env.TaskSpaceEnv`.

A config's ``env.task_space`` maps parameter names to a distribution and a way of applying the
value to the environment::

    env:
      id: Pendulum-v1
      task_space:
        g: {distribution: uniform, low: 5.0, high: 15.0, apply: {kwarg: g}}
        m: {distribution: log_uniform, low: 0.5, high: 2.0, apply: {attribute: m}}

A task is a plain dict ``{name: value}`` (JSON as it is). `TaskSpace` is the parsed, validated
spec; `metarl.task_space_env.TaskSpaceEnv` wraps the environment and implements the task protocol
of `metarl.tasks` (``task``, ``set_task``, ``sample_tasks``, ``sample_ood_tasks``,
``reset(options={"task": ...})``).
Mistakes in the spec are `ConfigError`s naming the key path; those that need the environment
(an unknown attribute, model field or body name, a parameter without effect) are found when the
environment is first built, before any training.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metarl.errors import ConfigError

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


def format_value(value: Any) -> str:
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
