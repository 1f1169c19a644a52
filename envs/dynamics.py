"""Dynamics-varying task families: the robot's body changes from task to task.

``*RandParams`` families (as the rand-params environments of the PEARL and ProMP papers) scale
MuJoCo model fields element-wise by factors ``base ** U[-limit, limit]`` (default ``1.5 ** U[-3, 3]``):
body masses, body inertias, joint damping and geom friction, each switchable. The ``*Crippled``
families scale the actuator gears of one leg (ant) or one joint (cheetah) by ``U[0, 1]``, the
standard test of adapting to injury. Setting a task always writes ``nominal * scale`` into the
model, so switching tasks never accumulates (no drift), and the nominal values travel with the
environment when it is pickled into a worker process.

The rewards are Gymnasium's v5 rewards (run forward; survive for Hopper, Walker2d and Ant).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
from numpy.typing import ArrayLike

from envs.base import TaskEnv

PHYSICAL_FIELDS = ("body_mass", "body_inertia", "dof_damping", "geom_friction")


@dataclasses.dataclass(frozen=True)
class DynamicsTask:
    """Element-wise scale factors for MuJoCo model fields, relative to the nominal model.

    Each field is a flat tuple with one factor per element of the model array (e.g. one per body
    for ``body_mass``, three per body for ``body_inertia``), or None for "nominal".
    """

    body_mass: tuple[float, ...] | None = None
    body_inertia: tuple[float, ...] | None = None
    dof_damping: tuple[float, ...] | None = None
    geom_friction: tuple[float, ...] | None = None
    actuator_gear: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            scales = tuple(float(v) for v in np.asarray(value, dtype=float).ravel())
            if not all(math.isfinite(v) and v >= 0 for v in scales):
                raise ValueError(f"DynamicsTask.{field.name} must hold finite non-negative factors, got {value!r}")
            object.__setattr__(self, field.name, scales)

    def scales(self) -> dict[str, tuple[float, ...]]:
        """The fields that are set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


class DynamicsTaskEnv(TaskEnv):
    """Mixin for a MuJoCo env whose task rescales model fields from their nominal values."""

    task_type = DynamicsTask
    task_changes_model = True

    @staticmethod
    def task_values(tasks: Sequence[DynamicsTask]) -> np.ndarray:
        """The goal does not change with the body: one placeholder value per task."""
        return np.zeros(len(tasks))

    def forward_reward(self, x_velocity: ArrayLike, _task_values: ArrayLike = 0.0) -> np.ndarray:
        """Gymnasium's forward reward ``w · v`` (as its ``_get_rew``), broadcasting over copies."""
        return self._forward_reward_weight * np.asarray(x_velocity)

    def _store_nominal(self) -> None:
        fields = (*PHYSICAL_FIELDS, "actuator_gear")
        self._nominal = {name: getattr(self.model, name).copy() for name in fields}

    def _apply_task(self, task: DynamicsTask) -> None:
        for name, nominal in self._nominal.items():
            scales = getattr(task, name)
            value = nominal if scales is None else nominal * self._shaped(name, scales)
            getattr(self.model, name)[:] = value

    def _shaped(self, name: str, scales: Sequence[float]) -> np.ndarray:
        nominal = self._nominal[name]
        # actuator_gear has 6 columns of which only the first is a gain; scale whole rows.
        shape = (nominal.shape[0], 1) if name == "actuator_gear" else nominal.shape
        if len(scales) != math.prod(shape):
            raise ValueError(f"{name} needs {math.prod(shape)} scale factors for this model, got {len(scales)}")
        return np.asarray(scales, dtype=float).reshape(shape)


class RandParamsEnv(DynamicsTaskEnv):
    """Mixin: tasks scale the enabled physical fields element-wise by ``base ** U[-limit, limit]``."""

    def _setup(self, randomize: Sequence[str], log_scale_limit: float, base: float) -> None:
        unknown = set(randomize) - set(PHYSICAL_FIELDS)
        if unknown:
            raise ValueError(f"cannot randomize {sorted(unknown)}; choose from {PHYSICAL_FIELDS}")
        self.randomize, self.log_scale_limit, self.base = tuple(randomize), float(log_scale_limit), float(base)
        self._store_nominal()

    def _draw(self, n: int, rng: np.random.Generator, ood: bool) -> list[DynamicsTask]:
        limit = self.log_scale_limit
        tasks = []
        for _ in range(n):
            scales = {}
            for name in self.randomize:
                size = self._nominal[name].size
                if ood:  # magnitude beyond the training range, either sign
                    exponent = rng.uniform(limit, limit + 1.0, size=size) * rng.choice([-1.0, 1.0], size=size)
                else:
                    exponent = rng.uniform(-limit, limit, size=size)
                scales[name] = tuple(self.base**exponent)
            tasks.append(DynamicsTask(**scales))
        return tasks

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[DynamicsTask]:
        """Factors ``base ** U[-limit, limit]`` for every element of every enabled field."""
        return self._draw(n, rng, ood=False)

    def sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[DynamicsTask]:
        """Out of distribution: exponents of magnitude in ``[limit, limit + 1]`` (either sign)."""
        return self._draw(n, rng, ood=True)


