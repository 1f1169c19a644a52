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

A family with a benchmark's **fixed task lists** (Meta-World's 50 train and 50 test goals) also
has ``task_lists() -> {"train": [...], "test": [...]}`` (and ``"ood"`` where it has one): metarl
then trains on tasks of the train list only and evaluates on the test list (`TaskSplits`).

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


SPLITS = ("train", "test", "ood")
# A held-out set that takes more than this share of a finite distribution's distinct tasks is worth a warning.
_LARGE_SHARE = 0.2


def task_key(task: Any) -> str:
    """A task's identity: its JSON form with sorted keys (equal tasks, equal keys)."""
    return json.dumps(task_to_json(task), sort_keys=True)


def declared_task_lists(env: gym.Env | VectorEnv) -> dict[str, list[Any]] | None:
    """The family's fixed task lists (``task_lists()``: "train", "test", optionally "ood"), or None."""
    try:
        method = env.get_wrapper_attr("task_lists") if isinstance(env, gym.Env) else env.task_lists
    except AttributeError:
        return None
    name = env.spec.id if getattr(env, "spec", None) is not None else type(env).__name__
    with environment_errors("listing its tasks (task_lists)"):
        lists = method()
    if not isinstance(lists, Mapping) or not {"train", "test"} <= set(lists) or not set(lists) <= set(SPLITS):
        raise EnvError(
            f"{name}.task_lists() must return a mapping with the lists 'train' and 'test' (and optionally 'ood'), "
            f"got {type(lists).__name__} {sorted(lists) if isinstance(lists, Mapping) else ''}"
        )
    empty = [split for split, tasks in lists.items() if len(tasks) == 0]
    if empty:
        raise EnvError(f"{name}.task_lists() returned an empty '{empty[0]}' list")
    return {split: list(tasks) for split, tasks in lists.items()}


class TaskSplits:
    """Reproducible, disjoint train and test task sets for one task distribution.

    A family with fixed task lists (``task_lists()``) is trained on its train list and evaluated on
    its test list: each meta-batch draws distinct tasks from the train list (with replacement only
    when the batch is larger than the list; afresh every iteration), and the held-out tasks are the
    whole test list, or a seeded subset of `num_test` of them when the list is longer.

    Otherwise the test tasks are the first draws of a generator seeded with `test_seed`; training
    tasks come from a generator seeded with `train_seed` and never include a test task.
    Out-of-distribution tasks (`ood`) come from the family's "ood" list, or its
    ``sample_ood_tasks(n, rng)``, where it defines one.
    """

    def __init__(self, env: gym.Env | VectorEnv, train_seed: int, test_seed: int, num_test: int) -> None:
        self._env, self._train_seed, self._test_seed = env, train_seed, test_seed
        self._train_rng = np.random.default_rng([train_seed, 0])
        self.lists = declared_task_lists(env)
        if self.lists is not None:
            self.test = _subset(self.lists["test"], num_test, np.random.default_rng([test_seed, 1]))
        else:
            self.test = sample_tasks(env, num_test, np.random.default_rng([test_seed, 1]))
        self._test_keys = {task_key(t) for t in self.test}
        self.disjoint = True
        self._checked_share = False

    def sample_train(self, n: int) -> list[Any]:
        """`n` training tasks: from the fixed train list, or drawn, redrawing any that coincide with a test task.

        A distribution with too few distinct tasks to hold any out (directions ±1) is sampled as
        is, with a warning: its "held-out" tasks are then tasks of the training distribution.
        """
        if self.lists is not None:
            train = self.lists["train"]
            return [train[i] for i in self._train_rng.choice(len(train), n, replace=n > len(train))]
        if not self._checked_share:
            self._checked_share = True
            self._warn_large_share()
        tasks: list[Any] = []
        for _ in range(100):
            draws = sample_tasks(self._env, n - len(tasks), self._train_rng)
            if not self.disjoint:
                return tasks + draws
            tasks += [t for t in draws if task_key(t) not in self._test_keys]
            if len(tasks) == n:
                return tasks
        self.disjoint = False
        warnings.warn(
            "the task distribution has too few distinct tasks for a held-out split; training samples "
            "it as is, so the test tasks also occur in training",
            stacklevel=2,
        )
        return tasks + sample_tasks(self._env, n - len(tasks), self._train_rng)

    def _warn_large_share(self, probes: int = 1000) -> None:
        """Warn when the held-out tasks take a large share of a finite distribution: training never sees them."""
        drawn = {task_key(t) for t in sample_tasks(self._env, probes, np.random.default_rng([self._train_seed, 4]))}
        if len(drawn) == probes:
            return  # no task drawn twice: a continuous (or very large) distribution
        held = len(drawn & self._test_keys)
        if held / len(drawn) > _LARGE_SHARE and held < len(drawn):
            warnings.warn(
                f"the {len(self.test)} held-out tasks are {held} of the {len(drawn)} distinct tasks this distribution "
                f"draws, so training only ever sees the other {len(drawn) - held}; hold out fewer "
                "(evaluation.num_tasks), or declare the family's fixed train/test lists "
                "(task_lists(): see metarl.tasks)",
                stacklevel=3,
            )

    def evaluation_tasks(self, split: str, n: int) -> list[Any]:
        """The tasks `metarl evaluate --split` runs on: ``test`` the held-out tasks, ``ood`` `n` tasks
        outside the training distribution, ``train`` `n` training tasks (a seeded subset of the fixed
        train list, or fresh draws that exclude the held-out tasks), for meta-train figures."""
        if split == "test":
            return self.test
        if split == "ood":
            return self.ood(n)
        rng = np.random.default_rng([self._test_seed, 5])
        if self.lists is not None:
            return _subset(self.lists["train"], n, rng)
        tasks: list[Any] = []
        for _ in range(100):
            tasks += [t for t in sample_tasks(self._env, n - len(tasks), rng) if task_key(t) not in self._test_keys]
            if len(tasks) >= n:
                break
        return tasks[:n]

    def ood(self, n: int) -> list[Any]:
        """`n` tasks outside the training distribution: the family's "ood" list, or ``sample_ood_tasks``."""
        rng = np.random.default_rng([self._test_seed, 3])
        if self.lists is not None and "ood" in self.lists:
            return _subset(self.lists["ood"], n, rng)
        try:
            sampler = self._env.get_wrapper_attr("sample_ood_tasks")
        except AttributeError:
            raise EnvError(
                f"{self._env.spec.id if self._env.spec else self._env} defines no out-of-distribution "
                "split (no 'ood' task list nor sample_ood_tasks(n, rng) method); use --split test"
            ) from None
        return list(sampler(n, rng))

    def state(self) -> dict[str, Any]:
        """Generator state, for checkpoints."""
        return self._train_rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self._train_rng.bit_generator.state = state


def _subset(tasks: Sequence[Any], n: int, rng: np.random.Generator) -> list[Any]:
    """All of `tasks` when ``n >= len(tasks)``, else `n` of them chosen by `rng`, in list order."""
    if n >= len(tasks):
        return list(tasks)
    return [tasks[i] for i in sorted(rng.choice(len(tasks), n, replace=False))]
