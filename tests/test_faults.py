"""Bad input from an environment: a clear error naming the problem, not a deep traceback."""

import dataclasses
import errno
import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import metarl
from metarl.cli import main
from metarl.outer.trpo import TRPO

ROOT = Path(__file__).resolve().parent.parent


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
    calls = {"n": 0}
    real_step = TRPO.step

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(TRPO, "step", interrupted_step)
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
    """The post-adaptation advantages of the second task become NaN on one call of the per-task surrogate."""
    maml, trpo = importlib.import_module("metarl.maml"), importlib.import_module("metarl.outer.trpo")
    real = maml.surrogate_losses
    calls = {"n": 0}

    def surrogate(policy, adapted, episodes, pi=None):
        calls["n"] += 1
        if calls["n"] == on_call:
            advantages = episodes.advantages.clone()
            advantages[1] = float("nan")  # task 1 only
            episodes = dataclasses.replace(episodes, advantages=advantages)
        return real(policy, adapted, episodes, pi)

    monkeypatch.setattr(maml, "surrogate_losses", surrogate)
    monkeypatch.setattr(trpo, "surrogate_losses", surrogate)


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
    real_step = TRPO.step

    def poisoned_second_step(algorithm, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                algorithm.policy.log_std.fill_(float("nan"))  # as a diverging update would leave them
            raise metarl.errors.NonFiniteError("non-finite parameters after the outer step")
        return real_step(algorithm, *args, **kwargs)

    monkeypatch.setattr(TRPO, "step", poisoned_second_step)
    assert main(_train(tmp_path, "train.on_nonfinite=skip")) == 0
    assert "skipped meta-batch of iteration 2: non-finite parameters" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3]
    assert [line["optim/skipped_batch"] for line in lines] == [0.0, 1.0, 0.0]  # the README's key
    final = torch.load(tmp_path / "r" / "checkpoints" / "final.pt", weights_only=True)
    assert final["iteration"] == 3 and all(torch.isfinite(p).all() for p in final["policy"].values())


def test_a_failed_line_search_keeps_the_parameters_and_training_goes_on(tmp_path, monkeypatch):
    trpo = importlib.import_module("metarl.outer.trpo")
    monkeypatch.setattr(trpo, "line_search", lambda evaluate, step, loss, *args: (None, loss, 0.0))
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


# ---- Environments that fail in other ways: one line (exit 2), the state kept, a resume that works


class StepRaises(NaNAfterSteps):
    """Healthy for `nan_after` steps of its lifetime, then its step raises (while METARL_TEST_FAULTY is set)."""

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._t += 1
        if os.environ.get("METARL_TEST_FAULTY") and self._t > self.nan_after:
            raise RuntimeError("the simulator exploded")
        return np.zeros(2, np.float32), -float(self.task), False, False, {}


class WrongShape(StepRaises):
    """Its step returns a 3-vector where the space promises 2 numbers."""

    def step(self, action):
        self._t += 1
        wrong = os.environ.get("METARL_TEST_FAULTY") and self._t > self.nan_after
        return np.zeros(3 if wrong else 2, np.float32), -float(self.task), False, False, {}


@pytest.mark.parametrize(
    "entry_point, message",
    [
        ("StepRaises", "the environment raised RuntimeError while stepping: the simulator exploded"),
        ("WrongShape", "the environment raised ValueError while stepping: "),
    ],
)
def test_an_environment_that_fails_mid_run_is_one_line_and_the_run_resumes(
    tmp_path, capsys, monkeypatch, entry_point, message
):
    # Each of the 12 copies makes 2 x 5 steps per iteration: iteration 1 is healthy, iteration 2 is not.
    settings = [f"env.id=tests.test_faults:{entry_point}", "env.horizon=5", "env.kwargs={nan_after: 10}"]
    monkeypatch.setenv("METARL_TEST_FAULTY", "1")
    assert main(_train(tmp_path, *settings, "train.checkpoint_every=10")) == 2
    monkeypatch.delenv("METARL_TEST_FAULTY")
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("metarl train: error:")]
    assert len(error_lines) == 1 and message in error_lines[0] and "Traceback" not in err
    assert err.splitlines()[-1] == error_lines[0]  # the error is the last word
    assert "the state after iteration 1 is in" in err
    assert torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
    assert main(["train", "--resume", str(tmp_path / "r"), "--trust-module", "tests.test_faults"]) == 0, (
        capsys.readouterr().err
    )
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]


class DictObservations(gym.Env):
    observation_space = spaces.Dict({"position": spaces.Box(-1, 1, (2,), np.float32)})
    action_space = spaces.Box(-1, 1, (2,), np.float32)
    task = 0.0

    def sample_tasks(self, n, rng):
        return [0.0] * n


