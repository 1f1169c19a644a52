"""The Ray backend (``env.backend: ray``): the local backend's episodes, actor faults, training and resume.

One local Ray instance with 2 CPUs serves the whole module (`ray_instance`); the two-node cluster
is in `test_ray_cluster.py`.
"""

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from gymnasium import spaces

import metarl
from metarl.backends import RaySampler, make_sampler
from metarl.config import load_config
from metarl.errors import ConfigError, NonFiniteError, WorkerError
from metarl.functional import parameters_of
from metarl.policies import make_policy
from metarl.sampler import Sampler
from metarl.tasks import sample_tasks

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("observations", "actions", "rewards", "mask", "log_probs")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def sample_both(config, tasks_count=5, per_task_params=False, seed=1, order=("local", "ray")):
    """One call of the local and of the Ray sampler (in `order`), each as (episodes, torch's
    generator state after the call, sampler)."""
    results = {}
    for backend in order:
        sampler = make_sampler(config_with(config, backend))
        try:
            torch.manual_seed(0)
            policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
            params = parameters_of(policy)
            tasks = sample_tasks(sampler.env, tasks_count, np.random.default_rng(seed))
            if per_task_params:  # adapted parameters: one set per task
                torch.manual_seed(5)
                params = {k: v.detach() + 0.1 * torch.randn(tasks_count, *v.shape) for k, v in params.items()}
            torch.manual_seed(seed)
            episodes = sampler.sample(policy, params, tasks)
            results[backend] = (episodes, torch.get_rng_state(), sampler)
            if isinstance(sampler, RaySampler):  # where the actors ran, before close() lets them go
                sampler.used_nodes = sampler.actor_nodes()
                sampler.used_pids = [sampler._resolve_where(i)[2] for i in range(sampler.num_actors)]
        finally:
            sampler.close()
    return results["local"], results["ray"]


def config_with(config, backend):
    """`config` on `backend`; the local reference steps its environments in this process
    (``env.workers=1``: the same episodes as with worker processes, `tests/test_workers.py`)."""
    settings = [f"env.backend={backend}"] + (["env.workers=1"] if backend == "local" else [])
    return metarl.config.config_from_dict(config.to_dict(), settings)


def assert_identical(a, b):
    for field in FIELDS:
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert (a.metrics or {}).keys() == (b.metrics or {}).keys()
    for key in a.metrics or {}:
        assert torch.equal(a.metrics[key], b.metrics[key])


@pytest.mark.parametrize(
    "settings, per_task_params",
    [
        (["env.workers=2"], False),  # θ shared by the tasks, two actors
        (["env.workers=1", "env.max_copies=8"], True),  # adapted parameters, rounds of 2 tasks in the actor
    ],
)
def test_ray_episodes_are_the_local_backend_s_bit_for_bit(settings, per_task_params):
    config = load_config("experiments/smoke.yaml", settings)
    (local, local_rng, _), (remote, remote_rng, sampler) = sample_both(config, per_task_params=per_task_params)
    assert_identical(local, remote)
    assert torch.equal(local_rng, remote_rng)  # the learner's generator goes on as after a local call
    assert isinstance(sampler, RaySampler) and sampler.num_actors == int(settings[0].split("=")[1])
    stats = sampler.statistics()
    assert stats["sampler/bytes_received"] >= sum(getattr(remote, f).numel() * 4 for f in FIELDS)
    assert stats["sampler/actor_restarts"] == 0


def test_a_closed_sampler_s_actors_serve_the_next_one_with_its_own_settings():
    # Evaluation after training, or one sampler after another in a script: no new actor processes.
    first = sample_both(load_config("experiments/smoke.yaml", ["env.workers=2"]))[1][2]
    config = load_config("experiments/smoke.yaml", ["env.workers=2", "env.horizon=7", "inner.episodes_per_task=3"])
    (local, _, _), (remote, _, second) = sample_both(config, tasks_count=4)
    assert_identical(local, remote)  # the second sampler's environments, not the first's
    assert remote.observations.shape[1:3] == (3, 7)
    assert sorted(second.used_pids) == sorted(first.used_pids)


def test_a_batched_physics_family_gives_the_same_episodes_on_ray():
    config = load_config(
        "experiments/halfcheetah_vel_quick.yaml",
        ["env.horizon=10", "inner.episodes_per_task=2", "policy.hidden_sizes=[8]", "env.workers=2"],
    )
    (local, _, _), (remote, _, _) = sample_both(config, tasks_count=3)
    assert_identical(local, remote)


