"""The 2-D navigation task family: Gymnasium API, dynamics, task protocol, vector env, task splits."""

import json
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
import metarl.make
import metarl.tasks
from envs import GoalTask, Navigation2DEnv, Navigation2DVectorEnv

ENV_ID = "MetaRL/Navigation2D-v0"


def metarl_ids():
    return sorted(i for i in gym.envs.registration.registry if i.startswith("MetaRL/"))


def test_registered_ids_include_navigation():
    assert {"GoalTask", "Navigation2DEnv", "Navigation2DVectorEnv"} <= set(envs.__all__)
    assert ENV_ID in metarl_ids()
    assert gym.spec(ENV_ID).max_episode_steps == 100


@pytest.mark.parametrize("env_id", metarl_ids())
def test_check_env_passes(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_spaces():
    env = gym.make(ENV_ID)
    assert env.observation_space.shape == (2,)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (2,)
    np.testing.assert_array_equal(env.action_space.low, np.float32([-0.1, -0.1]))
    np.testing.assert_array_equal(env.action_space.high, np.float32([0.1, 0.1]))
    assert env.action_space.dtype == np.float32
    env.close()


def test_reward_is_negative_distance_after_clipped_move():
    env = Navigation2DEnv(task=GoalTask((0.3, -0.2)))
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert obs.dtype == np.float32
    assert info["task"] == GoalTask((0.3, -0.2))
    # (0.25, -0.3) is clipped to (0.1, -0.1); (-0.5, 0.0) to (-0.1, 0.0); then back and onto the goal.
    actions = [(0.05, -0.05), (0.25, -0.3), (-0.5, 0.0), (0.2, 0.0), (0.1, 0.0), (0.05, -0.05)]
    positions = [(0.05, -0.05), (0.15, -0.15), (0.05, -0.15), (0.15, -0.15), (0.25, -0.15), (0.30, -0.20)]
    expected_rewards = [
        -math.hypot(0.25, 0.15),
        -math.hypot(0.15, 0.05),
        -math.hypot(0.25, 0.05),
        -math.hypot(0.15, 0.05),
        -math.hypot(0.05, 0.05),
        0.0,
    ]
    for i, (action, position, expected) in enumerate(zip(actions, positions, expected_rewards, strict=True)):
        obs, reward, terminated, truncated, info = env.step(np.array(action, dtype=np.float32))
        np.testing.assert_allclose(obs, position, atol=1e-6)
        assert reward == pytest.approx(expected, abs=1e-6)
        assert isinstance(reward, float)
        assert info["reward_distance"] == reward
        assert info["task"] == GoalTask((0.3, -0.2))
        assert terminated is (i == len(actions) - 1)
        assert truncated is False
    assert expected_rewards[0] == pytest.approx(-0.291547594742265)


def test_termination_is_a_box_of_half_width_0_01():
    env = Navigation2DEnv(task={"goal": [0.05, 0.05]})
    env.reset()
    # x within 0.01, y 0.03 away: not done.
    _, reward, terminated, _, _ = env.step(np.array([0.045, 0.02]))
    assert reward == pytest.approx(-math.hypot(0.005, 0.03))
    assert terminated is False
    # Now both |dx| = 0.005 and |dy| = 0.005 < 0.01: done.
    _, reward, terminated, _, _ = env.step(np.array([0.0, 0.025]))
    assert reward == pytest.approx(-math.hypot(0.005, 0.005))
    assert terminated is True

    # Offset (0.009, 0.009): Euclidean distance 0.0127 > 0.01, yet inside the box, so terminated.
    env.reset()
    _, reward, terminated, _, _ = env.step(np.array([0.041, 0.041]))
    assert reward == pytest.approx(-0.012727922061357854)
    assert terminated is True

    # Offset (0.011, 0.0): outside the box.
    env.reset()
    _, _, terminated, _, _ = env.step(np.array([0.039, 0.05]))
    assert terminated is False


def test_time_limit_truncates_at_step_100():
    env = gym.make(ENV_ID)
    env.reset(seed=0, options={"task": GoalTask((0.5, 0.5))})
    for step in range(1, 101):
        _, reward, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert reward == pytest.approx(-math.hypot(0.5, 0.5))
        assert terminated is False
        assert truncated is (step == 100), step
    env.close()


def test_task_switching_and_json_form():
    env = gym.make(ENV_ID)
    nav = env.unwrapped
    assert nav.task == GoalTask((0.5, 0.5))  # documented default

    _, info = env.reset(options={"task": GoalTask((0.1, 0.2))})
    assert nav.task == GoalTask((0.1, 0.2))
    assert info["task"] == GoalTask((0.1, 0.2))

    # A plain reset keeps the task.
    _, info = env.reset()
    assert nav.task == GoalTask((0.1, 0.2))
    assert info["task"] == GoalTask((0.1, 0.2))

    # The JSON form is accepted by the reset option, the attribute and set_task.
    _, info = env.reset(options={"task": {"goal": [-0.3, 0.4]}})
    assert info["task"] == GoalTask((-0.3, 0.4))
    nav.task = {"goal": [0.25, -0.25]}
    assert nav.task == GoalTask((0.25, -0.25))
    assert isinstance(nav.task.goal, tuple)
    nav.set_task({"goal": (-0.1, -0.2)})
    assert nav.get_task() == GoalTask((-0.1, -0.2))
    _, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["task"] == GoalTask((-0.1, -0.2))
    assert info["reward_distance"] == pytest.approx(-math.hypot(0.1, 0.2))

    # The reward follows the new goal.
    nav.task = GoalTask((0.0, 0.3))
    env.reset()
    _, reward, _, _, _ = env.step(np.zeros(2, dtype=np.float32))
    assert reward == pytest.approx(-0.3)
    env.close()


@pytest.mark.parametrize("bad", [5, "0.1,0.2", [0.1, 0.2], None])
def test_wrong_task_type_raises_type_error(bad):
    env = Navigation2DEnv()
    with pytest.raises(TypeError, match="expected a GoalTask or a mapping"):
        env.task = bad
    with pytest.raises(TypeError):
        env.set_task(bad)
    with pytest.raises(TypeError):
        env.reset(options={"task": bad})
    assert env.task == GoalTask((0.5, 0.5))


def test_goal_task_validation():
    with pytest.raises(ValueError, match="two finite numbers"):
        GoalTask((0.1, float("nan")))
    with pytest.raises(ValueError, match="two finite numbers"):
        GoalTask((0.1, 0.2, 0.3))
    assert GoalTask([1, 2]).goal == (1.0, 2.0)


def test_sample_tasks_reproducible_and_in_bounds():
    env = gym.make(ENV_ID).unwrapped
    a = env.sample_tasks(50, np.random.default_rng(3))
    b = env.sample_tasks(50, np.random.default_rng(3))
    c = env.sample_tasks(50, np.random.default_rng(4))
    assert len(a) == 50
    assert all(isinstance(t, GoalTask) for t in a)
    assert a == b
    assert a != c
    assert not set(a) & set(c)
    goals = np.array([t.goal for t in a + c])
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    # A spread over the square, not a point.
    assert goals[:, 0].min() < -0.3 and goals[:, 0].max() > 0.3
    # Same draws as the generator itself gives: uniform on [-0.5, 0.5]^2.
    np.testing.assert_array_equal(goals[:50], np.random.default_rng(3).uniform(-0.5, 0.5, size=(50, 2)))

    # Custom bounds come from the constructor kwargs.
    narrow = gym.make(ENV_ID, goal_low=0.1, goal_high=0.2).unwrapped
    goals = np.array([t.goal for t in narrow.sample_tasks(20, np.random.default_rng(0))])
    assert goals.min() >= 0.1 and goals.max() <= 0.2
    # metarl.tasks.sample_tasks reaches through the wrappers.
    wrapped = metarl.tasks.sample_tasks(gym.make(ENV_ID), 50, np.random.default_rng(3))
    assert wrapped == a


def test_tasks_round_trip_through_json():
    env = Navigation2DEnv()
    for task in env.sample_tasks(10, np.random.default_rng(0)):
        data = json.loads(json.dumps(metarl.tasks.task_to_json(task)))
        assert data == {"goal": [task.goal[0], task.goal[1]]}
        env.task = data
        assert env.task == task
    assert metarl.tasks.task_to_json(GoalTask((0.25, -0.5))) == {"goal": [0.25, -0.5]}


def test_observation_does_not_depend_on_task():
    rng = np.random.default_rng(7)
    actions = rng.uniform(-0.15, 0.15, size=(30, 2)).astype(np.float32)
    observations, rewards = [], []
    for goal in [(0.4, 0.4), (-0.3, 0.2)]:
        env = Navigation2DEnv(task=GoalTask(goal))
        obs, _ = env.reset(seed=0)
        trajectory, returns = [obs], []
        for action in actions:
            obs, reward, terminated, _, _ = env.step(action)
            assert terminated is False
            trajectory.append(obs)
            returns.append(reward)
        observations.append(np.array(trajectory))
        rewards.append(np.array(returns))
    np.testing.assert_array_equal(observations[0], observations[1])
    assert not np.allclose(rewards[0], rewards[1])


def test_pickle_round_trip_keeps_task_and_state():
    env = Navigation2DEnv(task=GoalTask((0.2, -0.1)))
    env.reset(seed=0)
    env.step(np.array([0.05, 0.05]))
    clone = pickle.loads(pickle.dumps(env))
    assert clone.task == GoalTask((0.2, -0.1))
    a = env.step(np.array([0.05, -0.05]))
    b = clone.step(np.array([0.05, -0.05]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[0], [0.1, 0.0], atol=1e-7)
    assert a[1] == b[1] == pytest.approx(-math.hypot(0.1, 0.1))

    wrapped = gym.make(ENV_ID)
    wrapped.reset(options={"task": {"goal": [0.3, 0.3]}})
    assert pickle.loads(pickle.dumps(wrapped)).unwrapped.task == GoalTask((0.3, 0.3))


def test_vector_env_matches_single_envs():
    num_envs, num_steps = 6, 240
    rng = np.random.default_rng(123)
    actions = rng.uniform(-0.15, 0.15, size=(num_steps, num_envs, 2)).astype(np.float32)
    clipped = np.clip(actions.astype(np.float64), -0.1, 0.1)
    # Copies 0-2: the goal is where the first 1, 2, 3 actions lead, so they terminate early (steps 1, 2, 3).
    tasks = [GoalTask(tuple(clipped[: i + 1, i].sum(axis=0))) for i in range(3)]
    # Copies 3-5: goals near the start that random actions are unlikely to hit exactly.
    tasks += [GoalTask(tuple(g)) for g in rng.uniform(-0.3, 0.3, size=(3, 2))]

    vec = gym.make_vec(ENV_ID, num_envs=num_envs)
    assert isinstance(vec, Navigation2DVectorEnv)
    assert vec.num_envs == num_envs
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    # The JSON form works per copy too.
    vec.set_attr("task", [metarl.tasks.task_to_json(t) if i % 2 else t for i, t in enumerate(tasks)])
    assert vec.get_attr("task") == tuple(tasks)

    singles = [gym.make(ENV_ID) for _ in range(num_envs)]
    vec_obs, vec_info = vec.reset(seed=0)
    assert list(vec_info["task"]) == tasks
    single_obs = [env.reset(seed=0, options={"task": task})[0] for env, task in zip(singles, tasks, strict=True)]
    np.testing.assert_array_equal(vec_obs, np.stack(single_obs))
    assert vec_obs.dtype == np.float32

    done = np.zeros(num_envs, dtype=bool)
    log = {"terminated": [], "truncated": [], "reward": [], "obs": []}
    for t in range(num_steps):
        obs, reward, terminated, truncated, info = vec.step(actions[t])
        expected = []
        for i, env in enumerate(singles):
            if done[i]:  # next-step autoreset: this step only resets the copy
                o, _ = env.reset()
                expected.append((o, 0.0, False, False))
            else:
                o, r, term, trunc, _ = env.step(actions[t, i])
                expected.append((o, r, term, trunc))
        exp_obs, exp_reward, exp_term, exp_trunc = (np.array(x) for x in zip(*expected, strict=True))
        np.testing.assert_array_equal(obs, exp_obs.astype(np.float32), err_msg=f"step {t}")
        np.testing.assert_allclose(reward, exp_reward, rtol=0, atol=1e-12, err_msg=f"step {t}")
        np.testing.assert_array_equal(terminated, exp_term, err_msg=f"step {t}")
        np.testing.assert_array_equal(truncated, exp_trunc, err_msg=f"step {t}")
        np.testing.assert_allclose(info["reward_distance"], reward)
        assert list(info["task"]) == tasks
        done = terminated | truncated
        for key, value in zip(log, (terminated, truncated, reward, obs), strict=True):
            log[key].append(np.array(value))
    terminated, truncated = np.array(log["terminated"]), np.array(log["truncated"])
    rewards, observations = np.array(log["reward"]), np.array(log["obs"])

    # Copy i (i < 3) terminates at step i + 1 (index i); the following step is the reset.
    for i in range(3):
        assert terminated[i, i]
        assert not terminated[:i, i].any() and not truncated[: i + 1, i].any()
        np.testing.assert_array_equal(observations[i + 1, i], [0.0, 0.0])
        assert rewards[i + 1, i] == 0.0
        assert rewards[i, i] > -0.01 * math.sqrt(2)
        # Its next episode starts at index i + 2 and is cut by the time limit 100 steps later.
        assert list(np.flatnonzero(terminated[:, i])) == [i]
        assert list(np.flatnonzero(truncated[:, i])) == [i + 101, i + 202]
    # Copies that never terminate are truncated at step 100 (index 99), reset at index 100,
    # and truncated again 100 steps later (index 200).
    never = [i for i in range(3, num_envs) if not terminated[:, i].any()]
    assert never, "expected some copies to run into the time limit"
    for i in never:
        assert list(np.flatnonzero(truncated[:, i])) == [99, 200]
        np.testing.assert_array_equal(observations[100, i], [0.0, 0.0])
        assert rewards[100, i] == 0.0
        assert (rewards[:100, i] < 0).all()
    assert terminated.sum() >= 3
    for env in singles:
        env.close()
    vec.close()


def test_vector_env_task_count_is_checked():
    vec = gym.make_vec(ENV_ID, num_envs=3)
    with pytest.raises(ValueError, match="expected 3 tasks"):
        vec.set_attr("task", [GoalTask((0.1, 0.1))] * 2)
    vec.set_attr("task", GoalTask((0.1, 0.1)))
    assert vec.get_attr("task") == (GoalTask((0.1, 0.1)),) * 3
    with pytest.raises(AttributeError):
        vec.set_attr("goal_low", 0.0)
    vec.close()


def test_task_splits_are_reproducible_and_disjoint():
    env = metarl.make.make_env(ENV_ID)
    splits = metarl.tasks.TaskSplits(env, train_seed=0, test_seed=1, num_test=40)
    again = metarl.tasks.TaskSplits(env, train_seed=5, test_seed=1, num_test=40)
    other = metarl.tasks.TaskSplits(env, train_seed=0, test_seed=2, num_test=40)
    assert len(splits.test) == 40
    assert splits.test == again.test  # the test tasks depend on the test seed only
    assert splits.test != other.test
    test_set = set(splits.test)
    train = []
    for _ in range(50):
        batch = splits.sample_train(20)
        assert len(batch) == 20
        assert not test_set & set(batch)
        train += batch
    goals = np.array([t.goal for t in train])
    assert goals.min() >= -0.5 and goals.max() <= 0.5

    # Equal train seeds draw equal training tasks, different ones differ.
    same = metarl.tasks.TaskSplits(env, train_seed=0, test_seed=1, num_test=40)
    assert same.sample_train(20) == train[:20]
    assert not set(again.sample_train(20)) & set(train[:20])

    # The generator state round-trips for checkpoints.
    state = splits.state()
    first = splits.sample_train(5)
    splits.set_state(state)
    assert splits.sample_train(5) == first
    env.close()


class DiscreteTaskEnv(gym.Env):
    """A task distribution over only ten tasks, so test and training draws collide often."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.task = {"k": 0}

    def sample_tasks(self, n, rng):
        return [{"k": int(k)} for k in rng.integers(0, 10, size=n)]


def test_task_splits_filter_out_test_tasks_when_draws_collide():
    env = DiscreteTaskEnv()
    splits = metarl.tasks.TaskSplits(env, train_seed=0, test_seed=1, num_test=3)
    test_keys = {t["k"] for t in splits.test}
    assert 1 <= len(test_keys) <= 3
    seen = set()
    for _ in range(50):
        batch = splits.sample_train(8)
        assert len(batch) == 8
        keys = {t["k"] for t in batch}
        assert not keys & test_keys
        seen |= keys
    assert seen == set(range(10)) - test_keys

    # Every task held out (a finite family such as directions ±1): training samples the whole
    # distribution, says so once, and stops filtering.
    greedy = metarl.tasks.TaskSplits(env, train_seed=0, test_seed=1, num_test=200)
    with pytest.warns(UserWarning, match="too few distinct tasks"):
        assert len(greedy.sample_train(4)) == 4
    assert not greedy.disjoint
    assert len(greedy.sample_train(4)) == 4


def test_unknown_env_id_lists_known_families():
    with pytest.raises(metarl.tasks.EnvError) as info:
        metarl.make.make_env("MetaRL/Nope-v0")
    message = str(info.value)
    assert "'MetaRL/Nope-v0'" in message
    assert "MetaRL/Navigation2D-v0" in message
    assert "metarl envs" in message


def test_make_env_horizon_and_kwargs():
    env = metarl.make.make_env(ENV_ID, {"goal_low": 0.0, "goal_high": 0.1}, horizon=7)
    assert metarl.tasks.horizon_of(env) == 7
    assert env.unwrapped.goal_low == 0.0 and env.unwrapped.goal_high == 0.1
    env.reset()
    for step in range(1, 8):
        *_, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert truncated is (step == 7)
    env.close()
    vec = metarl.make.make_vector_env(ENV_ID, 2, horizon=7)
    assert isinstance(vec, Navigation2DVectorEnv)
    assert vec.max_episode_steps == 7
    vec.close()
