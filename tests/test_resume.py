"""Training survives interruption: exact resume, signals, kill -9, full disks, kept checkpoints."""

import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metarl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metarl.cli import main
from metarl.config import load_config
from metarl.outer.trpo import TRPO
from metarl.training import resume, train

training = importlib.import_module("metarl.training")  # the module; `metarl.train` is the function
ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"
SETTINGS = ["train.num_threads=1", "train.checkpoint_every=2"]


def _config(logdir: Path, name: str, iterations: int, *extra: str):
    return load_config(
        SMOKE, [*SETTINGS, f"train.iterations={iterations}", f"train.logdir={logdir}", f"train.run_name={name}", *extra]
    )


def _lines(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _results(run: Path) -> list[dict]:
    """Every logged number except wall-clock timings."""
    return [{k: v for k, v in m.items() if not k.startswith("time/") or k == "time/env_steps"} for m in _lines(run)]


def _same_parameters(a: Path, b: Path) -> bool:
    pa, pb = load_checkpoint(a)["policy"], load_checkpoint(b)["policy"]
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """30 iterations of the smoke config in one go: what every interrupted run must reproduce."""
    threads = torch.get_num_threads()
    run = train(_config(tmp_path_factory.mktemp("runs"), "full", 30), progress=False)
    torch.set_num_threads(threads)
    return run


def test_interrupted_and_resumed_is_bit_identical(uninterrupted, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_step = TRPO.step

    def step_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # during iteration 8: the state after iteration 7 is kept
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(TRPO, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "r", 30), progress=False)
    assert f"resume with: metarl train --resume {tmp_path / 'r'}" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["iteration"] == 7
    monkeypatch.setattr(TRPO, "step", real_step)

    resume(tmp_path / "r", progress=False)
    assert _results(tmp_path / "r") == _results(uninterrupted)
    assert [m["iteration"] for m in _lines(tmp_path / "r", "tasks.jsonl")] == list(range(1, 31))
    assert _lines(tmp_path / "r", "tasks.jsonl") == _lines(uninterrupted, "tasks.jsonl")
    assert _same_parameters(tmp_path / "r" / "checkpoints" / "final.pt", uninterrupted / "checkpoints" / "final.pt")


def test_a_finished_run_extended_with_more_iterations_equals_a_longer_run(uninterrupted, tmp_path):
    run = train(_config(tmp_path, "short", 20), progress=False)
    assert main(["train", "--resume", str(run), "--iterations", "30", "--no-progress"]) == 0
    assert _results(run) == _results(uninterrupted)
    assert _same_parameters(run / "checkpoints" / "final.pt", uninterrupted / "checkpoints" / "final.pt")


def _start(tmp_path: Path, name: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "metarl", "train", str(SMOKE), "--no-progress", "--iterations", "30"]
    command += ["--logdir", str(tmp_path), "--run-name", name]
    for setting in SETTINGS:
        command += ["--set", setting]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_iterations(process: subprocess.Popen, run: Path, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    raise AssertionError(f"no {n} iterations within 120 s")


def test_kill_9_loses_at_most_the_iterations_since_the_last_checkpoint(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    process = _start(tmp_path, "killed")
    _wait_for_iterations(process, tmp_path / "killed", 5)
    process.kill()  # SIGKILL: no chance to save anything
    process.communicate()
    kept = load_checkpoint(tmp_path / "killed")["iteration"]
    logged = len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines())
    assert kept >= 4 and logged - kept <= 2 + 1  # checkpoint_every=2, plus a line being written
    assert main(["train", "--resume", str(tmp_path / "killed"), "--no-progress"]) == 0
    assert _results(tmp_path / "killed") == _results(uninterrupted)  # iterations after `kept` replaced, once
    final = tmp_path / "killed" / "checkpoints" / "final.pt"
    assert _same_parameters(final, uninterrupted / "checkpoints" / "final.pt")


def test_sigterm_saves_the_last_finished_iteration_and_says_how_to_resume(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    process = _start(tmp_path, "terminated")
    _wait_for_iterations(process, tmp_path / "terminated", 3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "interrupted during iteration" in err and "Traceback" not in err
    assert f"resume with: metarl train --resume {tmp_path / 'terminated'}" in err
    last = load_checkpoint(tmp_path / "terminated" / "checkpoints" / "last.pt")
    assert last["iteration"] == len(_lines(tmp_path / "terminated"))  # nothing finished was lost
    assert main(["train", "--resume", str(tmp_path / "terminated"), "--no-progress"]) == 0
    assert _results(tmp_path / "terminated") == _results(uninterrupted)


def test_a_signal_while_an_iteration_is_recorded_waits_until_its_state_is_saved(tmp_path, monkeypatch):
    real_log = training.RunLogger.log

    def log_then_signal(self, iteration, *args, **kwargs):
        real_log(self, iteration, *args, **kwargs)
        if iteration == 3:  # the line is written; its checkpoint state is not yet
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(training.RunLogger, "log", log_then_signal)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(training.Interrupted):
        train(_config(tmp_path, "r", 30), progress=False)
    assert len(_lines(tmp_path / "r")) == 3
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["iteration"] == 3
    assert signal.getsignal(signal.SIGTERM) == handler  # metarl's handler is gone again


def test_the_newest_checkpoints_and_the_best_are_kept(uninterrupted):
    files = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    assert files == ["best.pt", "final.pt", "iter_000026.pt", "iter_000028.pt", "iter_000030.pt"]
    # best.pt holds the θ whose post-adaptation return was the highest measured: iteration k's
    # episodes are sampled with θ after iteration k - 1.
    metrics = _lines(uninterrupted)
    best = max(metrics, key=lambda m: m["returns/post_adaptation"])
    checkpoint = load_checkpoint(uninterrupted / "checkpoints" / "best.pt")
    assert checkpoint["best_return"] == best["returns/post_adaptation"]
    assert checkpoint["iteration"] == best["iteration"] - 1


def _full_disk(after_bytes: int):
    """A torch.save that writes `after_bytes` bytes and then fails as a full disk does."""

    def save(obj, f, *args, **kwargs):
        f.write(b"\0" * after_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "final.pt"
    save_checkpoint(path, {"iteration": 1, "policy": {"w": torch.ones(3)}})
    monkeypatch.setattr(torch, "save", _full_disk(100))
    with pytest.raises(CheckpointError, match="the disk is full; the previous version of that file is intact"):
        save_checkpoint(path, {"iteration": 2, "policy": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["final.pt"]  # no temporary file left behind


def test_a_full_disk_during_training_stops_with_a_message_and_keeps_the_checkpoints(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    writes = {"n": 0}

    def fails_from_the_fourth(obj, f, *args, **kwargs):
        writes["n"] += 1
        if writes["n"] >= 4:
            return _full_disk(10)(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fails_from_the_fourth)
    args = ["train", str(SMOKE), "--logdir", str(tmp_path), "--run-name", "r", "--no-progress", "--iterations", "8"]
    assert main([*args, "--set", "train.checkpoint_every=2"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "metarl train --resume" in err and "Traceback" not in err
    monkeypatch.undo()
    kept = load_checkpoint(tmp_path / "r")  # the newest checkpoint that was written is intact
    assert kept["iteration"] >= 2
    assert not [p for p in (tmp_path / "r" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--set", "inner.lr=0.3"], "'inner.lr' cannot change when resuming"),
        (["--seed", "3"], "--seed cannot change when resuming"),
        ([str(SMOKE)], "not both"),
    ],
)
def test_resume_refuses_changes_to_what_the_run_computes(uninterrupted, capsys, arguments, message):
    assert main(["train", "--resume", str(uninterrupted), "--iterations", "40", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_resume_errors_name_the_problem(uninterrupted, tmp_path, capsys):
    assert main(["train", "--resume", str(uninterrupted)]) == 2
    assert "already finished 30 of train.iterations=30" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "has no checkpoints/" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "give a config file to start a run, or --resume RUN_DIR" in capsys.readouterr().err


def test_a_corrupt_newest_checkpoint_is_named(uninterrupted, tmp_path, capsys):
    run = tmp_path / "copy"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes((uninterrupted / "checkpoints" / "final.pt").read_bytes()[:500])
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "corrupt, truncated" in err and "Traceback" not in err


def test_resumed_tensorboard_log_purges_what_came_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(_config(tmp_path, "tb", 6), progress=False)
    os.remove(run / "checkpoints" / "final.pt")  # as if killed after iteration 6, with iter_000006 kept
    os.remove(run / "checkpoints" / "iter_000006.pt")  # ... and back to the checkpoint of iteration 4
    resume(run, ["train.iterations=8"], progress=False)
    steps = [e.step for e in EventAccumulator(str(run)).Reload().Scalars("returns/post_adaptation")]
    assert steps == list(range(1, 9))
    assert [m["iteration"] for m in _lines(run)] == list(range(1, 9))


def test_resume_is_bit_identical_with_batched_mujoco_physics(tmp_path):
    settings = [
        "env.id=MetaRL/HalfCheetahVel-v0",
        "env.horizon=10",
        "inner.episodes_per_task=3",
        "outer.tasks_per_batch=3",
        "policy.hidden_sizes=[16]",
        "train.num_threads=1",
        f"train.logdir={tmp_path}",
    ]
    full = train(load_config(None, [*settings, "train.run_name=full", "train.iterations=4"]), progress=False)
    part = train(load_config(None, [*settings, "train.run_name=part", "train.iterations=2"]), progress=False)
    resume(part, ["train.iterations=4"], progress=False)
    assert _results(part) == _results(full)
    assert _same_parameters(part / "checkpoints" / "final.pt", full / "checkpoints" / "final.pt")


def _torch_zip_full_disk(obj, f, *args, **kwargs):
    """torch's zip writer on a full disk: a RuntimeError, not an OSError."""
    f.write(b"\0" * 64)
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 128")


def test_a_full_disk_in_torch_s_writer_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _torch_zip_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(CheckpointError, match="could not write checkpoint .*: the disk is full; no file was written"):
        save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"iteration": 1})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_full_disk_with_rare_checkpoints_resumes_from_best_pt(uninterrupted, tmp_path, monkeypatch, capsys):
    """No iter_*.pt yet (checkpoint_every 50) when the disk fills up: best.pt holds a whole state too."""
    real_save = torch.save
    writes = {"n": 0}

    def fails_from_the_third(obj, f, *args, **kwargs):
        writes["n"] += 1
        return _torch_zip_full_disk(obj, f) if writes["n"] >= 3 else real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fails_from_the_third)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    args = ["train", str(SMOKE), "--logdir", str(tmp_path), "--run-name", "r", "--no-progress", "--iterations", "30"]
    assert main([*args, "--set", "train.checkpoint_every=50", "--set", "train.num_threads=1"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    best = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")
    assert f"the newest saved state is the one after iteration {best['iteration']} (best.pt)" in err
    assert err.splitlines()[-1].startswith("metarl train: error: could not write checkpoint") and "Traceback" not in err
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-progress"]) == 0
    assert _results(tmp_path / "r") == _results(uninterrupted)  # nothing lost but the unsaved iterations


def test_killed_during_its_first_checkpoint_write_a_run_resumes_from_the_start(uninterrupted, tmp_path):
    """kill -9 while best.pt of iteration 1 is half-written: the temporary file goes, the run starts again."""
    script = (
        "import sys, time, torch\n"
        "real = torch.save\n"
        "def slow(obj, f, *a, **k):\n"
        "    f.write(b'partial'); f.flush(); time.sleep(600)\n"
        "torch.save = slow\n"
        "from metarl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["train", str(SMOKE), "--logdir", str(tmp_path), "--run-name", "r", "--no-progress", "--iterations", "30"]
    args += ["--set", "train.num_threads=1", "--set", "train.checkpoint_every=2"]
    process = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "r" / "checkpoints"
    deadline = time.monotonic() + 60
    while not list(checkpoints.glob(".best.pt.*.tmp")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not list(checkpoints.glob("*.pt"))  # nothing was saved
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-progress"]) == 0
    assert not list(checkpoints.glob(".*.tmp"))  # the stale temporary file is gone
    assert _results(tmp_path / "r") == _results(uninterrupted)


def test_a_checkpoint_of_another_run_in_the_run_directory_is_refused(uninterrupted, tmp_path, capsys):
    other = train(_config(tmp_path, "other", 31, "train.seed=5"), progress=False)  # newer, and not this run's
    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    shutil.copy(other / "checkpoints" / "final.pt", run / "checkpoints" / "last.pt")
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"'{run / 'checkpoints' / 'last.pt'}' belongs to another run" in err
    assert "train.seed: 5 there, 0 here" in err
    assert main(["train", "--resume", str(run), "--iterations", "40"]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert main(["evaluate", str(run / "checkpoints" / "last.pt"), "--out", str(tmp_path / "e")]) == 0  # by path


@pytest.mark.parametrize(
    "settings",
    [
        ["outer.algo=adam"],
        ["outer.algo=sgd", "outer.lr=0.01"],
        ["outer.algo=ppo", "outer.epochs=2"],
        ["outer.algo=promp", "outer.epochs=2", "outer.adaptive_kl=true", "outer.kl_coef=0.01"],
        ["inner.learn_lr=true"],
        ["outer.algo=promp", "outer.epochs=2", "inner.learn_lr=true", "inner.estimator=dice"],
    ],
    ids=["adam", "sgd", "ppo", "promp-adaptive", "trpo-meta-sgd", "promp-meta-sgd-dice"],
)
def test_resume_is_bit_identical_for_every_outer_algorithm(tmp_path, settings):
    """Each algorithm's own state (optimiser moments, penalty coefficients, learned step sizes) travels."""
    full = train(_config(tmp_path, "full", 4, *settings), progress=False)
    part = train(_config(tmp_path, "part", 2, *settings), progress=False)
    resume(part, ["train.iterations=4"], progress=False)
    assert _results(part) == _results(full)
    assert _same_parameters(part / "checkpoints" / "final.pt", full / "checkpoints" / "final.pt")
    a, b = load_checkpoint(part / "checkpoints" / "final.pt"), load_checkpoint(full / "checkpoints" / "final.pt")
    assert a["outer"].keys() == b["outer"].keys()
    if a["step_sizes"] is not None:
        assert all(torch.equal(a["step_sizes"][k], b["step_sizes"][k]) for k in a["step_sizes"])
