"""Meta-World's meta-learning benchmarks (Yu et al. 2019) as task families: ML1, ML10 and ML45.

A Sawyer arm must reach, push, pick and place, open doors and drawers. Meta-World defines each
benchmark by fixed task lists: ML1 has 50 training and 50 test goal (and object) positions for one
task class; ML10 and ML45 train on 10 or 45 classes and hold out 5 others, 50 positions each. The
families here keep those lists (``task_lists()``), so metarl trains on the training tasks only and
evaluates on the benchmark's own test tasks, and report ``info["success"]``, which metarl turns
into success rates (an episode succeeds if it succeeded at any step).

The environment is a plain ``gymnasium.Env`` around one of Meta-World's own environment classes,
built from the class and the task in every process (Meta-World's own pickle is ~42 MB and does not
restore the arm's position faithfully). The copies of one task in a process share one MuJoCo model
(~20 MiB, mostly meshes), each with its own ``MjData``: Meta-World's reset writes only the task's
object and goal positions into the model, the same for every copy of a task. Copies that metarl steps
in turn in one process leave their objects' quaternions to `MetaWorldEnv.finish_steps`, which
computes them for all copies with one scipy call (the same values). A task is its class
name and Meta-World's ``rand_vec`` (object start and goal), so it round-trips through JSON. As in
Meta-World, the goal is hidden (``obs[36:39]`` is zero) but the object's start position is
observed: the policy sees where the puck is, not where it must go (``metadata["observed_task"]``
tells ``metarl check-env``).

Needs the extra: ``pip install -e ".[metaworld]"`` (``metaworld==3.1.1``).
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import dataclasses
import functools
import math
import pickle
import sys
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from envs.base import coerce_task

BENCHMARKS = ("ML1", "ML10", "ML45")
# Observation components that depend on the task by Meta-World's design: the object's position and
# orientation (obs[4:18]) and their previous frame (obs[22:36]); each benchmark hides the goal (obs[36:39]).
_OBJECT_COMPONENTS = (*range(4, 18), *range(22, 36))


_SCENE_OBSERVED = {
    "components": tuple(range(36)),
    "why": "ML10 and ML45 mix Meta-World's task classes, each a scene of its own (the arm's start pose, the "
    "objects), so the observation shows the class as in Meta-World; the goal is hidden",
}


def _metaworld() -> Any:
    try:
        import metaworld
    except ImportError as error:
        raise ImportError(
            f"the Meta-World families need the metaworld package ({error}): pip install -e '.[metaworld]'"
        ) from None
    return metaworld


@dataclasses.dataclass(frozen=True)
class ManipulationTask:
    """A Meta-World task: the task class (``reach-v3``) and its ``rand_vec``, the object's start
    position and the goal drawn by Meta-World for this benchmark."""

    env_name: str
    rand_vec: tuple[float, ...]

    def __post_init__(self) -> None:
        rand_vec = tuple(float(v) for v in self.rand_vec)
        if not rand_vec or not all(math.isfinite(v) for v in rand_vec):
            raise ValueError(f"ManipulationTask.rand_vec must be finite numbers, got {self.rand_vec!r}")
        object.__setattr__(self, "rand_vec", rand_vec)


@functools.lru_cache(maxsize=4)
def benchmark_tasks(benchmark: str, env_name: str | None, seed: int) -> Mapping[str, tuple[ManipulationTask, ...]]:
    """The benchmark's train and test tasks, built once per process by Meta-World (ML1 ~1 s, ML10 ~10 s)."""
    metaworld = _metaworld()
    built = metaworld.ML1(env_name, seed=seed) if benchmark == "ML1" else getattr(metaworld, benchmark)(seed=seed)
    return {"train": _tasks(built.train_tasks), "test": _tasks(built.test_tasks)}