def test_training_on_ray_logs_the_local_backend_s_metrics(tmp_path):
    # The evaluations include an oracle, which has a sampler of its own: on Ray, the same actors.
    oracle_config = load_config("experiments/smoke.yaml", ["train.algo=oracle", f"train.logdir={tmp_path}"])
    baselines = ["random", f"oracle={metarl.train(oracle_config, progress=False)}"]
    runs, evaluations = {}, {}
    for backend, workers in (("local", 1), ("ray", 2)):  # in this process, and on two actors
        config = load_config(
            "experiments/smoke.yaml",
            [
                f"env.backend={backend}",
                f"env.workers={workers}",
                f"train.logdir={tmp_path}",
                f"train.run_name={backend}",
            ],
        )
        run = metarl.train(config, progress=False)
        runs[backend] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        metarl.evaluate(run, baselines=baselines)  # on the run's backend: 2 Ray actors, all the CPUs
        evaluations[backend] = json.loads((run / "eval" / "eval.json").read_text())
    assert evaluations["local"]["per_task"] == evaluations["ray"]["per_task"]
    assert len(runs["ray"]) == 3
    for local, remote in zip(runs["local"], runs["ray"], strict=True):
        assert remote["sampler/actor_restarts"] == 0 and remote["sampler/bytes_sent"] > 0
        same = {k: v for k, v in local.items() if not k.startswith(("time/", "sampler/"))}
        assert same == {k: remote[k] for k in same}


