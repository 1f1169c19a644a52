"""Dynamics-varying families: tasks rewrite model fields from nominal values, exactly and reversibly."""

import json
import pickle

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.dynamics import PHYSICAL_FIELDS, DynamicsTask
from metarl.tasks import task_to_json

RAND_PARAMS = [
    "MetaRL/HalfCheetahRandParams-v0",
    "MetaRL/HopperRandParams-v0",
    "MetaRL/Walker2dRandParams-v0",
    "MetaRL/AntRandParams-v0",
]
CRIPPLED = ["MetaRL/HalfCheetahCrippled-v0", "MetaRL/AntCrippled-v0"]


def fields(env):
    return {name: getattr(env.model, name).copy() for name in (*PHYSICAL_FIELDS, "actuator_gear")}


@pytest.mark.parametrize("env_id", RAND_PARAMS + CRIPPLED)
def test_setting_a_task_writes_nominal_times_scale_and_never_drifts(env_id):
    env = gym.make(env_id).unwrapped
    nominal = fields(env)
    first, second = env.sample_tasks(2, np.random.default_rng(0))
    env.task = first
    for name, scales in first.scales().items():
        shape = (nominal[name].shape[0], 1) if name == "actuator_gear" else nominal[name].shape
        np.testing.assert_array_equal(getattr(env.model, name), nominal[name] * np.reshape(scales, shape))
    after_first = fields(env)
    for _ in range(5):  # switching back and forth must not accumulate
        env.task = second
        env.task = first
    for name, value in fields(env).items():
        np.testing.assert_array_equal(value, after_first[name])
    env.task = DynamicsTask()
    for name, value in fields(env).items():
        np.testing.assert_array_equal(value, nominal[name])


@pytest.mark.parametrize("env_id", RAND_PARAMS)
def test_rand_params_distribution(env_id):
    env = gym.make(env_id).unwrapped
    tasks = env.sample_tasks(20, np.random.default_rng(1))
    assert tasks == env.sample_tasks(20, np.random.default_rng(1))
    factors = np.concatenate([np.concatenate([s for s in t.scales().values()]) for t in tasks])
    assert set(tasks[0].scales()) == set(PHYSICAL_FIELDS)
    assert factors.min() >= 1.5**-3 and factors.max() <= 1.5**3
    assert factors.min() < 1.5**-2.5 and factors.max() > 1.5**2.5  # the range is used
    ood = np.concatenate(
        [np.concatenate(list(t.scales().values())) for t in env.sample_ood_tasks(5, np.random.default_rng(2))]
    )
    exponents = np.abs(np.log(ood) / np.log(1.5))
    assert exponents.min() >= 3 - 1e-9 and exponents.max() <= 4 + 1e-9


def test_rand_params_fields_are_switchable():
    env = gym.make("MetaRL/HopperRandParams-v0", randomize=["body_mass"]).unwrapped
    (task,) = env.sample_tasks(1, np.random.default_rng(0))
    assert set(task.scales()) == {"body_mass"}
    with pytest.raises(ValueError, match="cannot randomize"):
        gym.make("MetaRL/HopperRandParams-v0", randomize=["gravity"])


@pytest.mark.parametrize("env_id,limbs", [("MetaRL/HalfCheetahCrippled-v0", 6), ("MetaRL/AntCrippled-v0", 4)])
def test_crippled_tasks_weaken_exactly_one_limb(env_id, limbs):
    env = gym.make(env_id).unwrapped
    for task in env.sample_tasks(30, np.random.default_rng(0)):
        gear = np.array(task.actuator_gear)
        weakened = [i for i, group in enumerate(env.groups) if np.all(gear[list(group)] < 1)]
        assert len(weakened) == 1 and np.all((gear >= 0) & (gear <= 1))
        assert len(env.groups) == limbs
    for task in env.sample_ood_tasks(10, np.random.default_rng(0)):
        assert sum(np.all(np.array(task.actuator_gear)[list(g)] < 1) for g in env.groups) == 2


@pytest.mark.parametrize("env_id", RAND_PARAMS + CRIPPLED)
def test_reset_pickle_json_and_observations(env_id):
    env = gym.make(env_id)
    a, b = env.unwrapped.sample_tasks(2, np.random.default_rng(3))
    obs_a, info = env.reset(seed=0, options={"task": a})
    assert info["task"] == a
    modified = fields(env.unwrapped)
    env.reset(seed=1)  # a plain reset keeps the task and the model
    assert env.unwrapped.task == a
    for name, value in fields(env.unwrapped).items():
        np.testing.assert_array_equal(value, modified[name])
    restored = pickle.loads(pickle.dumps(env.unwrapped))
    assert restored.task == a
    for name, value in fields(restored).items():
        np.testing.assert_array_equal(value, modified[name])
    env.unwrapped.task = json.loads(json.dumps(task_to_json(b)))
    assert env.unwrapped.task == b
    # The task is not observed: the same seed gives the same first observation for any task...
    obs_b, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs_a, obs_b)
    # ...but the same actions lead to different transitions.
    action = np.full(env.action_space.shape, 0.5, dtype=np.float32)
    env.reset(seed=0, options={"task": a})
    next_a = env.step(action)[0]
    env.reset(seed=0, options={"task": b})
    next_b = env.step(action)[0]
    assert not np.allclose(next_a, next_b)


def test_every_family_is_registered():
    for env_id in RAND_PARAMS + CRIPPLED:
        assert env_id in envs.FAMILIES and gym.spec(env_id).max_episode_steps == 200