def _tasks(tasks: list[Any]) -> tuple[ManipulationTask, ...]:
    # Meta-World's Task.data is a pickle that Meta-World itself just made in this process.
    return tuple(ManipulationTask(t.env_name, tuple(pickle.loads(t.data)["rand_vec"])) for t in tasks)


def task_classes(benchmark: str, env_name: str | None) -> tuple[str, ...]:
    """The task class names of a benchmark: train classes, then test classes."""
    env_dict = _metaworld().env_dict
    if benchmark == "ML1":
        if env_name not in env_dict.ALL_V3_ENVIRONMENTS:
            names = ", ".join(sorted(env_dict.ALL_V3_ENVIRONMENTS))
            raise ValueError(f"unknown Meta-World task class {env_name!r} for ML1; one of: {names}")
        return (env_name,)
    split = getattr(env_dict, f"{benchmark}_V3")
    return (*split["train"], *split["test"])


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# Models freed (a class's environment rebuilt, a task's shared model let go) between two trims (~45 ms each).
FREED_MODELS_PER_TRIM = 8
_freed_since_trim = 0


def _release_freed_memory() -> None:
    """Every `FREED_MODELS_PER_TRIM` freed MuJoCo models, hand the heap's free pages back to the OS.
    A copy whose task changes class frees its old model, but glibc keeps the pages: 40 ML10 copies
    switching classes round after round grew from 1.07 to 1.94 GiB of RSS in 8 rounds untrimmed;
    trimmed every 8 rebuilds they stayed at 1.2–1.4 GiB (1.02–1.07 trimmed after every rebuild, at
    ~25% more time per rebuild)."""
    global _freed_since_trim
    _freed_since_trim += 1
    trim = _malloc_trim()
    if trim is not None and _freed_since_trim >= FREED_MODELS_PER_TRIM:
        trim(0)
        _freed_since_trim = 0


# This process's MuJoCo models by task (or by class, for copies not yet reset with a task), shared by
# the copies that run that task. A model lives while a copy uses it.
_SHARED_MODELS: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()


def _share(key: Hashable, make: Callable[[], Any]) -> Any:
    """The process's model for `key`, made by `make` if it has none yet."""
    shared = _SHARED_MODELS.get(key)
    if shared is None:
        shared = _SHARED_MODELS[key] = make()
        weakref.finalize(shared, _release_freed_memory).atexit = False
    return shared


# Stands in a deferred step's observation for each quaternion component left to `finish_steps` (a
# quaternion's components lie in [-1, 1]).
_DEFERRED = 12345.0


class _DeferredRotations:
    """Takes scipy's ``Rotation`` place in a Meta-World module during a step whose quaternions are
    left to `MetaWorldEnv.finish_steps`: Meta-World's only use of it, ``Rotation.from_matrix(m).as_quat()``,
    records the matrix and returns placeholders."""

    def __init__(self) -> None:
        self.matrices: list[np.ndarray] = []

    def from_matrix(self, matrix: np.ndarray) -> _DeferredRotations:
        self.matrices.append(np.array(matrix, dtype=np.float64))
        return self

    def as_quat(self) -> np.ndarray:
        return np.full(4, _DEFERRED)


