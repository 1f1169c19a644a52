"""WorkerVectorEnv: same results as SyncVectorEnv, identical sampled episodes for 1 and 2 workers,
clear errors (never a hang) when a worker raises or dies, and no processes left behind."""

import functools
import multiprocessing
import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import Tensor

from envs import GoalTask, VelocityTask
from metarl.config import ConfigError, config_from_dict
from metarl.errors import NonFiniteError, WorkerError
from metarl.functional import parameters_of
from metarl.make import env_factory, make_vector_env
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Sampler
from metarl.workers import KeyedSyncVectorEnv, WorkerVectorEnv

# Navigation without its batched implementation, so that workers > 1 takes the worker path.
SINGLE_NAVIGATION = "MetaRLTest/Navigation2DSingle-v0"
if SINGLE_NAVIGATION not in gym.envs.registration.registry:
    gym.register(SINGLE_NAVIGATION, entry_point="envs.navigation:Navigation2DEnv", max_episode_steps=100)


class RaisingEnv(gym.Env):
    """Raises ValueError on its `fail_at`-th step (module level: spawned workers import it)."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, fail_at: int = 2) -> None:
        self.fail_at, self._t = fail_at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._t += 1
        if self._t >= self.fail_at:
            raise ValueError(f"boom at step {self._t}")
        return np.zeros(2, np.float32), 0.0, False, False, {}


class HangingEnv(RaisingEnv):
    """Stops answering on its `fail_at`-th step."""

    def step(self, action):
        self._t += 1
        if self._t >= self.fail_at:
            time.sleep(3600)
        return np.zeros(2, np.float32), 0.0, False, False, {}


def no_children_left() -> bool:
    return not multiprocessing.active_children()


@pytest.mark.parametrize("parent_slice", [False, True])
@pytest.mark.parametrize(
    ("env_id", "tasks"),
    [
        # Goals near the start so that some episodes terminate early (goal reached).
        ("MetaRL/Navigation2D-v0", [GoalTask((0.05 * i, -0.05)) for i in range(5)]),
        ("MetaRL/HalfCheetahVel-v0", [VelocityTask(0.5 * i) for i in range(5)]),
    ],
)
def test_same_results_as_sync_vector_env_across_autoresets(env_id, tasks, parent_slice):
    factory = env_factory(env_id, horizon=4)
    workers = WorkerVectorEnv([factory] * 5, num_workers=2, parent_slice=parent_slice)
    sync = SyncVectorEnv([factory] * 5, autoreset_mode=AutoresetMode.NEXT_STEP)
    try:
        assert workers.slices == ((0, 3), (3, 5))
        assert len(workers.worker_pids) == (1 if parent_slice else 2)  # copies 0-2 in this process
        assert workers.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        assert workers.num_envs == 5
        assert workers.single_observation_space == sync.single_observation_space
        assert workers.single_action_space == sync.single_action_space
        assert workers.observation_space == sync.observation_space
        assert workers.action_space == sync.action_space
        for envs in (workers, sync):
            envs.set_attr("task", tasks)
        assert workers.get_attr("task") == tuple(tasks)

        obs, info = workers.reset(seed=11)
        np.testing.assert_array_equal(obs, sync.reset(seed=11)[0])
        assert info == {}
        rng = np.random.default_rng(0)
        space = workers.single_action_space
        dones = np.zeros(5, dtype=int)
        for _ in range(10):  # horizon 4: at least two autoresets
            actions = rng.uniform(space.low, space.high, (5, *space.shape)).astype(space.dtype)
            got, expected = workers.step(actions), sync.step(actions)
            for a, b in zip(got[:4], expected[:4], strict=True):
                np.testing.assert_array_equal(a, b)
                assert a.dtype == b.dtype
            assert got[4] == {}
            dones += got[2] | got[3]
        assert dones.min() >= 2

        # A non-fatal remote error (unknown attribute) leaves the env usable.
        with pytest.raises(WorkerError, match="AttributeError"):
            workers.get_attr("no_such_attribute")
        np.testing.assert_array_equal(workers.reset(seed=[3, 4, 5, 6, 7])[0], sync.reset(seed=3)[0])
    finally:
        workers.close()
        sync.close()
    assert no_children_left()


def sample_twice(workers: int, step_in_parent: bool = True) -> tuple:
    sampler = Sampler(
        SINGLE_NAVIGATION, episodes_per_task=3, horizon=12, seed=5, workers=workers, step_in_parent=step_in_parent
    )
    try:
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(2, 2, (8,))
        goals = [{"goal": [0.1, 0.1]}, {"goal": [-0.3, 0.2]}, {"goal": [0.0, -0.4]}]
        batches = [sampler.sample(policy, parameters_of(policy), goals) for _ in range(2)]
        return batches, type(sampler._vector_env(3))
    finally:
        sampler.close()


def test_sampled_episodes_are_identical_for_one_and_two_workers():
    (one, kind_one), (two, kind_two) = sample_twice(1), sample_twice(2)
    (processes_only, _) = sample_twice(2, step_in_parent=False)
    assert kind_one is KeyedSyncVectorEnv and kind_two is WorkerVectorEnv
    for other in (two, processes_only):
        for a, b in zip(one, other, strict=True):
            for field in ("observations", "actions", "rewards", "mask", "log_probs"):
                assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert one[0].mask[0].sum() < one[0].mask[1].sum()  # the first goal is reached early
    assert not torch.equal(one[0].observations, one[1].observations)  # fresh seeds per call
    assert no_children_left()


class EndsAfterTaskSteps(gym.Env):
    """Episodes end after `task` steps; the observation moves with the actions (module level:
    spawned workers import it)."""

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self) -> None:
        self.task, self._t, self._position = 5, 0, np.zeros(2, np.float32)

    def sample_tasks(self, n, rng):
        return [int(x) for x in rng.integers(3, 20, n)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t, self._position = 0, self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._position.copy(), {}

    def step(self, action):
        self._t += 1
        self._position = (self._position + 0.1 * np.asarray(action, np.float32)).astype(np.float32)
        return self._position.copy(), -float(np.abs(self._position).sum()), self._t >= self.task, False, {}


@pytest.mark.parametrize(
    "workers, max_copies, tasks",
    [
        # Three slices (the parent's and two workers') of one task each: the first task's episodes
        # end after 4 steps, so its slice stops before the others and its steps are padded.
        (3, None, [4, 9, 11]),
        # Two slices of two tasks' copies each (8 copies), sharing five tasks 3 / 2: rounds within
        # a slice, a short last round filled up with its last task.
        (2, 8, [4, 9, 11, 6, 13]),
    ],
)
def test_free_running_slices_give_the_lockstep_episodes_and_leave_the_generator_alike(workers, max_copies, tasks):
    # Every episode ends before the horizon, so the noise drawn ahead for the whole horizon must be
    # given back to torch's generator.
    def sample(free_running: bool) -> tuple[list, Tensor]:
        sampler = Sampler(
            "tests.test_workers:EndsAfterTaskSteps",
            episodes_per_task=2,
            horizon=20,
            seed=3,
            workers=workers,
            free_running=free_running,
            max_copies=max_copies,
        )
        try:
            torch.manual_seed(0)
            policy = GaussianMLPPolicy(2, 2, (8,))
            batches = [sampler.sample(policy, parameters_of(policy), tasks) for _ in range(2)]
            assert [sampler._runs_free(envs, policy) for envs in sampler._vector_envs.values()] == [free_running]
            return batches, torch.rand(3)
        finally:
            sampler.close()

    (lockstep, after_lockstep), (free, after_free) = sample(False), sample(True)
    assert torch.equal(after_lockstep, after_free)  # torch's generator ends where the lockstep's did
    for a, b in zip(lockstep, free, strict=True):
        assert torch.equal(a.mask, b.mask)
        kept = a.mask.bool()
        for field in ("observations", "actions", "rewards", "log_probs"):
            assert torch.equal(getattr(a, field)[kept], getattr(b, field)[kept]), field
    assert lockstep[0].mask.sum((1, 2)).tolist() == [2 * task for task in tasks]  # all end before the horizon
    assert not torch.equal(lockstep[0].actions, lockstep[1].actions)  # fresh noise per call
    if max_copies is None:
        assert torch.all(free[0].observations[0, :, 4:] == 0)  # the first slice stopped: zeros after
    assert no_children_left()


class NaNRewardForTaskSeven(EndsAfterTaskSteps):
    """A NaN reward at the second step of task 7's episodes."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, float("nan") if self.task == 7 and self._t == 2 else reward, terminated, truncated, info


