"""Goal-varying MuJoCo task families: rewards match their definitions, tasks behave as tasks."""

import json
import pickle

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the MetaRL/ ids)
from metarl.tasks import task_to_json

CASES = {
    "MetaRL/HalfCheetahVel-v0": [{"velocity": 0.3}, {"velocity": 1.7}],
    "MetaRL/HalfCheetahDir-v0": [{"direction": 1}, {"direction": -1}],
    "MetaRL/AntVel-v0": [{"velocity": 0.5}, {"velocity": 2.5}],
    "MetaRL/AntDir-v0": [{"direction": 1}, {"direction": -1}],
    "MetaRL/AntGoal-v0": [{"goal": [2.0, -1.0]}, {"goal": [-2.5, 2.5]}],
}


def rollout(env_id, task, steps=15, seed=0):
    env = gym.make(env_id)
    obs, info = env.reset(seed=seed, options={"task": task})
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, *env.action_space.shape))
    transitions = [(obs, None, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action.astype(np.float32))
        transitions.append((obs, reward, {**info, "action": action, "cfrc": env.unwrapped.data.cfrc_ext.copy()}))
        if terminated:
            break
    return env, transitions


def expected_goal_term(env_id, task, info):
    v = info["x_velocity"]
    if env_id == "MetaRL/HalfCheetahVel-v0":
        return -abs(v - task["velocity"])
    if env_id == "MetaRL/HalfCheetahDir-v0" or env_id == "MetaRL/AntDir-v0":
        return task["direction"] * v
    if env_id == "MetaRL/AntVel-v0":
        return -abs(v - task["velocity"]) + 1.0
    xy = np.array([info["x_position"], info["y_position"]])
    return -np.abs(xy - np.array(task["goal"])).sum() + 4.0


@pytest.mark.parametrize("env_id", CASES)
def test_rewards_follow_their_definitions(env_id):
    for task in CASES[env_id]:
        _, transitions = rollout(env_id, task)
        for _, reward, info in transitions[1:]:
            terms = {k: v for k, v in info.items() if k.startswith("reward_")}
            assert reward == pytest.approx(sum(terms.values()), abs=1e-12)
            assert terms["reward_forward"] == pytest.approx(expected_goal_term(env_id, task, info), abs=1e-9)
            a = info["action"]
            if "Ant" in env_id:
                assert terms["reward_ctrl"] == pytest.approx(-0.005 * np.sum(a**2))
                assert terms["reward_contact"] == pytest.approx(-5e-4 * np.sum(np.clip(info["cfrc"], -1, 1) ** 2))
                assert terms["reward_survive"] == 0.05
            else:
                assert terms["reward_ctrl"] == pytest.approx(-0.05 * np.sum(a**2))


@pytest.mark.parametrize("env_id", CASES)
def test_observations_do_not_depend_on_the_task(env_id):
    (_, a), (_, b) = (rollout(env_id, task) for task in CASES[env_id])
    assert len(a) == len(b)
    for (obs_a, _, _), (obs_b, _, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(obs_a, obs_b)
    assert any(ra != rb for (_, ra, _), (_, rb, _) in zip(a[1:], b[1:], strict=True))


@pytest.mark.parametrize("env_id", CASES)
def test_task_survives_reset_pickle_and_json(env_id):
    env = gym.make(env_id)
    first, second = CASES[env_id]
    env.reset(seed=1, options={"task": first})
    _, info = env.reset(seed=2)
    assert task_to_json(info["task"]) == json.loads(json.dumps(first))
    env.unwrapped.task = json.loads(
        json.dumps(task_to_json(env.unwrapped.sample_tasks(1, np.random.default_rng(0))[0]))
    )
    restored = pickle.loads(pickle.dumps(env.unwrapped))
    assert restored.task == env.unwrapped.task
    with pytest.raises(TypeError):
        env.unwrapped.task = 3.0
    env.unwrapped.set_task(second)
    assert task_to_json(env.unwrapped.get_task()) == json.loads(json.dumps(second))


@pytest.mark.parametrize(
    "env_id,check",
    [
        ("MetaRL/HalfCheetahVel-v0", lambda ts: all(0 <= t.velocity <= 2 for t in ts)),
        ("MetaRL/AntVel-v0", lambda ts: all(0 <= t.velocity <= 3 for t in ts)),
        ("MetaRL/HalfCheetahDir-v0", lambda ts: {t.direction for t in ts} == {-1, 1}),
        ("MetaRL/AntDir-v0", lambda ts: {t.direction for t in ts} == {-1, 1}),
        ("MetaRL/AntGoal-v0", lambda ts: all(-3 <= g <= 3 for t in ts for g in t.goal)),
    ],
)
def test_task_distributions(env_id, check):
    env = gym.make(env_id).unwrapped
    tasks = env.sample_tasks(50, np.random.default_rng(0))
    assert tasks == env.sample_tasks(50, np.random.default_rng(0))
    assert check(tasks)
