"""`metarl check-env`: passes on every shipped family and the custom-env example, and names what is wrong
with four broken environments (defined here, at module level, so that they pickle)."""

import contextlib
import io
import json
import re
import threading
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs import Navigation2DEnv
from metarl.check import check_task_distribution, format_report
from metarl.cli import main

ROOT = Path(__file__).resolve().parents[1]
CUSTOM_ID = "experiments.custom_env_example:Custom/SlipperyCart-v0"


class TaskIgnoredEnv(Navigation2DEnv):
    """(a) Keeps the goal it was built with: setting a task changes nothing."""

    def _apply_task(self, task):
        if not hasattr(self, "_goal"):
            super()._apply_task(task)


class GlobalRandomEnv(Navigation2DEnv):
    """(b) Draws goals from numpy's global random state instead of the caller's generator."""

    def sample_tasks(self, n, rng):
        return [{"goal": list(np.random.uniform(-0.5, 0.5, size=2))} for _ in range(n)]


class LockedEnv(Navigation2DEnv):
    """(c) Holds a lock, which cannot be pickled."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lock = threading.Lock()


class LeakyEnv(Navigation2DEnv):
    """(d) Appends the goal to the observation."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.observation_space = envs.navigation.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return np.concatenate([obs, self._goal]).astype(np.float32), info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return np.concatenate([obs, self._goal]).astype(np.float32), reward, terminated, truncated, info


class LateLeakEnv(LeakyEnv):
    """Shows the goal only after the first step: the copy heuristic, not the reset check, finds it."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        obs[2:] = 0.0
        return obs, info


class DriftEnv(Navigation2DEnv):
    """Adds each new goal to the old one: setting a task again does not restore the behaviour."""

    def _apply_task(self, task):
        self._goal = getattr(self, "_goal", 0.0) + np.array(task.goal)


class ResetSamplesEnv(Navigation2DEnv):
    """Draws a new task at every reset."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.task = self.sample_tasks(1, self.np_random)[0]
        return obs, info


class SetTaskOnlyEnv(gym.Env):
    """Has set_task but no `task` attribute, which metarl's ``set_attr("task", ...)`` would miss."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Box(-0.1, 0.1, shape=(1,), dtype=np.float32)
    _goal = 0.0

    def sample_tasks(self, n, rng):
        return [{"goal": float(g)} for g in rng.uniform(-1, 1, n)]

    def set_task(self, task):
        self._goal = task["goal"]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x = 0.0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self._x += float(action[0])
        return np.array([self._x], dtype=np.float32), -abs(self._x - self._goal), False, False, {}


def failures(results):
    return {r.name: r for r in results if r.status == "fail"}


def test_passes_on_every_registered_family():
    for env_id in envs.FAMILIES:
        results = check_task_distribution(env_id, num_tasks=4, steps=3)
        expected = 10 if env_id.startswith("MetaRL/ML") else 9  # + the benchmark's fixed task lists
        assert [r.status for r in results] == ["pass"] * expected, f"{env_id}:\n{format_report(results)}"
    results = check_task_distribution("MetaRL/Navigation2D-v0", {"goal_high": 2.0}, horizon=7)
    assert "horizon 7" in results[0].message


@pytest.mark.parametrize(
    ("entry_point", "check", "text"),
    [
        ("TaskIgnoredEnv", "task_effect", 'setting the task changes nothing: tasks {"goal": ['),
        ("GlobalRandomEnv", "reproducible_tasks", "sample_tasks draws from somewhere else than its rng argument"),
        (
            "LockedEnv",
            "picklable",
            "pickle '_thread.lock' object; attribute 'lock' of LockedEnv (a _thread.lock)",
        ),
        ("LeakyEnv", "task_not_observed", "copies the task (obs[2] = task goal[0], obs[3] = task goal[1])"),
        ("LateLeakEnv", "task_not_observed", "goal[1]) at every step after reset, for 3 different tasks"),
    ],
)
def test_names_what_is_wrong_with_a_broken_env(entry_point, check, text):
    results = check_task_distribution(f"test_check_env:{entry_point}", horizon=20, num_tasks=4, steps=4)
    assert len(results) == 9
    assert list(failures(results)) == [check], format_report(results)
    assert text in failures(results)[check].message
    assert failures(results)[check].fix


def test_drift_and_tasks_changed_by_reset():
    results = failures(check_task_distribution("test_check_env:DriftEnv", horizon=20, steps=4))
    assert "did not reproduce its first rollout (reward of step 1: " in results["task_effect"].message
    assert "never an in-place multiplication" in results["task_effect"].fix
    results = failures(check_task_distribution("test_check_env:ResetSamplesEnv", horizon=20, steps=4))
    assert results["reset_keeps_task"].message.startswith('reset() changed the task from {"goal": [')


def test_constructor_error_is_a_creation_failure():
    results = check_task_distribution("MetaRL/Navigation2D-v0", {"goal_low": 1.0, "goal_high": 0.0})
    assert [r.status for r in results] == ["fail"]
    assert "ValueError: goal_low (1.0) must be below goal_high (0.0)" in results[0].message


def test_leak_found_in_the_first_observation_and_fixes_are_given():
    result = failures(check_task_distribution("test_check_env:LeakyEnv", horizon=20))["task_not_observed"]
    assert result.message.startswith(
        "the first observation after reset(seed=0) depends on the task: component(s) [2, 3]"
    )
    assert "keep the task out of the observation" in result.fix
    ignored = failures(check_task_distribution("test_check_env:TaskIgnoredEnv", horizon=20))["task_effect"]
    assert "read the task where it matters" in ignored.fix


def test_missing_task_attribute_fails_the_protocol_and_skips_the_rest():
    results = check_task_distribution("test_check_env:SetTaskOnlyEnv", horizon=20)
    assert [r.status for r in results] == ["pass", "pass", "fail"] + ["skip"] * 6
    assert "set_task() but no `task` attribute" in results[2].message
    assert "add a `task` property whose setter calls set_task" in results[2].fix


def test_global_random_state_is_restored():
    np.random.seed(5)
    expected = np.random.random(3)
    np.random.seed(5)
    check_task_distribution("test_check_env:GlobalRandomEnv", horizon=20, num_tasks=2, steps=2)
    np.testing.assert_array_equal(np.random.random(3), expected)


def run_cli(argv):
    """Exit code, stdout and stderr of ``metarl ARGV``; stdout with its line wrapping undone."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, re.sub(r"\n {6,}", " ", out.getvalue()), err.getvalue()