def test_a_nan_in_a_free_running_worker_slice_is_the_lockstep_error_and_the_workers_go_on():
    sampler = Sampler("tests.test_workers:NaNRewardForTaskSeven", episodes_per_task=2, horizon=10, workers=2)
    try:
        policy = GaussianMLPPolicy(2, 2, (8,))
        with pytest.raises(NonFiniteError, match=r"non-finite rewards \(copy 2, task 7\)"):
            sampler.sample(policy, parameters_of(policy), [4, 7])  # task 7 runs in the worker's slice
        assert sampler._runs_free(sampler._vector_env(2), policy)
        assert sampler.sample(policy, parameters_of(policy), [4, 9]).mask.sum() == 26
    finally:
        sampler.close()
    assert no_children_left()


def test_natively_batched_ids_keep_their_own_vector_env():
    envs = make_vector_env("MetaRL/Navigation2D-v0", 4, workers=2)
    try:
        assert not isinstance(envs, WorkerVectorEnv)
    finally:
        envs.close()


def second_step_error(env_class: type, **kwargs) -> tuple[WorkerVectorEnv, WorkerError, float]:
    """Three copies of `env_class` failing at their second step, on two workers: the vector env,
    the error of that step, and the seconds it took."""
    envs = WorkerVectorEnv([functools.partial(env_class, fail_at=2)] * 3, num_workers=2, **kwargs)
    envs.reset(seed=0)
    envs.step(np.zeros((3, 2), np.float32))
    start = time.monotonic()
    with pytest.raises(WorkerError) as error:
        envs.step(np.zeros((3, 2), np.float32))
    return envs, error.value, time.monotonic() - start


