"""Task families for metarl, registered with Gymnasium under the ``MetaRL/`` namespace.

Importing this package registers every id; create environments with ``gymnasium.make`` /
``gymnasium.make_vec``. ``envs`` depends on gymnasium, numpy and mujoco only, never on metarl.
"""

from gymnasium.envs.registration import register, registry

from envs.base import DirectionTask, GoalTask, TaskEnv, VelocityTask
from envs.batched import HalfCheetahVectorEnv, vector_entry_point
from envs.dynamics import (
    AntCrippledEnv,
    AntRandParamsEnv,
    DynamicsTask,
    HalfCheetahCrippledEnv,
    HalfCheetahRandParamsEnv,
    HopperRandParamsEnv,
    Walker2dRandParamsEnv,
)
from envs.locomotion import AntDirEnv, AntGoalEnv, AntVelEnv, HalfCheetahDirEnv, HalfCheetahVelEnv
from envs.navigation import Navigation2DEnv, Navigation2DVectorEnv

__all__ = [
    "AntCrippledEnv",
    "AntDirEnv",
    "AntGoalEnv",
    "AntRandParamsEnv",
    "AntVelEnv",
    "DirectionTask",
    "DynamicsTask",
    "GoalTask",
    "HalfCheetahCrippledEnv",
    "HalfCheetahDirEnv",
    "HalfCheetahRandParamsEnv",
    "HalfCheetahVectorEnv",
    "HalfCheetahVelEnv",
    "HopperRandParamsEnv",
    "Navigation2DEnv",
    "Navigation2DVectorEnv",
    "TaskEnv",
    "VelocityTask",
    "Walker2dRandParamsEnv",
]

FAMILIES = {
    "MetaRL/Navigation2D-v0": dict(
        entry_point="envs.navigation:Navigation2DEnv",
        vector_entry_point="envs.navigation:Navigation2DVectorEnv",
        max_episode_steps=100,
    ),
    "MetaRL/HalfCheetahVel-v0": dict(
        entry_point="envs.locomotion:HalfCheetahVelEnv",
        vector_entry_point=vector_entry_point(HalfCheetahVelEnv),
        max_episode_steps=100,
    ),
    "MetaRL/HalfCheetahDir-v0": dict(
        entry_point="envs.locomotion:HalfCheetahDirEnv",
        vector_entry_point=vector_entry_point(HalfCheetahDirEnv),
        max_episode_steps=100,
    ),
    "MetaRL/AntVel-v0": dict(entry_point="envs.locomotion:AntVelEnv", max_episode_steps=100),
    "MetaRL/AntDir-v0": dict(entry_point="envs.locomotion:AntDirEnv", max_episode_steps=100),
    "MetaRL/AntGoal-v0": dict(entry_point="envs.locomotion:AntGoalEnv", max_episode_steps=100),
    **{
        f"MetaRL/{name}-v0": dict(entry_point=f"envs.dynamics:{name}Env", max_episode_steps=200)
        for name in (
            "HalfCheetahRandParams",
            "HopperRandParams",
            "Walker2dRandParams",
            "AntRandParams",
            "HalfCheetahCrippled",
            "AntCrippled",
        )
    },
}

# Meta-World's benchmarks (needs the metaworld extra; imported when made): ML1 takes env_name="reach-v3" etc.
FAMILIES.update(
    {
        f"MetaRL/{benchmark}-v0": dict(
            entry_point="envs.metaworld:MetaWorldEnv", kwargs={"benchmark": benchmark}, max_episode_steps=500
        )
        for benchmark in ("ML1", "ML10", "ML45")
    }
)

# The HalfCheetah families step all copies in one batched MuJoCo call (envs/batched.py).
FAMILIES["MetaRL/HalfCheetahRandParams-v0"]["vector_entry_point"] = vector_entry_point(HalfCheetahRandParamsEnv)
FAMILIES["MetaRL/HalfCheetahCrippled-v0"]["vector_entry_point"] = vector_entry_point(HalfCheetahCrippledEnv)

for _id, _spec in FAMILIES.items():
    if _id not in registry:
        register(id=_id, **_spec)