@pytest.mark.parametrize(
    "settings, message",
    [
        (["env.id=json:dumps"], "the environment raised TypeError while creating 'json:dumps'"),
        (["env.id=json:JSONDecoder"], "module 'json' neither registers the Gymnasium id 'JSONDecoder' nor defines"),
        (
            ["env.id=tests.test_faults:DictObservations", "env.horizon=5"],
            "DictObservations observes Dict('position': Box(-1.0, 1.0, (2,), float32)); metarl's policies need a flat "
            "Box observation space: wrap the environment in gymnasium.wrappers.FlattenObservation",
        ),
    ],
)
def test_what_is_not_a_usable_environment_is_one_line(tmp_path, capsys, settings, message):
    assert main(_train(tmp_path, *settings)) == 2
    err = capsys.readouterr().err
    assert err.startswith("metarl train: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "setting, key, size",
    [
        ("inner.episodes_per_task=1000000000", "'inner.episodes_per_task'", "TiB"),
        ("env.horizon=1000000000", "'env.horizon'", "TiB"),
        ("policy.hidden_sizes=[100000000,100000000]", "'policy.hidden_sizes'", "PiB"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_anything_is_allocated(tmp_path, capsys, setting, key, size):
    start = time.monotonic()
    assert main(_train(tmp_path, setting)) == 2
    err = capsys.readouterr().err
    assert err.startswith("metarl train: error: invalid configuration: this run would need about ")
    assert key in err and size in err and "available here" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - start < 10 and not (tmp_path / "r").exists()


def test_evaluation_sizes_are_checked_too(tmp_path, capsys):
    assert main(_train(tmp_path, "train.iterations=1")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--episodes", "1000000000"]) == 2
    err = capsys.readouterr().err
    assert "'evaluation.episodes_per_task'" in err and "would need about" in err


class HangsWhenBuiltInAWorker(NaNAfterSteps):
    """Builds at once in the training process, never in a worker process (a constructor that hangs)."""

    def __init__(self, nan_after: int = 3) -> None:
        if multiprocessing.parent_process() is not None:
            time.sleep(3600)
        super().__init__(nan_after)


def test_a_worker_whose_constructor_hangs_is_reported_within_the_timeout(tmp_path, capsys):
    start = time.monotonic()
    settings = ["env.id=tests.test_faults:HangsWhenBuiltInAWorker", "env.horizon=5", "env.workers=2"]
    assert main(_train(tmp_path, *settings, "env.worker_timeout=3")) == 2
    err = capsys.readouterr().err
    assert "did not finish building its environments within 3 s (env.worker_timeout, per environment copy" in err
    assert "Traceback" not in err and time.monotonic() - start < 40


def test_an_unwritable_log_directory_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    assert main(["train", "experiments/smoke.yaml", "--logdir", str(tmp_path / "file" / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == f"metarl train: error: cannot create the log directory '{tmp_path / 'file' / 'runs'}': Not a " + (
        "directory; choose another with --logdir\n"
    )
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):  # as on a read-only file system (root ignores directory modes)
        if self.is_relative_to(tmp_path / "ro"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["train", "experiments/smoke.yaml", "--logdir", str(tmp_path / "ro")]) == 2
    assert "permission denied (the directory is read-only" in capsys.readouterr().err


def test_a_full_disk_while_logging_keeps_the_state_and_resumes(tmp_path, capsys, monkeypatch):
    logger = importlib.import_module("metarl.logger")
    real_log = logger.RunLogger.log

    def disk_full_at_iteration_3(self, iteration, *args, **kwargs):
        if iteration == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_log(self, iteration, *args, **kwargs)

    monkeypatch.setattr(logger.RunLogger, "log", disk_full_at_iteration_3)
    assert main(_train(tmp_path, "train.iterations=4", "train.checkpoint_every=10")) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"metarl train: error: cannot write to run directory '{tmp_path / 'r'}'")
    assert "the disk is full" in err and "Traceback" not in err
    assert "the state after iteration 2 is in" in err
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "r")]) == 0
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4]


def test_ctrl_c_during_start_up_is_an_interruption_not_a_traceback(tmp_path):
    """SIGINT while the command is still importing torch and the rest (delays well inside start-up)."""
    command = [sys.executable, "-m", "metarl", "train", "experiments/smoke.yaml", "--logdir", str(tmp_path)]
    for delay in (0.2, 0.4, 0.6):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert "Traceback" not in err and "interrupted" in err
        assert process.returncode in (130, -signal.SIGINT)


def test_an_unwritable_evaluation_directory_is_one_line(tmp_path, capsys):
    assert main(_train(tmp_path, "train.iterations=1")) == 0
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--out", str(tmp_path / "file" / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metarl evaluate: error: cannot write the evaluation results to '{tmp_path / 'file'}")
    assert "choose another --out" in err and len(err.strip().splitlines()) == 1