class MetaWorldEnv(gym.Env):
    """One Meta-World task family: ``benchmark`` ML1 (with ``env_name``), ML10 or ML45.

    Args:
        benchmark: ``ML1``, ``ML10`` or ``ML45``.
        env_name: ML1's task class, any of Meta-World's 50 (``reach-v3``, ``push-v3``, ...).
        seed: the seed Meta-World draws the benchmark's goal positions with (its test goals for
            ML1 with ``seed + 1``); the same seed gives the same task lists.

    ## Task distribution
    Meta-World's fixed lists: ML1 (env.kwargs env_name, any of its 50 task classes, e.g. reach-v3,
    push-v3) trains on 50 object/goal positions and tests on 50 others; ML10 and ML45 train on 10 or
    45 task classes and test on 5 held-out classes, 50 positions each. Reports info["success"].
    """

    metadata = {
        "render_modes": [],
        # A meta-batch's episodes run in rounds on this many copies (env.max_copies). A process's copies
        # of one task share its MuJoCo model (~20 MiB); each copy holds its own data (0.17 MiB).
        "max_copies": 40,
        "observed_task": {
            "components": _OBJECT_COMPONENTS,
            "why": "Meta-World observes the object's pose (obs[4:18], and its previous frame obs[22:36]), which "
            "starts where the task puts it; the goal is hidden",
        },
    }

    def __init__(self, benchmark: str = "ML1", env_name: str | None = "reach-v3", seed: int = 0) -> None:
        if benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
        self.benchmark, self.benchmark_seed = benchmark, int(seed)
        self.env_name = env_name if benchmark == "ML1" else None
        self.classes = task_classes(benchmark, self.env_name)
        if benchmark != "ML1":  # each task class is its own scene: the arm's start pose differs too
            self.metadata = {**self.metadata, "observed_task": _SCENE_OBSERVED}
        self._sim: Any = None
        self._sim_class: str | None = None
        self._task: ManipulationTask | None = None
        # Set by a vector env that calls `finish_steps` after stepping all its copies.
        self.finish_steps_later = False
        self._rotations: Any = None  # the Meta-World module whose Rotation a deferred step replaces
        self._deferred: list[np.ndarray] = []  # this copy's matrices left to finish_steps
        self._build(self.classes[0])
        space = self._sim.observation_space
        # The hidden goal (obs[36:39]) is always 0, which Meta-World declares as bounds [0, 0]; Gymnasium's
        # checker warns about equal bounds on every make, so it is declared unbounded like the object's pose.
        low, high = space.low.copy(), space.high.copy()
        constant = low == high
        low[constant], high[constant] = -np.inf, np.inf
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)
        self.action_space = self._sim.action_space

    def _build(self, env_name: str) -> None:
        """Meta-World's environment for a task class (rebuilt only when the class changes)."""
        if self._sim_class == env_name:
            return
        if self._sim is not None:
            self._sim.close()
            self._sim = None
        self._sim = _metaworld().env_dict.ALL_V3_ENVIRONMENTS[env_name]()
        # The episode length is gymnasium's TimeLimit (env.horizon), not Meta-World's own cap of 500.
        self._sim.max_path_length = sys.maxsize
        self._sim_class = env_name
        self._use_model(_share(env_name, lambda: self._sim.model))
        module = sys.modules[type(self._sim).__module__]
        self._rotations = module if getattr(module, "Rotation", None) is Rotation else None

    def _use_model(self, model: Any) -> None:
        """Run on `model`, shared with this process's other copies of the class (before the first
        reset) or of the task (from a reset on), with a data of its own. A model is ~20 MiB (meshes),
        its data 0.17 MiB. Meta-World's reset writes the task's object and goal positions into the
        model, the same for every copy of one task, so copies of different tasks cannot share one.
        """
        sim = self._sim
        if sim.model is model:
            return
        sim.model, sim.data = model, mujoco.MjData(model)
        mujoco.mj_forward(sim.model, sim.data)
        sim.mujoco_renderer.model, sim.mujoco_renderer.data = sim.model, sim.data
        # Meta-World keeps views of two bodies' positions into the data from its __init__.
        sim.init_left_pad, sim.init_right_pad = sim.get_body_com("leftpad"), sim.get_body_com("rightpad")

    # ---- the task protocol --------------------------------------------------------------------

    def task_lists(self) -> dict[str, list[ManipulationTask]]:
        """The benchmark's fixed train and test tasks (metarl trains on "train" and holds out "test")."""
        return {split: list(tasks) for split, tasks in benchmark_tasks(*self._benchmark_key()).items()}

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[ManipulationTask]:
        """`n` training tasks, distinct while `n` does not exceed the train list."""
        train = benchmark_tasks(*self._benchmark_key())["train"]
        return [train[i] for i in rng.choice(len(train), n, replace=n > len(train))]

    def _benchmark_key(self) -> tuple[str, str | None, int]:
        return self.benchmark, self.env_name, self.benchmark_seed

    @property
    def task(self) -> ManipulationTask:
        """The current task (the first training task until one is set)."""
        if self._task is None:
            self.task = benchmark_tasks(*self._benchmark_key())["train"][0]
        assert self._task is not None
        return self._task

    @task.setter
    def task(self, task: ManipulationTask | Mapping[str, Any]) -> None:
        task = coerce_task(ManipulationTask, task)
        if task.env_name not in self.classes:
            raise ValueError(f"task class {task.env_name!r} is not part of {self._name()} ({', '.join(self.classes)})")
        self._build(task.env_name)
        data = {"rand_vec": np.array(task.rand_vec), "env_cls": type(self._sim), "partially_observable": True}
        self._sim.set_task(_metaworld().types.Task(env_name=task.env_name, data=pickle.dumps(data)))
        self._task = task

    def set_task(self, task: ManipulationTask | Mapping[str, Any]) -> None:
        """Switch to `task` (``env.task = task``)."""
        self.task = task

    def _name(self) -> str:
        return f"ML1 {self.env_name}" if self.benchmark == "ML1" else self.benchmark

    # ---- the Gymnasium API --------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        task = self.task
        if seed is not None:  # Meta-World ignores reset(seed=...); it seeds through env.seed
            self._sim.seed(seed)
        # The task's model; the first copy to reset with a task makes a copy of its own model the task's.
        self._use_model(_share(task, lambda: copy.copy(self._sim.model)))
        self._deferred = []
        observation, info = self._sim.reset()
        return observation, {**info, "task": task}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not (self.finish_steps_later and self._rotations is not None):
            observation, reward, terminated, truncated, info = self._sim.step(action)
            return observation, float(reward), bool(terminated), bool(truncated), info
        deferred = _DeferredRotations()
        self._rotations.Rotation = deferred
        try:
            observation, reward, terminated, truncated, info = self._sim.step(action)
        finally:
            self._rotations.Rotation = Rotation
        self._deferred = deferred.matrices
        return observation, float(reward), bool(terminated), bool(truncated), info

    @classmethod
    def finish_steps(cls, envs: list[MetaWorldEnv], observations: np.ndarray) -> None:
        """Complete the last step of copies that stepped with ``finish_steps_later``: the objects'
        quaternions, computed by one ``Rotation.from_matrix`` call for all copies (scipy's check of each
        matrix's orthogonality costs ~40 µs a call, a sixth of a reach-v3 step, and the same for 20
        matrices at once; the quaternions are the same bit for bit). Meta-World's rewards and infos
        do not read them. `observations` holds a row per copy."""
        pending = [(row, env) for row, env in enumerate(envs) if env._deferred]
        if not pending:
            return
        quaternions = Rotation.from_matrix(np.stack([m for _, env in pending for m in env._deferred])).as_quat()
        done = 0
        for row, env in pending:
            count, sim = len(env._deferred), env._sim
            values = quaternions[done : done + count].ravel()
            done += count
            env._deferred = []
            # The step's own frame: Meta-World keeps it for the next step's obs[18:36].
            slots = np.flatnonzero(sim._prev_obs == _DEFERRED)
            if len(slots) != len(values):
                raise RuntimeError(
                    f"{sim.__class__.__name__}: expected {len(values)} deferred quaternion components in the "
                    f"observation, found {len(slots)}"
                )
            sim._prev_obs[slots] = values
            sim._last_stable_obs[slots] = values
            observations[row, slots] = values

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()

    # Worker processes rebuild the environment from its benchmark and task, never from Meta-World's pickle.
    def __getstate__(self) -> dict[str, Any]:
        return {"args": (self.benchmark, self.env_name, self.benchmark_seed), "task": self._task}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["args"])
        if state["task"] is not None:
            self.task = state["task"]