@pytest.mark.parametrize("parent_slice", [False, True])
def test_an_exception_in_step_is_reported_with_its_message_and_traceback(parent_slice):
    envs, error, seconds = second_step_error(RaisingEnv, parent_slice=parent_slice)
    assert seconds < 10
    message = str(error)
    first = f"the parent process (copies 0-1, pid {os.getpid()})" if parent_slice else "worker 0 (copies 0-1,"
    assert first in message and "worker 1 (copy 2," in message
    assert "ValueError: boom at step 2" in message and "\n" not in message  # one line, for the CLI
    assert "in step" in error.details  # the remote traceback
    # The copies are out of step after a failed step: the env is closed, and says why.
    assert envs.closed and no_children_left()
    with pytest.raises(WorkerError, match="closed after an error: .*boom at step 2"):
        envs.step(np.zeros((3, 2), np.float32))


def test_a_hang_in_the_parents_slice_is_an_error_within_the_timeout():
    envs, error, seconds = second_step_error(HangingEnv, timeout=1.0, parent_slice=True)
    assert seconds < 10
    assert "the parent process (copies 0-1, pid" in str(error)
    assert "did not answer 'step' within 1 s (env.worker_timeout)" in str(error)
    assert envs.closed and no_children_left()


def test_a_killed_worker_is_reported_not_waited_for():
    envs = WorkerVectorEnv([env_factory("MetaRL/Navigation2D-v0")] * 4, num_workers=2)
    envs.reset(seed=0)
    os.kill(envs.worker_pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(
        WorkerError, match=r"worker 1 \(copies 2-3, pid \d+\) was killed by signal SIGKILL during 'step'"
    ):
        envs.step(np.zeros((4, 2), np.float32))
    assert time.monotonic() - start < 10
    assert envs.closed and no_children_left()


def test_close_is_idempotent_and_leaves_no_processes():
    envs = WorkerVectorEnv([env_factory(SINGLE_NAVIGATION, horizon=5)] * 3, num_workers=2)
    assert len(multiprocessing.active_children()) == 2
    envs.close()
    envs.close()
    assert envs.closed and no_children_left()
    with pytest.raises(WorkerError, match="closed"):
        envs.reset(seed=0)


def test_bad_arguments_are_rejected_before_any_process_starts():
    with pytest.raises(ValueError, match="num_workers must be between 1 and the number of copies"):
        WorkerVectorEnv([env_factory(SINGLE_NAVIGATION)] * 2, num_workers=3)
    with pytest.raises(TypeError, match="picklable"):
        WorkerVectorEnv([lambda: RaisingEnv()] * 2, num_workers=1)
    assert no_children_left()


def test_config_workers():
    with pytest.raises(ConfigError, match=r"'env.workers' must be at least 1, or null for the default, got 0"):
        config_from_dict({"env": {"workers": 0}})
    config = config_from_dict({"env": {"id": SINGLE_NAVIGATION, "workers": 2}})
    assert config.env.workers == 2 and config_from_dict({}).env.workers is None
    sampler = Sampler.from_config(config)
    try:
        assert sampler.workers == 2
    finally:
        sampler.close()


class SlowToBuild(gym.Env):
    """Takes `seconds` to construct: slower than the timeout in total, but not per copy."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, seconds: float) -> None:
        time.sleep(seconds)


def test_the_start_up_deadline_applies_to_each_copy_not_to_the_whole_slice():
    # 4 copies of 0.6 s on one worker: 2.4 s in all, against a timeout of 1.5 s per answer or copy.
    envs = WorkerVectorEnv([functools.partial(SlowToBuild, 0.6)] * 4, num_workers=1, timeout=1.5)
    try:
        assert envs.num_envs == 4
    finally:
        envs.close()
    assert no_children_left()


def test_a_slice_gathers_only_the_info_keys_sent_back():
    """Workers and the parent's slice fold only `info_keys` into arrays: the same values and masks
    as ``SyncVectorEnv`` for those keys, and the same observations and rewards."""
    factory = env_factory("HalfCheetah-v5", {}, 5)
    full = SyncVectorEnv([factory] * 3, copy=False, autoreset_mode=AutoresetMode.NEXT_STEP)
    keyed = KeyedSyncVectorEnv([factory] * 3, ["reward_ctrl", "absent"])
    actions = np.random.default_rng(0).uniform(-1, 1, (7, 3, 6)).astype(np.float32)
    try:
        for envs in (full, keyed):
            envs.reset(seed=3)
        kept = dropped = 0
        for step in actions:  # past the horizon of 5: autoreset included
            *a, info_full = full.step(step)
            *b, info_keyed = keyed.step(step)
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
            assert set(info_keyed) == {k for k in info_full if k.removeprefix("_") == "reward_ctrl"}
            for key in info_keyed:
                np.testing.assert_array_equal(info_keyed[key], info_full[key])
            kept += "reward_ctrl" in info_keyed
            dropped += len(info_full) - len(info_keyed)
        assert kept == 6 and dropped > 6  # six steps and one autoreset; the other keys left out
    finally:
        full.close()
        keyed.close()


class CountingEnv(gym.Env):
    """Observes its step count, left to `finish_steps` when its vector env finishes steps together."""

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    finish_calls = 0

    def __init__(self) -> None:
        self.finish_steps_later, self._t = False, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(1), {}

    def step(self, action):
        self._t += 1
        return np.array([-1.0 if self.finish_steps_later else self._t]), 1.0, False, self._t == 3, {}

    @classmethod
    def finish_steps(cls, envs, observations):
        cls.finish_calls += 1
        observations[:, 0] = [env._t for env in envs]


def test_copies_may_finish_their_steps_together_unless_a_wrapper_changes_observations():
    def stepped(make):
        envs = KeyedSyncVectorEnv([make] * 2, [])
        envs.reset(seed=0)
        return envs, [envs.step(np.zeros((2, 1), np.float32))[0][:, 0].tolist() for _ in range(4)]

    def made():  # the wrappers gymnasium.make adds
        return gym.wrappers.PassiveEnvChecker(gym.wrappers.TimeLimit(CountingEnv(), 10))

    def doubled():
        return gym.wrappers.TransformObservation(CountingEnv(), lambda obs: 2 * obs, CountingEnv.observation_space)

    envs, observations = stepped(made)
    assert observations == [[1, 1], [2, 2], [3, 3], [0, 0]]  # finished together; the fourth step is the autoreset
    assert CountingEnv.finish_calls == 4 and all(env.unwrapped.finish_steps_later for env in envs.envs)
    envs, observations = stepped(doubled)
    assert observations == [[2, 2], [4, 4], [6, 6], [0, 0]]  # stepped alone: the wrapper saw whole observations
    assert CountingEnv.finish_calls == 4 and not any(env.unwrapped.finish_steps_later for env in envs.envs)