def _rand_params_family(base_env: type, name: str, robot: str) -> type:
    """``<robot>RandParams``: Gymnasium's v5 `base_env` with randomised physical parameters."""

    def __init__(
        self: Any,
        randomize: Sequence[str] = PHYSICAL_FIELDS,
        log_scale_limit: float = 3.0,
        base: float = 1.5,
        task: DynamicsTask | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        base_env.__init__(self, **kwargs)
        utils.EzPickle.__init__(self, randomize, log_scale_limit, base, task, **kwargs)
        self._setup(randomize, log_scale_limit, base)
        self.task = task if task is not None else DynamicsTask()

    doc = f"""{robot} whose masses, inertias, joint damping and friction change from task to task.

    ## Observation, action, reward, episode end
    Gymnasium's ``{robot}-v5`` (its forward-running reward); truncated after 200 steps.

    ## Task distribution
    ``DynamicsTask`` with element-wise factors ``base ** U[-log_scale_limit, log_scale_limit]``
    (default ``1.5 ** U[-3, 3]``) for each field in ``randomize`` (default: body_mass,
    body_inertia, dof_damping, geom_friction); the out-of-distribution split draws exponents of
    magnitude in ``[limit, limit + 1]``.
    """
    cls = type(name, (RandParamsEnv, base_env), {"__init__": __init__, "__doc__": doc, "__module__": __name__})
    cls.__qualname__ = name
    return cls


HalfCheetahRandParamsEnv = _rand_params_family(HalfCheetahEnv, "HalfCheetahRandParamsEnv", "HalfCheetah")
HopperRandParamsEnv = _rand_params_family(HopperEnv, "HopperRandParamsEnv", "Hopper")
Walker2dRandParamsEnv = _rand_params_family(Walker2dEnv, "Walker2dRandParamsEnv", "Walker2d")
AntRandParamsEnv = _rand_params_family(AntEnv, "AntRandParamsEnv", "Ant")


class CrippledEnv(DynamicsTaskEnv):
    """Mixin: a task weakens a group of actuators (one leg) by a factor in [0, 1]."""

    groups: tuple[tuple[int, ...], ...]  # actuator indices of each limb

    def _draw(self, n: int, rng: np.random.Generator, limbs: int) -> list[DynamicsTask]:
        tasks = []
        for _ in range(n):
            gear = np.ones(self.model.nu)
            for limb in rng.choice(len(self.groups), size=limbs, replace=False):
                gear[list(self.groups[limb])] = rng.uniform(0.0, 1.0)
            tasks.append(DynamicsTask(actuator_gear=tuple(gear)))
        return tasks

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[DynamicsTask]:
        """One limb, chosen uniformly, keeps a fraction U[0, 1] of its actuator gear."""
        return self._draw(n, rng, limbs=1)

    def sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[DynamicsTask]:
        """Out of distribution: two limbs are weakened at once."""
        return self._draw(n, rng, limbs=2)


class AntCrippledEnv(CrippledEnv, AntEnv):
    """Ant with one injured leg.

    ## Observation, action, reward, episode end
    Gymnasium's ``Ant-v5`` (run forward, survive); truncated after 200 steps.

    ## Task distribution
    ``DynamicsTask(actuator_gear=...)``: one of the four legs (hip and ankle actuators) keeps a
    fraction U[0, 1] of its gear; out of distribution, two legs at once.
    """

    groups = ((0, 1), (2, 3), (4, 5), (6, 7))

    def __init__(self, task: DynamicsTask | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        AntEnv.__init__(self, **kwargs)
        utils.EzPickle.__init__(self, task, **kwargs)
        self._store_nominal()
        self.task = task if task is not None else DynamicsTask()


class HalfCheetahCrippledEnv(CrippledEnv, HalfCheetahEnv):
    """HalfCheetah with one injured joint.

    ## Observation, action, reward, episode end
    Gymnasium's ``HalfCheetah-v5`` (run forward); truncated after 200 steps.

    ## Task distribution
    ``DynamicsTask(actuator_gear=...)``: one of the six joints keeps a fraction U[0, 1] of its
    gear; out of distribution, two joints at once.
    """

    groups = tuple((i,) for i in range(6))

    def __init__(self, task: DynamicsTask | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        HalfCheetahEnv.__init__(self, **kwargs)
        utils.EzPickle.__init__(self, task, **kwargs)
        self._store_nominal()
        self.task = task if task is not None else DynamicsTask()
