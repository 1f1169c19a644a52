"""Bad input from an environment: a clear error naming the problem, not a deep traceback."""

import dataclasses
import importlib
import json
import time

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
    training = importlib.import_module("metarl.training")  # the module; `metarl.train` is the function
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


def _train(tmp_path, *settings: str) -> list[str]:
    args = ["train", "experiments/smoke.yaml", "--logdir", str(tmp_path), "--run-name", "r", "--no-progress"]
    for setting in ("train.num_threads=1", *settings):
        args += ["--set", setting]
    return args


def _poison_surrogate(monkeypatch, on_call: int) -> None:
    """The post-adaptation advantages of the second task become NaN on one call of the surrogate."""
    maml = importlib.import_module("metarl.maml")
    real = maml.surrogate_loss
    calls = {"n": 0}

    def surrogate(policy, adapted, episodes):
        calls["n"] += 1
        if calls["n"] == on_call:
            advantages = episodes.advantages.clone()
            advantages[1] = float("nan")  # task 1 only
            episodes = dataclasses.replace(episodes, advantages=advantages)
        return real(policy, adapted, episodes)

    monkeypatch.setattr(maml, "surrogate_loss", surrogate)


def test_a_nan_meta_gradient_stops_the_run_naming_iteration_and_task(tmp_path, capsys, monkeypatch):
    # TRPO evaluates the surrogate once for the meta-gradient, then once per line-search step.
    _poison_surrogate(monkeypatch, on_call=1)
    assert main(_train(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "iteration 1: non-finite post-adaptation loss gradient for task GoalTask(goal=" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing good to keep before iteration 1


def test_on_nonfinite_skip_drops_the_meta_batch_and_goes_on(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    training = importlib.import_module("metarl.training")
    real_step = training.meta_step

    def poisoned_second_step(policy, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                policy.log_std.fill_(float("nan"))  # as a diverging update would leave them
            raise metarl.sampler.NonFiniteError("non-finite parameters after the outer step")
        return real_step(policy, *args, **kwargs)

    monkeypatch.setattr(training, "meta_step", poisoned_second_step)
    assert main(_train(tmp_path, "train.on_nonfinite=skip")) == 0
    assert "skipped meta-batch of iteration 2: non-finite parameters" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3]
    assert [line["optim/skipped_batch"] for line in lines] == [0.0, 1.0, 0.0]  # the README's key
    final = torch.load(tmp_path / "r" / "checkpoints" / "final.pt", weights_only=True)
    assert final["iteration"] == 3 and all(torch.isfinite(p).all() for p in final["policy"].values())


def test_a_failed_line_search_keeps_the_parameters_and_training_goes_on(tmp_path, monkeypatch):
    maml = importlib.import_module("metarl.maml")
    monkeypatch.setattr(maml, "line_search", lambda evaluate, step, loss, *args: (None, loss, 0.0))
    assert main(_train(tmp_path, "train.iterations=2")) == 0
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [line["optim/step_accepted"] for line in lines] == [0.0, 0.0]
    assert all(line["optim/step_norm"] == 0.0 and line["policy/kl"] == 0.0 for line in lines)
    torch.manual_seed(0)  # train's own seed: the initial parameters, which no step changed
    config = metarl.config.load_config("experiments/smoke.yaml")
    initial = metarl.policies.make_policy(
        gym.spaces.Box(-np.inf, np.inf, (2,)), gym.spaces.Box(-0.1, 0.1, (2,)), config.policy
    ).state_dict()
    final = torch.load(tmp_path / "r" / "checkpoints" / "final.pt", weights_only=True)["policy"]
    assert all(torch.equal(final[k], initial[k]) for k in initial)


class HangsAfterSteps(NaNAfterSteps):
    """An environment that stops answering (an unstable simulator in an endless loop)."""

    def step(self, action):
        self._t += 1
        if self._t >= self.nan_after:
            time.sleep(3600)
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_a_hanging_worker_is_an_error_within_the_timeout(tmp_path, capsys):
    start = time.monotonic()
    code = main(
        _train(
            tmp_path,
            "env.id=tests.test_faults:HangsAfterSteps",
            "env.horizon=5",
            "env.kwargs={nan_after: 3}",
            "env.workers=2",
            "env.worker_timeout=2",
        )
    )
    err = capsys.readouterr().err
    assert code == 2 and "did not answer" in err and "within 2 s" in err and "Traceback" not in err
    assert time.monotonic() - start < 60
