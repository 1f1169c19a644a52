"""The task protocol, and how metarl creates task-distribution environments and sets their tasks.

A **task distribution** is a Gymnasium environment that also has

- ``sample_tasks(n, rng: numpy.random.Generator) -> list[task]``: draws tasks from the caller's
  generator only (never the global ``np.random`` or ``random``), so that a seed fixes the tasks, and
- a readable, settable ``task`` attribute on the environment or one of its wrappers: metarl sets
  it with ``env.task = task``, on vector envs ``envs.set_attr("task", tasks)``. ``set_task(task)``
  and ``reset(options={"task": task})``, where an environment offers them, must agree with it.

Setting a task determines the behaviour completely: setting it again gives the same episodes for
the same seed and actions (write nominal × factor, never scale in place). ``reset()`` and
``reset(seed=...)`` keep the current task, and so does pickling (worker processes). Tasks are
small immutable values (frozen dataclasses or mappings of numbers) that round-trip through JSON:
``task_to_json`` gives plain data and the environment accepts that data back as a task. The task
is never part of the observation, nor does it set the start state: the policy infers it from
rewards. ``metarl check-env ID`` tests all of this (`metarl.check`).

Environments are created from Gymnasium ids; ids under the ``MetaRL/`` namespace are registered by
the ``envs`` package, which metarl loads by name on first use (metarl does not depend on it
otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import registry
from gymnasium.vector import VectorEnv

from metarl.errors import CheckpointError, EnvError, MetarlError

# Namespaces whose ids are registered by importing a package.
NAMESPACE_PROVIDERS = {"MetaRL": "envs"}


@runtime_checkable
class TaskDistribution(Protocol):
    """What metarl needs from an environment besides the Gymnasium API (the full contract: module docstring)."""

    task: Any

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]: ...


def ensure_registered(env_id: str) -> None:
    """Import the package that registers `env_id`'s namespace, or fail with a helpful message.

    ``module:Id`` imports ``module`` (which registers ``Id``); ``module:Callable`` (an environment
    class or factory the module does not register) is registered under the id ``Callable``, so
    that ``gymnasium.make(env_id)`` finds it.
    """
    if ":" in env_id:
        _register_entry_point(env_id)
        return
    if env_id in registry:
        return
    namespace = env_id.split("/")[0] if "/" in env_id else None
    if namespace in NAMESPACE_PROVIDERS:
        importlib.import_module(NAMESPACE_PROVIDERS[namespace])
    if env_id not in registry:
        known = sorted(i for i in registry if i.startswith("MetaRL/"))
        raise EnvError(
            f"unknown environment id '{env_id}'. Task families shipped with metarl: {', '.join(known)}. "
            "Other ids must be registered with gymnasium first, or written as 'module:Id' "
            "(the module is imported to register it); `metarl envs` lists the families."
        )


def _register_entry_point(env_id: str) -> None:
    module_name, name = env_id.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise EnvError(
            f"cannot import module '{module_name}' of '{env_id}': {error}. Modules are looked up on sys.path "
            "(the metarl command adds the current directory); set PYTHONPATH otherwise"
        ) from None
    if name in registry:
        return
    target = getattr(module, name, None)
    if not callable(target) or (isinstance(target, type) and not issubclass(target, gym.Env)):
        raise EnvError(
            f"'{env_id}': module '{module_name}' neither registers the Gymnasium id '{name}' nor defines an "
            f"environment class or factory '{name}'"
        )
    gym.register(id=name, entry_point=target)


def check_trusted_env(env_id: str, trusted: Collection[str], source: str) -> None:
    """Refuse an env id from untrusted data (a checkpoint's config) that would import code.

    Making ``module:Name`` imports ``module`` and calls ``Name`` with the config's kwargs, so a
    checkpoint from elsewhere could run any code through it (``os:system``). Such data may name a
    Gymnasium id that is already registered (or one of metarl's own families), or an entry point
    whose module, or the whole ``module:Name``, is in `trusted`: what the user passed explicitly
    (``--trust-module``, ``trust_modules=``). Raises `CheckpointError`, importing nothing.
    """
    if ":" not in env_id:
        if env_id not in registry:
            namespace = env_id.split("/")[0] if "/" in env_id else None
            if namespace in NAMESPACE_PROVIDERS:
                importlib.import_module(NAMESPACE_PROVIDERS[namespace])
        if env_id in registry:
            return
        raise CheckpointError(
            f"{source} names env.id '{env_id}', which is not a registered Gymnasium environment; register it "
            "first (import the package that registers it), or pass its entry point with --trust-module"
        )
    module = env_id.split(":", 1)[0]
    if env_id in trusted or module in trusted:
        return
    raise CheckpointError(
        f"{source} names env.id '{env_id}', an entry point in module '{module}'; metarl does not import "
        "modules that a checkpoint names, since a checkpoint from elsewhere could run any code that way. If you "
        f"trust that module, pass --trust-module {module} (in Python: trust_modules=['{module}'])"
    )


@contextlib.contextmanager
def environment_errors(doing: str) -> Iterator[None]:
    """Report an exception raised by environment code as an `EnvError` naming what was being done.

    The environment's own message is kept (its traceback is the error's cause, shown by
    ``--debug``); metarl's own errors and interrupts pass through unchanged.
    """
    try:
        yield
    except (MetarlError, KeyboardInterrupt):
        raise
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise EnvError(
            f"the environment raised {type(error).__name__} while {doing}: {first_line}. Fix the environment "
            "(`metarl check-env ID` tests it), or its settings in the config"
        ) from error


def horizon_of(env: gym.Env, override: int | None = None) -> int:
    """The episode length: `override`, else the registered ``max_episode_steps``."""
    horizon = override if override is not None else (env.spec.max_episode_steps if env.spec else None)
    if horizon is None:
        raise EnvError(f"'{env.spec.id if env.spec else env}' has no max_episode_steps; set env.horizon in the config")
    return int(horizon)


def sample_tasks(env: gym.Env | VectorEnv, n: int, rng: np.random.Generator) -> list[Any]:
    """Draw `n` tasks from the environment's distribution, through any wrappers."""
    try:
        sampler = env.get_wrapper_attr("sample_tasks") if isinstance(env, gym.Env) else env.sample_tasks
    except AttributeError:
        raise EnvError(
            f"{env} is not a task distribution: it has no sample_tasks(n, rng) method "
            "(see metarl.tasks for the protocol)"
        ) from None
    return list(sampler(n, rng))


def set_tasks(envs: VectorEnv, tasks: Sequence[Any]) -> None:
    """Give every copy of a vector env its own task (``len(tasks) == envs.num_envs``)."""
    envs.set_attr("task", list(tasks))


def task_to_json(task: Any) -> Any:
    """Plain JSON data for a task (dataclass fields, mapping, array or number)."""
    if dataclasses.is_dataclass(task) and not isinstance(task, type):
        task = dataclasses.asdict(task)
    return json.loads(json.dumps(task, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def task_features(task: Any) -> np.ndarray:
    """The numbers of a task, flattened in a fixed order (mapping keys sorted): what an oracle
    policy observes next to the environment's observation. Strings and booleans are left out."""
    values: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, Mapping):
            for key in sorted(x):
                walk(x[key])
        elif isinstance(x, (list, tuple)):
            for item in x:
                walk(item)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            values.append(float(x))

    walk(task_to_json(task))
    return np.asarray(values, dtype=np.float32)


class TaskSplits:
    """Reproducible, disjoint train and test task sets for one task distribution.

    Test tasks are the first draws of a generator seeded with `test_seed`; training tasks come from
    a generator seeded with `train_seed` and never include a test task. Out-of-distribution tasks
    (`ood`) come from the family's ``sample_ood_tasks(n, rng)`` where it defines one.
    """

    def __init__(self, env: gym.Env | VectorEnv, train_seed: int, test_seed: int, num_test: int) -> None:
        self._env, self._test_seed = env, test_seed
        self._train_rng = np.random.default_rng([train_seed, 0])
        self.test = sample_tasks(env, num_test, np.random.default_rng([test_seed, 1]))
        self._test_keys = {json.dumps(task_to_json(t), sort_keys=True) for t in self.test}
        self.disjoint = True

    def sample_train(self, n: int) -> list[Any]:
        """`n` training tasks, redrawing any that coincide with a test task.

        A distribution with too few distinct tasks to hold any out (directions ±1) is sampled as
        is, with a warning: its "held-out" tasks are then tasks of the training distribution.
        """
        tasks: list[Any] = []
        for _ in range(100):
            draws = sample_tasks(self._env, n - len(tasks), self._train_rng)
            if not self.disjoint:
                return tasks + draws
            tasks += [t for t in draws if json.dumps(task_to_json(t), sort_keys=True) not in self._test_keys]
            if len(tasks) == n:
                return tasks
        self.disjoint = False
        warnings.warn(
            "the task distribution has too few distinct tasks for a held-out split; training samples "
            "it as is, so the test tasks also occur in training",
            stacklevel=2,
        )
        return tasks + sample_tasks(self._env, n - len(tasks), self._train_rng)

    def ood(self, n: int) -> list[Any]:
        """`n` tasks outside the training distribution, from the family's ``sample_ood_tasks``."""
        try:
            sampler = self._env.get_wrapper_attr("sample_ood_tasks")
        except AttributeError:
            raise EnvError(
                f"{self._env.spec.id if self._env.spec else self._env} defines no out-of-distribution "
                "split (no sample_ood_tasks(n, rng) method); use --split test"
            ) from None
        return list(sampler(n, np.random.default_rng([self._test_seed, 3])))

    def state(self) -> dict[str, Any]:
        """Generator state, for checkpoints."""
        return self._train_rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self._train_rng.bit_generator.state = state
