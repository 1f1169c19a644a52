"""The ``metarl`` command: errors exit with status 2 and a message, and a tiny end-to-end run."""

import contextlib
import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.cli import main
from metarl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "experiments" / "smoke.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """``metarl train experiments/smoke.yaml --evaluate`` once for the whole module (a few seconds)."""
    logdir = tmp_path_factory.mktemp("runs")
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    # One torch thread: on a busy machine torch's default thread pool makes this tiny run 5-20x slower.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            [
                "train",
                SMOKE,
                "--logdir",
                str(logdir),
                "--run-name",
                "r",
                "--evaluate",
                "--no-progress",
                "--set",
                "train.num_threads=1",
            ]
        )
    yield {"code": code, "logdir": logdir, "run": logdir / "r", "stdout": out.getvalue(), "stderr": err.getvalue()}
    torch.set_num_threads(threads)


def test_help_via_python_m():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "metarl", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: metarl ")
    for command in ("train", "evaluate", "envs"):
        assert command in result.stdout
    assert "metarl train experiments/navigation_2d.yaml --evaluate" in result.stdout
    assert "Traceback" not in result.stderr


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: metarl" in capsys.readouterr().err


def test_train_with_config_typo(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("inner:\n  lrr: 0.1\nouter:\n  tasks_per_batch: 0\n")
    assert main(["train", str(config), "--logdir", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert "metarl train: error: invalid configuration:" in captured.err
    assert "unknown key 'inner.lrr' (did you mean 'inner.lr'?)" in captured.err
    assert "'outer.tasks_per_batch' must be at least 1, got 0" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "runs").exists()


def test_train_with_missing_config(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing)]) == 2
    assert f"config file '{missing}' does not exist" in capsys.readouterr().err


def test_train_with_bad_override(capsys):
    assert main(["train", SMOKE, "--set", "inner.lr"]) == 2
    err = capsys.readouterr().err
    assert "override 'inner.lr' must look like section.field=value" in err
    assert "Traceback" not in err


def test_train_with_unknown_env_id(tmp_path, capsys):
    code = main(["train", SMOKE, "--set", "env.id=MetaRL/Nope-v0", "--logdir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("metarl train: error: unknown environment id 'MetaRL/Nope-v0'")
    assert "MetaRL/Navigation2D-v0" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no run directory for a run that never started


def test_evaluate_missing_run(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["evaluate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"metarl evaluate: error: '{missing}' does not exist; pass a run directory or a checkpoint file" in err


def test_evaluate_directory_without_checkpoints(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert f"'{tmp_path}' has no checkpoints/ with a .pt file" in capsys.readouterr().err


def test_evaluate_corrupt_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "run" / "checkpoints" / "final.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(bytes(range(256)) * 4)
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"cannot load checkpoint '{checkpoint}'" in err
    assert "corrupt" in err
    assert "Traceback" not in err


def test_evaluate_truncated_checkpoint(trained_run, tmp_path, capsys):
    data = (trained_run["run"] / "checkpoints" / "final.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    assert main(["evaluate", str(truncated)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_evaluate_checkpoint_that_is_not_metarl(tmp_path, capsys):
    checkpoint = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, checkpoint)
    assert main(["evaluate", str(checkpoint)]) == 2
    assert f"'{checkpoint}' is not a metarl checkpoint (no format_version)" in capsys.readouterr().err

    torch.save({"format_version": 99}, checkpoint)
    assert main(["evaluate", str(checkpoint)]) == 2
    assert "has checkpoint format 99, this metarl reads format 1" in capsys.readouterr().err


class _RunsCode:
    """Unpickling this calls os.system: a checkpoint must never be loaded that way."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_evaluate_refuses_checkpoint_that_executes_code(tmp_path, capsys):
    marker = tmp_path / "code_was_executed"
    checkpoint = tmp_path / "run" / "checkpoints" / "final.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"format_version": 1, "policy": _RunsCode(marker)}, checkpoint)
    assert not marker.exists()

    assert main(["evaluate", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"cannot load checkpoint '{checkpoint}'" in err
    assert "contains objects other than tensors and plain data" in err
    assert not marker.exists()


def test_envs_lists_task_families(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    families = [line for line in lines if line.startswith("MetaRL/")]
    assert {"MetaRL/Navigation2D-v0", "MetaRL/HalfCheetahVel-v0", "MetaRL/AntGoal-v0"} <= set(families)
    navigation = lines.index("MetaRL/Navigation2D-v0")
    assert lines[navigation + 1].split() == ["horizon", "100"]
    assert "observation   Box(-inf, inf, (2,), float32)" in out
    assert "action        Box(-0.1, 0.1, (2,), float32)" in out
    assert "GoalTask(goal=(g_x, g_y)) with the goal uniform in [goal_low, goal_high]^2 (default [-0.5, 0.5]^2)" in out
    assert "a plain reset() keeps the current task" in out


def test_train_end_to_end(trained_run):
    assert trained_run["code"] == 0, trained_run["stderr"]
    run = trained_run["run"]
    assert "Traceback" not in trained_run["stderr"]
    assert f"run directory: {run}" in trained_run["stdout"]
    assert "evaluating on 4 held-out tasks ..." in trained_run["stdout"]
    assert f"results: {run / 'eval'} (eval.json, eval.csv" in trained_run["stdout"]

    # config.yaml is the smoke config with the command line's logdir, run name and --set.
    expected = load_config(SMOKE, [f"train.logdir={trained_run['logdir']}", "train.run_name=r", "train.num_threads=1"])
    assert load_config(run / "config.yaml") == expected

    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    for record in records:
        assert {
            "returns/pre_adaptation",
            "returns/post_adaptation",
            "returns/adaptation_gain",
            "time/env_steps",
        } <= set(record)
        # Returns of 20-step episodes with rewards -||p - g|| in a 1x1 square: negative and bounded.
        assert -20 * 2**0.5 * 2 <= record["returns/pre_adaptation"] < 0
    # 3 tasks x 4 episodes x 20 steps, before and after adaptation, per iteration.
    assert [r["time/env_steps"] for r in records] == [480.0, 960.0, 1440.0]

    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "final.pt").is_file()
    assert (run / "checkpoints" / "iter_000002.pt").is_file()  # checkpoint_every: 2
    assert len(json.loads((run / "test_tasks.json").read_text())) == 4

    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["env"] == "MetaRL/Navigation2D-v0"
    assert [s["step"] for s in result["summary"]["maml"]] == [0, 1, 2]
    assert len(result["tasks"]) == 4
    assert result["tasks"] == json.loads((run / "test_tasks.json").read_text())
    assert result["protocol"]["iteration"] == 3
    assert result["protocol"]["lr"] == 0.1
    with (run / "eval" / "eval.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["method", "task_index", "task", "step", "return"]
    assert len(rows) == 1 + 4 * 3


def test_evaluate_run(trained_run, tmp_path, capsys):
    assert trained_run["code"] == 0, trained_run["stderr"]
    run = trained_run["run"]
    out_dir = tmp_path / "e"
    assert main(["evaluate", str(run), "--tasks", "3", "--adapt-steps", "1", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "MetaRL/Navigation2D-v0: mean return over 3 held-out tasks" in out
    assert "0 steps" in out and "1 step" in out and "2 steps" not in out

    result = json.loads((out_dir / "eval.json").read_text())
    summary = result["summary"]["maml"]
    assert [s["step"] for s in summary] == [0, 1]
    assert len(result["tasks"]) == 3
    assert len(result["per_task"]["maml"]) == 3
    assert all(len(row) == 2 for row in result["per_task"]["maml"])
    assert result["protocol"]["num_tasks"] == 3
    assert result["protocol"]["adapt_steps"] == 1
    assert result["protocol"]["episodes_per_task"] == 4
    # The held-out tasks are the run's test tasks (the first three of them).
    assert result["tasks"] == json.loads((run / "test_tasks.json").read_text())[:3]
    assert (out_dir / "eval.csv").is_file()


def test_evaluate_rejects_zero_tasks(trained_run, tmp_path, capsys):
    assert trained_run["code"] == 0, trained_run["stderr"]
    out_dir = tmp_path / "e"
    assert main(["evaluate", str(trained_run["run"]), "--tasks", "0", "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert "'evaluation.num_tasks' must be at least 1, got 0" in err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_evaluate_out_of_distribution_split(trained_run, tmp_path, capsys):
    assert (
        main(["evaluate", str(trained_run["run"]), "--split", "ood", "--tasks", "3", "--out", str(tmp_path / "ood")])
        == 0
    )
    assert "out-of-distribution tasks" in capsys.readouterr().out
    data = json.loads((tmp_path / "ood" / "eval.json").read_text())
    goals = np.array([t["goal"] for t in data["tasks"]])
    assert data["protocol"]["split"] == "ood" and len(goals) == 3
    assert np.all(np.abs(goals).max(axis=1) > 0.5) and np.all(np.abs(goals) <= 1.0)


def test_evaluate_on_tasks_from_a_file(trained_run, tmp_path, capsys):
    assert trained_run["code"] == 0, trained_run["stderr"]
    goals = [{"goal": [0.4, -0.2]}, {"goal": [-0.1, 0.3]}]
    tasks_file = tmp_path / "goals.json"
    tasks_file.write_text(json.dumps(goals))
    out_dir = tmp_path / "e"
    args = ["evaluate", str(trained_run["run"]), "--tasks-file", str(tasks_file), "--adapt-steps", "1"]
    assert main([*args, "--out", str(out_dir)]) == 0
    assert "mean return over 2 given tasks" in capsys.readouterr().out
    result = json.loads((out_dir / "eval.json").read_text())
    assert result["tasks"] == goals
    assert result["protocol"]["tasks_file"] == str(tasks_file)

    yaml_file = tmp_path / "goals.yaml"  # the same tasks in YAML
    yaml_file.write_text("- goal: [0.4, -0.2]\n- goal: [-0.1, 0.3]\n")
    yaml_args = ["evaluate", str(trained_run["run"]), "--tasks-file", str(yaml_file), "--adapt-steps", "1"]
    assert main([*yaml_args, "--out", str(tmp_path / "y")]) == 0
    assert json.loads((tmp_path / "y" / "eval.json").read_text())["per_task"] == result["per_task"]

    tasks_file.write_text("{not json")
    assert main([*args, "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read tasks from {tasks_file}" in err and "Traceback" not in err

    tasks_file.write_text(json.dumps([{"velocity": 1.0}]))
    assert main([*args, "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert "task 0 of" in err and "is not a task of MetaRL/Navigation2D-v0" in err and "Traceback" not in err


def test_evaluate_with_the_random_baseline(trained_run, tmp_path, capsys):
    assert trained_run["code"] == 0, trained_run["stderr"]
    out_dir = tmp_path / "e"
    args = ["evaluate", str(trained_run["run"]), "--tasks", "3", "--adapt-steps", "1", "--out", str(out_dir)]
    assert main([*args, "--baselines", "random"]) == 0
    table = capsys.readouterr().out
    assert "maml" in table and "random" in table
    result = json.loads((out_dir / "eval.json").read_text())
    assert set(result["per_task"]) == {"maml", "random"}
    assert len(result["per_task"]["random"]) == 3 and all(len(row) == 2 for row in result["per_task"]["random"])
    assert result["per_task"]["random"] != result["per_task"]["maml"]
    # The same tasks for both methods, and deterministic given the seed.
    assert main([*args, "--baselines", "random", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert again["per_task"] == result["per_task"]

    assert main([*args, "--baselines", "oracle"]) == 2
    assert "baseline 'oracle': use 'random' or NAME=RUN" in capsys.readouterr().err
