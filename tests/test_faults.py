"""Bad input from an environment: a clear error naming the problem, not a deep traceback."""

import importlib

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

import metarl
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


class NaNAfterTotalSteps(NaNAfterSteps):
    """Healthy for the first `nan_after` steps of its lifetime, then NaN observations forever."""

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        return np.full(2, np.nan if self._t >= self.nan_after else 0.0, np.float32), {}


def test_a_fault_mid_run_keeps_the_last_finished_iteration(tmp_path, capsys):
    # Each of the 12 copies makes 2 x 5 steps per iteration: iteration 1 is healthy, iteration 2 is not.
    gym.register(
        "MetaRLTest/NaNLater-v0", entry_point=NaNAfterTotalSteps, kwargs={"nan_after": 15}, max_episode_steps=5
    )
    try:
        code = main(
            [
                "train",
                "experiments/smoke.yaml",
                "--set",
                "env.id=MetaRLTest/NaNLater-v0",
                "--set",
                "env.horizon=null",
                "--logdir",
                str(tmp_path),
                "--run-name",
                "r",
                "--no-progress",
            ]
        )
    finally:
        gym.registry.pop("MetaRLTest/NaNLater-v0")
    err = capsys.readouterr().err
    assert code == 2 and "non-finite observations" in err
    assert "state after iteration 1" in err
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["iteration"] == 1
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


def test_ctrl_c_saves_the_state_of_the_last_finished_iteration(tmp_path, capsys, monkeypatch):
    training = importlib.import_module("metarl.train")  # the module; `metarl.train` is the function
    calls = {"n": 0}
    real_step = training.meta_step

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "meta_step", interrupted_step)
    code = main(["train", "experiments/smoke.yaml", "--logdir", str(tmp_path), "--run-name", "r", "--no-progress"])
    assert code == 130
    assert "state after iteration 2" in capsys.readouterr().err
    checkpoint = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["iteration"] == 2
    assert metarl.load(tmp_path / "r").checkpoint["iteration"] == 2
