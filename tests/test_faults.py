"""Bad input from an environment: a clear error naming the problem, not a deep traceback."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metarl.cli import main


class NaNAfterSteps(gym.Env):
    """A task distribution whose observations become NaN after a few steps."""

    def __init__(self, nan_after: int = 3) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.nan_after, self.task, self._t = nan_after, 0.0, 0

    def sample_tasks(self, n, rng):
        return [float(x) for x in rng.uniform(0, 1, n)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._t += 1
        obs = np.full(2, np.nan if self._t >= self.nan_after else 0.0, np.float32)
        return obs, -float(self.task), False, False, {}


def test_nan_observations_stop_training_with_a_message_naming_the_task(tmp_path, capsys):
    gym.register("MetaRLTest/NaNAfterSteps-v0", entry_point=NaNAfterSteps, max_episode_steps=10)
    try:
        code = main(
            [
                "train",
                "experiments/smoke.yaml",
                "--set",
                "env.id=MetaRLTest/NaNAfterSteps-v0",
                "--set",
                "env.horizon=null",
                "--logdir",
                str(tmp_path),
                "--run-name",
                "nan",
                "--no-progress",
            ]
        )
    finally:
        gym.registry.pop("MetaRLTest/NaNAfterSteps-v0")
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite observations" in err and "task 0." in err
    assert "Traceback" not in err
    assert (tmp_path / "nan" / "config.yaml").is_file()  # the run directory explains what was attempted
