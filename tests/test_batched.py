"""The batched HalfCheetah vector env against Gymnasium's reference env: same tasks and actions,
same observations, rewards and episode ends; and independent of the number of physics threads."""

import os

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.batched import HalfCheetahVectorEnv

HALF_CHEETAHS = [
    "MetaRL/HalfCheetahVel-v0",
    "MetaRL/HalfCheetahDir-v0",
    "MetaRL/HalfCheetahRandParams-v0",
    "MetaRL/HalfCheetahCrippled-v0",
]


def rollout(envs_, tasks, seed, steps, action_std=None):
    """Random actions: uniform in [-1.5, 1.5] (beyond the control range too), or N(0, action_std)."""
    envs_.set_attr("task", tasks)
    observations = [envs_.reset(seed=seed)[0]]
    rewards, ends = [], []
    rng = np.random.default_rng(1)
    for _ in range(steps):
        shape = envs_.action_space.shape
        if action_std is None:
            actions = rng.uniform(-1.5, 1.5, size=shape).astype(np.float32)
        else:
            actions = rng.normal(0.0, action_std, size=shape).astype(np.float32)
        obs, reward, terminated, truncated, _ = envs_.step(actions)
        observations.append(obs)
        rewards.append(reward)
        ends.append(np.stack([terminated, truncated]))
    envs_.close()
    return np.array(observations), np.array(rewards), np.array(ends)


@pytest.mark.parametrize("env_id", HALF_CHEETAHS)
def test_batched_physics_matches_the_reference_env(env_id):
    num_envs, horizon = 4, 15
    batched = gym.make_vec(env_id, num_envs=num_envs, max_episode_steps=horizon)
    assert isinstance(batched, HalfCheetahVectorEnv)
    reference = gym.make_vec(
        env_id,
        num_envs=num_envs,
        max_episode_steps=horizon,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
    )
    tasks = gym.make(env_id).unwrapped.sample_tasks(num_envs, np.random.default_rng(0))
    # 40 steps with a horizon of 15: two autoresets per copy, each drawing fresh reset noise.
    obs, rewards, ends = rollout(batched, tasks, seed=7, steps=40)
    ref_obs, ref_rewards, ref_ends = rollout(reference, tasks, seed=7, steps=40)
    np.testing.assert_array_equal(ends, ref_ends)
    assert ends[:, 1].sum() == 2 * num_envs
    np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-8)
    np.testing.assert_allclose(rewards, ref_rewards, rtol=0, atol=1e-5)  # the reference's control cost is float32
    assert np.abs(rewards).max() > 0.1  # the comparison is not between zeros


@pytest.mark.parametrize("env_id", HALF_CHEETAHS)
def test_batched_physics_matches_over_a_whole_episode(env_id):
    """100 steps with exploration-sized actions. (Full-torque random actions flip the robot over
    and over: that motion is chaotic, and after about 50 steps differences at the level of the
    solver's tolerance grow to visible ones, between any two implementations.)"""
    kwargs = {"num_envs": 3, "max_episode_steps": 100}
    batched = gym.make_vec(env_id, **kwargs)
    next_step = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
    reference = gym.make_vec(env_id, **kwargs, vectorization_mode="sync", vector_kwargs=next_step)
    tasks = gym.make(env_id).unwrapped.sample_tasks(3, np.random.default_rng(5))
    obs, rewards, _ = rollout(batched, tasks, seed=2, steps=100, action_std=0.3)
    ref_obs, ref_rewards, _ = rollout(reference, tasks, seed=2, steps=100, action_std=0.3)
    np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rewards, ref_rewards, rtol=0, atol=1e-5)


def test_rewards_use_each_copys_own_task():
    from envs import VelocityTask

    envs_ = gym.make_vec("MetaRL/HalfCheetahVel-v0", num_envs=2, max_episode_steps=10)
    envs_.set_attr("task", [VelocityTask(0.0), VelocityTask(2.0)])
    envs_.reset(seed=[0, 0])  # the same start state in both copies
    _, reward, _, _, info = envs_.step(np.zeros((2, 6), dtype=np.float32))
    envs_.close()
    v = info["x_velocity"]
    assert v[0] == v[1]
    np.testing.assert_allclose(reward, [-abs(v[0] - 0.0), -abs(v[1] - 2.0)])


def test_results_do_not_depend_on_the_number_of_threads():
    tasks = envs.HalfCheetahRandParamsEnv().sample_tasks(3, np.random.default_rng(2))
    one = rollout(HalfCheetahVectorEnv(envs.HalfCheetahRandParamsEnv, 3, 10, num_threads=1), tasks, 5, 12)
    two = rollout(HalfCheetahVectorEnv(envs.HalfCheetahRandParamsEnv, 3, 10, num_threads=2), tasks, 5, 12)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


def test_env_workers_sets_the_physics_threads():
    from metarl.make import make_vector_env

    envs_ = make_vector_env("MetaRL/HalfCheetahDir-v0", 4, workers=1)
    default = make_vector_env("MetaRL/HalfCheetahDir-v0", 4)
    assert isinstance(envs_, HalfCheetahVectorEnv) and envs_.num_threads == 1
    assert default.num_threads == os.cpu_count()
    envs_.close()
    default.close()