class DiesOnResets(gym.Env):
    """A 2-D task distribution whose process exits (``os._exit``) on the resets numbered
    ``die_from <= n < die_until``, counted across processes in the file `counter`; or, with `fault`,
    hangs (``"hang"``) or observes NaN (``"nan"``) there; ``"slow"`` takes `delay` seconds per step."""

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, counter: str, die_from: int, die_until: int, fault: str = "exit", delay: float = 0.4) -> None:
        self.counter, self.die_from, self.die_until, self.fault = counter, die_from, die_until, fault
        self.delay = delay
        self.task, self._position = 0.0, np.zeros(2, np.float32)

    def sample_tasks(self, n, rng):
        return [float(x) for x in rng.uniform(-1, 1, n)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        with open(self.counter, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            count = len(file.read())
            file.write(".")
        self._position = self.np_random.normal(size=2).astype(np.float32)
        if self.die_from <= count < self.die_until:
            if self.fault == "exit":
                os._exit(1)
            if self.fault == "hang":
                time.sleep(600)
            self._position[:] = np.nan
        return self._position.copy(), {}

    def step(self, action):
        if self.fault == "slow":
            time.sleep(self.delay)
        self._position = self._position + np.clip(action, -1, 1).astype(np.float32)
        return self._position.copy(), -float(abs(self._position[0] - self.task)), False, False, {}


@contextlib.contextmanager
def sampler_and_tasks(config):
    """The config's sampler with a policy and 2 tasks; its actors are stopped afterwards."""
    sampler = make_sampler(config)
    try:
        policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
        yield sampler, policy, sample_tasks(sampler.env, 2, np.random.default_rng(0))
    finally:
        sampler.close()


def dying_config(tmp_path, die_from, die_until, *settings, fault="exit", delay=0.4):
    kwargs = {"counter": str(tmp_path / "resets"), "die_from": die_from, "die_until": die_until}
    kwargs |= {"fault": fault, "delay": delay}
    return load_config(
        "experiments/smoke.yaml",
        [
            "env.id=tests.test_ray:DiesOnResets",
            "env.horizon=5",
            f"env.kwargs={json.dumps(kwargs)}",
            "env.backend=ray",
            f"train.logdir={tmp_path}",
            *settings,
        ],
    )


def test_an_actor_that_dies_mid_call_is_recreated_and_its_tasks_sampled_again(tmp_path, caplog):
    config = dying_config(tmp_path, 0, 1, "env.workers=2")  # the very first reset kills its actor
    # Ray first: the local sampler's resets come after the fatal one
    (local, local_rng, _), (remote, remote_rng, sampler) = sample_both(config, order=("ray", "local"))
    assert sampler.actor_restarts == 1
    assert_identical(local, remote)  # the episodes of a call without the fault
    assert torch.equal(local_rng, remote_rng)
    assert any("died" in r.message and "re-created it and sampled its tasks" in r.message for r in caplog.records)


def test_an_actor_that_keeps_dying_stops_the_run_with_last_pt_and_resume_continues(tmp_path, monkeypatch):
    # One re-creation allowed here (3 by default). One actor, 12 copies per call, 2 calls per
    # iteration: resets 0-23 are iteration 1; reset 30 (in iteration 2) kills the actor, and so does
    # the first reset of its re-creation (31).
    monkeypatch.setattr(metarl.backends, "MAX_RESTARTS", 1)
    config = dying_config(tmp_path, 30, 32, "env.workers=1", "train.checkpoint_every=1", "train.run_name=r")
    with pytest.raises(WorkerError, match=r"Ray actor 0 \(pid \d+ on node .*\) died .*2 times on the same tasks"):
        metarl.train(config, progress=False)
    run = Path(tmp_path) / "r"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
    metarl.resume(run, trust_modules=["tests.test_ray"])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]


def test_ctrl_c_while_waiting_for_actors_stops_them_and_keeps_last_pt(tmp_path):
    # Reset 30 (iteration 2) hangs in its actor; SIGINT reaches the training process while it waits.
    config = dying_config(tmp_path, 30, 31, "env.workers=1", "env.worker_timeout=120", "train.run_name=r", fault="hang")
    counter = Path(tmp_path) / "resets"

    def interrupt_when_hanging():
        while not counter.exists() or len(counter.read_text()) <= 30:
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_hanging, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        metarl.train(config, progress=False)
    assert time.monotonic() - start < 60  # not the 120 s timeout: Ctrl-C interrupts the wait
    assert torch.load(Path(tmp_path) / "r" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
    metarl.backends.stop_idle_actors()  # those of earlier tests, kept for the next sampler
    deadline = time.monotonic() + 20  # the hanging actor is killed: its CPU returns to the cluster
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_an_actor_that_hangs_is_an_error_within_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(metarl.backends, "CLUSTER_CHECK_S", 0.5)  # how often the learner asks (2 s by default)
    config = dying_config(tmp_path, 0, 1, "env.workers=1", "env.worker_timeout=1", fault="hang")
    with sampler_and_tasks(config) as (sampler, policy, tasks):
        start = time.monotonic()
        with pytest.raises(
            WorkerError,
            match=r"Ray actor 0 \(pid \d+ .*\) has been resetting for \d+ s \(env.worker_timeout allows 1 s\)",
        ):
            sampler.sample(policy, parameters_of(policy), tasks)
        assert time.monotonic() - start < 60  # actor start-up (a few seconds) + the timeout, not the hang


def test_an_actor_the_cluster_has_no_cpu_for_is_an_error_within_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(metarl.backends, "CLUSTER_CHECK_S", 0.3)
    monkeypatch.setattr(metarl.backends, "ACTOR_START_S", 1.0)  # 2 minutes by default
    metarl.backends.stop_idle_actors()
    holder = ray.remote(num_cpus=2)(type("Holder", (), {"ping": lambda self: 1})).remote()  # every CPU
    try:
        ray.get(holder.ping.remote())
        config = dying_config(tmp_path, -1, -1, "env.workers=1")
        with sampler_and_tasks(config) as (sampler, policy, tasks):
            start = time.monotonic()
            with pytest.raises(
                WorkerError, match=r"Ray actor 0 has not started in \d+ s: 0 of 2 CPUs .* are free, the others held"
            ):
                sampler.sample(policy, parameters_of(policy), tasks)
            assert time.monotonic() - start < 10
    finally:
        ray.kill(holder)


def test_a_call_longer_than_the_timeout_is_fine_while_its_environments_step(tmp_path, monkeypatch):
    # 2 copies at 0.1 s per step, 8 steps: the call takes ~1.6 s, each step 0.2 s (timeout: 0.5 s),
    # and the learner asks every 0.3 s.
    monkeypatch.setattr(metarl.backends, "CLUSTER_CHECK_S", 0.3)
    settings = "env.workers=1", "env.worker_timeout=0.5", "env.horizon=8", "inner.episodes_per_task=1"
    config = dying_config(tmp_path, -1, -1, *settings, fault="slow", delay=0.1)
    with sampler_and_tasks(config) as (sampler, policy, tasks):
        start = time.monotonic()
        episodes = sampler.sample(policy, parameters_of(policy), tasks)
        assert time.monotonic() - start > 1.5  # checked for progress several times on the way
        assert episodes.rewards.shape[:3] == (2, 1, 8)


def test_a_lost_cluster_stops_sampling_within_seconds_naming_it(tmp_path):
    # The actor hangs; while the learner waits, the cluster's head stops answering (its address
    # now points where nothing listens): a WorkerError naming the cluster, long before the timeout.
    config = dying_config(tmp_path, 0, 1, "env.workers=1", "env.worker_timeout=120", fault="hang")
    with sampler_and_tasks(config) as (sampler, policy, tasks):
        sampler.check_cluster()  # the real head answers
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            gone = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: connections are refused
            threading.Timer(1.0, setattr, (sampler, "_gcs_address", gone)).start()
            start = time.monotonic()
            with pytest.raises(
                WorkerError,
                match=rf"lost the Ray instance this process is connected to: its head \({gone}\) no longer answers",
            ):
                sampler.sample(policy, parameters_of(policy), tasks)
        assert time.monotonic() - start < 30  # actor start-up and a check every 2 s, not the 120 s timeout


def test_an_environment_error_in_an_actor_is_the_local_one_line_error(tmp_path):
    config = dying_config(tmp_path, 0, 1, "env.workers=1", fault="nan")
    with sampler_and_tasks(config) as (sampler, policy, tasks):
        with pytest.raises(NonFiniteError, match=r"the environment returned non-finite observations \(copy 0, task"):
            sampler.sample(policy, parameters_of(policy), tasks)


def test_the_sampler_refuses_a_cluster_it_cannot_reach_in_seconds():
    config = load_config("experiments/smoke.yaml", ["env.backend=ray", "env.ray_address=127.0.0.1:1"])
    with pytest.raises(WorkerError, match="could not connect to the Ray cluster at '127.0.0.1:1'.*ray start --head"):
        RaySampler.from_config(config)


def test_more_actors_than_the_cluster_has_cpus_are_refused():
    with pytest.raises(ConfigError, match=r"env.workers=3 Ray actors need a CPU each, but .* has 2: set env.workers"):
        RaySampler.from_config(load_config("experiments/smoke.yaml", ["env.backend=ray", "env.workers=3"]))


def test_a_stored_ray_address_is_never_used():
    data = load_config("experiments/smoke.yaml", ["env.backend=ray", "env.ray_address=evil.example:6379"]).to_dict()
    assert metarl.config.stored_config(data).env.ray_address is None
    assert metarl.config.stored_config(data, ["env.ray_address=head:6379"]).env.ray_address == "head:6379"


def test_local_sampler_is_the_default():
    sampler = make_sampler(load_config("experiments/smoke.yaml"))
    try:
        assert type(sampler) is Sampler and sampler.statistics() == {}
    finally:
        sampler.close()


def script(name):
    """A script of `scripts/` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module, monkeypatch, capsys, *args):
    """`module.main()` with command-line `args`; its printed output."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *args])
    module.main()
    return capsys.readouterr().out


def test_the_benchmark_compares_the_backends_and_the_estimate_scales_them(tmp_path, monkeypatch, capsys):
    # In this process (the script runs each backend in a fresh one), on this module's Ray instance.
    benchmark, out = script("benchmark"), tmp_path / "backends.json"
    monkeypatch.setattr(benchmark, "in_child_process", lambda func, *args: func(*args))
    threads = torch.get_num_threads()
    try:
        smoke = str(ROOT / "experiments" / "smoke.yaml")
        stdout = run_main(benchmark, monkeypatch, capsys, smoke, "--backends", "--iterations", "2", "--out", str(out))
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["backends"]["ray"]["median"]["env_steps"] == result["backends"]["local"]["median"]["env_steps"] == 480
    assert result["ray_per_iteration"]["bytes_received"] >= 480 * (2 + 2 + 1 + 1 + 1) * 4  # obs, actions, ...
    assert result["ray_per_iteration"]["bytes_sent"] > 0 and result["ray_over_local"] > 0
    assert "ray / local" in stdout
    scaling = tmp_path / "scaling.json"
    estimate = run_main(
        script("scaling_estimate"), monkeypatch, capsys, str(out), "--nodes", "1", "2", "--out", str(scaling)
    )
    rows = json.loads(scaling.read_text())[0]["estimates"]
    assert [r["actors"] for r in rows] == [2, 4]
    assert rows[1]["sampling_s"] < rows[0]["sampling_s"]  # 3 tasks: 2 per actor on 2 actors, 1 on 4
    assert "| experiments" in estimate or "smoke.yaml" in estimate


def test_the_benchmark_times_the_sampler_on_ray_actors():
    benchmark = script("benchmark")
    config = load_config("experiments/smoke.yaml", ["env.max_copies=8"])
    result = benchmark.sampler_rate(config.to_dict(), 2, "ray")
    assert result["env_steps"] == 3 * 4 * 20  # the smoke config's tasks x episodes x horizon, one call
    assert result["env_copies"] == 8 + 4  # 2 tasks (8 copies) on one actor, 1 task on the other
    assert result["env_steps_per_s"] > 0 and result["workers_peak_rss_mib"] > 0  # the actors' memory
