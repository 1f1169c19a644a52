"""Task families for metarl, registered with Gymnasium under the ``MetaRL/`` namespace.

Importing this package registers every id; create environments with ``gymnasium.make`` /
``gymnasium.make_vec``. ``envs`` depends on gymnasium, numpy and mujoco only, never on metarl.
"""

from gymnasium.envs.registration import register, registry

from envs.navigation import GoalTask, Navigation2DEnv, Navigation2DVectorEnv

__all__ = ["GoalTask", "Navigation2DEnv", "Navigation2DVectorEnv"]

if "MetaRL/Navigation2D-v0" not in registry:
    register(
        id="MetaRL/Navigation2D-v0",
        entry_point="envs.navigation:Navigation2DEnv",
        vector_entry_point="envs.navigation:Navigation2DVectorEnv",
        max_episode_steps=100,
    )