def test_cli_exit_codes_and_report(tmp_path):
    code, out, _ = run_cli(["check-env", "test_check_env:LeakyEnv", "--kwargs", '{"goal_high": 1.0}'])
    assert code == 1
    assert out.startswith("metarl check-env: test_check_env:LeakyEnv\n")
    assert "\nFAIL  no task in observation: the first observation after reset(seed=0) depends on the task" in out
    assert "\nPASS  task effect: " in out
    assert out.rstrip().endswith("8 of 9 checks pass, 1 fail")

    code, out, _ = run_cli(["check-env", "--config", str(ROOT / "experiments" / "smoke.yaml")])
    assert code == 0
    assert "(observation Box(-inf, inf, (2,), float32), action Box(-0.1, 0.1, (2,), float32), horizon 20)" in out
    assert out.rstrip().endswith("9 of 9 checks pass")

    code, out, _ = run_cli(["check-env", "no_such_module:Env-v0"])
    assert code == 2
    assert "FAIL  creatable: cannot build 'no_such_module:Env-v0': cannot import module 'no_such_module'" in out
    code, _, err = run_cli(["check-env", "MetaRL/Navigation2D-v0", "--kwargs", "{goal"])
    assert code == 2
    assert "metarl check-env: error: --kwargs is not valid JSON" in err


def test_custom_env_example_checks_trains_and_evaluates(tmp_path):
    code, out, _ = run_cli(["check-env", CUSTOM_ID])
    assert code == 0, out
    config = ROOT / "experiments" / "custom_env_example.yaml"
    threads = torch.get_num_threads()
    tiny = ["inner.episodes_per_task=2", "outer.tasks_per_batch=2", "policy.hidden_sizes=[8]", "train.num_threads=1"]
    tiny += ["evaluation.num_tasks=2", "evaluation.episodes_per_task=2", "evaluation.adapt_steps=1", "env.horizon=10"]
    argv = ["train", str(config), "--iterations", "2", "--logdir", str(tmp_path), "--run-name", "r", "--evaluate"]
    try:
        code, out, err = run_cli([*argv, "--no-progress", *(x for o in tiny for x in ("--set", o))])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert "mean return over 2 held-out tasks" in out
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    evaluation = json.loads((tmp_path / "r" / "eval" / "eval.json").read_text())
    assert evaluation["env"] == CUSTOM_ID
    tasks = json.loads((tmp_path / "r" / "test_tasks.json").read_text())
    assert len(tasks) == 2 and set(tasks[0]) == {"goal", "friction"}
    assert -1.0 <= tasks[0]["goal"] <= 1.0 and 0.05 <= tasks[0]["friction"] <= 0.3


def test_an_unregistered_env_class_trains_through_its_entry_point(tmp_path):
    entry_point = "experiments.custom_env_example:SlipperyCartEnv"  # the class itself, not a registered id
    code, out, _ = run_cli(["check-env", entry_point])
    assert code == 0, out
    config = ROOT / "experiments" / "custom_env_example.yaml"
    overrides = [f"env.id={entry_point}", "env.horizon=10", "inner.episodes_per_task=2", "outer.tasks_per_batch=2"]
    overrides += ["policy.hidden_sizes=[8]", "train.num_threads=1"]
    threads = torch.get_num_threads()
    argv = ["train", str(config), "--iterations", "1", "--logdir", str(tmp_path), "--run-name", "r", "--no-progress"]
    try:
        code, _, err = run_cli([*argv, *(x for o in overrides for x in ("--set", o))])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


def test_readme_sample_output_is_what_check_env_prints():
    readme = (ROOT / "README.md").read_text()
    command = "$ PYTHONPATH=tests metarl check-env test_check_env:LeakyEnv\n"
    sample = readme.split(command)[1].split("```")[0].splitlines()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["check-env", "test_check_env:LeakyEnv"]) == 1
    printed = out.getvalue().splitlines()
    shown = [line for line in sample if line.strip() != "..."]
    assert len(shown) == 23
    assert [line for line in shown if line not in printed] == []
    assert shown[-1] == printed[-1] == "8 of 9 checks pass, 1 fail"


@pytest.mark.parametrize(
    "config", ["pendulum_gravity_mass.yaml", "hopper_masses_friction.yaml", "halfcheetah_target_velocity_yaml.yaml"]
)
def test_check_env_passes_on_the_task_space_examples(config, capsys):
    root = Path(__file__).resolve().parent.parent
    assert main(["check-env", "--config", str(root / "experiments" / config)]) == 0
    assert "9 of 9 checks pass" in capsys.readouterr().out
