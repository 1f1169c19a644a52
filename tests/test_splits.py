"""Out-of-distribution task splits of the task families."""

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the MetaRL/ ids)
from metarl.errors import EnvError
from metarl.make import make_env
from metarl.tasks import TaskSplits


@pytest.mark.parametrize(
    "env_id,outside",
    [
        ("MetaRL/Navigation2D-v0", lambda t: 0.5 < np.abs(t.goal).max() <= 1.0),
        ("MetaRL/HalfCheetahVel-v0", lambda t: 2.0 <= t.velocity <= 3.0),
        ("MetaRL/AntVel-v0", lambda t: 3.0 <= t.velocity <= 4.0),
        ("MetaRL/AntGoal-v0", lambda t: 3.0 < np.abs(t.goal).max() <= 4.0),
        ("MetaRL/HalfCheetahCrippled-v0", lambda t: int(np.sum(np.array(t.actuator_gear) < 1)) == 2),
    ],
)
def test_ood_tasks_lie_outside_the_training_distribution(env_id, outside):
    splits = TaskSplits(make_env(env_id), train_seed=0, test_seed=1, num_test=5)
    ood = splits.ood(30)
    assert ood == TaskSplits(make_env(env_id), train_seed=3, test_seed=1, num_test=5).ood(30)
    assert all(outside(t) for t in ood)
    assert not any(outside(t) for t in gym.make(env_id).unwrapped.sample_tasks(30, np.random.default_rng(0)))


def test_families_without_an_ood_split_say_so():
    splits = TaskSplits(make_env("MetaRL/HalfCheetahDir-v0"), train_seed=0, test_seed=1, num_test=2)
    with pytest.raises(EnvError, match="no out-of-distribution split"):
        splits.ood(3)
