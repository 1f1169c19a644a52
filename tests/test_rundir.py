"""Run directories are never mixed: one live process each, no silent reuse, names inside the logdir."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metarl.cli import main
from metarl.config import load_config
from metarl.errors import RunDirError
from metarl.outer.trpo import TRPO
from metarl.rundir import RunDirectory
from metarl.training import resume, train

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"


def _args(logdir: Path, *more: str) -> list[str]:
    return ["train", str(SMOKE), "--logdir", str(logdir), "--no-progress", *more]


def test_an_existing_run_name_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    assert main(_args(tmp_path, "--run-name", "r", "--iterations", "4")) == 0
    run = tmp_path / "r"
    files = lambda: {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}  # noqa: E731
    before = files()
    assert main(_args(tmp_path, "--run-name", "r", "--iterations", "2")) == 2
    err = capsys.readouterr().err
    assert f"run directory '{run}' already exists; continue it with `metarl train --resume {run}`" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert files() == before  # untouched

    # --overwrite starts afresh: none of the old run's checkpoints survive to be resumed later.
    assert main(_args(tmp_path, "--run-name", "r", "--iterations", "1", "--overwrite")) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "final.pt"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_run_names_cannot_leave_the_logdir(tmp_path, capsys):
    logdir = tmp_path / "logs"
    for name in ("../../x", "..", "a/b", "/abs"):
        assert main(_args(logdir, "--run-name", name)) == 2
        assert "'train.run_name' must be a plain directory name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not logdir.exists()


def test_default_names_started_in_the_same_second_do_not_collide(tmp_path):
    first = RunDirectory.create(tmp_path, None, "Navigation2D-v0__seed0__20261201-103000")
    second = RunDirectory.create(tmp_path, None, "Navigation2D-v0__seed0__20261201-103000")
    assert first.path != second.path
    assert second.path.name == "Navigation2D-v0__seed0__20261201-103000_2"
    first.release(), second.release()


def test_a_run_directory_in_use_is_refused(tmp_path):
    config = load_config(SMOKE, [f"train.logdir={tmp_path}", "train.run_name=r", "train.iterations=2"])
    run = train(config, progress=False)
    holder = RunDirectory.reopen(run)  # as a live training holds it
    try:
        with pytest.raises(RunDirError, match=f"is in use by process {os.getpid()}"):
            resume(run, ["train.iterations=3"], progress=False)
        with pytest.raises(RunDirError, match="is in use by process"):
            train(config, progress=False, overwrite=True)
    finally:
        holder.release()
    resume(run, ["train.iterations=3"], progress=False)  # free again once released
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_second_training_process_cannot_join_a_live_run(tmp_path):
    """A real training process holds its run: `--resume` of it and a second run of its name are refused."""
    run = tmp_path / "live"
    command = [sys.executable, "-m", "metarl", *_args(tmp_path, "--run-name", "live", "--iterations", "100000")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        for args in (["train", "--resume", str(run)], _args(tmp_path, "--run-name", "live", "--overwrite")):
            result = subprocess.run([sys.executable, "-m", "metarl", *args], cwd=ROOT, capture_output=True, text=True)
            assert result.returncode == 2
            assert f"is in use by process {process.pid}, which is training in it now" in result.stderr
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == list(range(1, len(lines) + 1))  # one writer only


def test_printed_resume_commands_are_shell_quoted(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real_step = TRPO.step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(TRPO, "step", interrupted)
    assert main(_args(tmp_path, "--run-name", "my run; rm -rf x")) == 130
    err = capsys.readouterr().err
    command = f"metarl train --resume {shlex.quote(str(tmp_path / 'my run; rm -rf x'))}"
    assert f"resume with: {command}" in err
    assert shlex.split(command)[-1] == str(tmp_path / "my run; rm -rf x")
