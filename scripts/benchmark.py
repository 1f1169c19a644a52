"""Where the time of a meta-iteration goes, against the limits of the machine, measured in one run.

    python scripts/benchmark.py experiments/halfcheetah_vel.yaml [--iterations 4] [--out bench.json]

For the config's task family and sizes it measures, one after another in this process (or in a
fresh child process where noted):

- limits: raw MuJoCo physics (``mj_step`` × frame skip, one thread; ``mujoco.rollout`` over all
  cores) and raw ``env.step`` of the Gymnasium env with random actions (one process; one process
  per core, run at the same time; for a family stepped in worker processes, also one process per
  core stepping in turn as many copies as each worker holds, which the CPU's caches do not keep);
- metarl's sampler: env steps/s while collecting one meta-batch (tasks × episodes × horizon),
  policy forward included, with 1 worker and with one per core (physics threads for the natively
  batched families, worker processes for the others);
- a meta-iteration of training (in a fresh child process, so that its peak memory is its own):
  wall time split into sampling, advantages (baseline fits and GAE), inner adaptation, the outer
  step (for TRPO: meta-gradient, conjugate gradient with its Hessian-vector products, line search)
  and logging; medians over the iterations after the first;
- peak memory (RSS) of that training process, and of each sampler run with its worker processes;
- where ``env.step``'s time goes: MuJoCo's C calls against the environment's Python.

It prints a table with the ratios sampler / limits and each phase's share, and writes JSON. A
benchmark, not a test: the machine's load moves the numbers, so compare ratios taken in one run;
``--rounds N`` then measures the sampler N more times, each between two measurements of the
all-cores limits, and reports each round's ratio to the mean of the limits on either side of it
(a drift of the host's speed falls on both) and their median.

    python scripts/benchmark.py experiments/navigation_2d.yaml --algorithms trpo,promp,ppo

times each outer algorithm's meta-iteration, split into phases, in fresh processes one after the
other (the ratios to the first are the comparison).

    python scripts/benchmark.py experiments/halfcheetah_vel_quick.yaml --backends

times the same meta-iterations on the local backend and on Ray actors (``env.backend: ray``, one
per core, a local Ray instance or ``RAY_ADDRESS``), with the bytes Ray moves and its overhead.

    python scripts/benchmark.py experiments/navigation_2d.yaml --side-by-side [--iterations 8]

measures instead how runs share the machine: ``metarl train`` alone, then two copies started
together (as a researcher runs two seeds), with metarl's setting of idle OpenMP threads (they
sleep, ``OMP_WAIT_POLICY=PASSIVE``), with a short spin before sleeping (``GOMP_SPINCOUNT=10000``)
and with spinning threads (``OMP_WAIT_POLICY=ACTIVE``); seconds per iteration (median after the
first) and the slowdown of each run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.backends import RaySampler, make_sampler
from metarl.config import Config, config_from_dict, load_config
from metarl.functional import parameters_of
from metarl.make import make_env
from metarl.policies import make_policy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits, ensure_registered
from metarl.workers import contiguous_slices

CORES = os.cpu_count() or 1
# One curvature product of the trust region, computed these ways (`adaptation_curvature` arguments).
PRODUCTS = {
    "r_operator": {"backend": "auto"},
    "autograd": {"backend": "autograd"},
    "r_operator_bfloat16": {"backend": "auto", "precision": "bfloat16"},
}
PHASES = (
    "sample_s",
    "advantages_s",
    "adapt_s",
    "meta_gradient_s",
    "conjugate_gradient_s",
    "line_search_s",
    "outer_other_s",
    "log_s",
)


def physics_rates(config: Config, copies: int, steps: int = 200) -> dict[str, float] | None:
    """Env steps/s of bare MuJoCo physics (frame skip included): one thread, and all cores."""
    env = make_env(config.env.id, config.env.kwargs).unwrapped
    if not hasattr(env, "model") or not hasattr(env, "frame_skip"):
        return None
    import mujoco
    from mujoco import rollout

    model, frame_skip = env.model, env.frame_skip
    env.reset(seed=0)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, env.data, state, spec)
    rng = np.random.default_rng(0)
    low, high = model.actuator_ctrlrange.T

    data = mujoco.MjData(model)
    controls = rng.uniform(low, high, size=(steps * 10, model.nu))
    mujoco.mj_setState(model, data, state, spec)
    start = time.perf_counter()
    for control in controls:
        data.ctrl[:] = control
        mujoco.mj_step(model, data, nstep=frame_skip)
    one_thread = len(controls) / (time.perf_counter() - start)

    states = np.tile(state, (copies, 1))
    threads = [mujoco.MjData(model) for _ in range(CORES)]
    control = rng.uniform(low, high, size=(copies, 1, model.nu))
    rollout.rollout(model, threads, states, control, nstep=frame_skip, persistent_pool=True)  # start the pool
    start = time.perf_counter()
    for _ in range(steps):
        states, _ = rollout.rollout(model, threads, states, control, nstep=frame_skip, persistent_pool=True)
        states = states[:, -1]
    all_cores = copies * steps / (time.perf_counter() - start)
    env.close()
    return {"physics_1_thread": one_thread, "physics_all_cores": all_cores}


def matmul_rates(config: Config, repeats: int = 20) -> dict[str, float]:
    """GFLOP/s of the matrix product that dominates the curvature products: every task's hidden
    activations ``[steps per task, hidden]`` times its own ``[hidden, hidden]`` weight, in float32
    and bfloat16 (fast only where the CPU has bfloat16 units)."""
    sizes = config.policy.hidden_sizes
    rows = config.outer.tasks_per_batch, config.inner.episodes_per_task * (config.env.horizon or 100)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(*rows, sizes[0], dtype=dtype)
        b = torch.randn(rows[0], sizes[0], sizes[-1], dtype=dtype)
        torch.bmm(a, b)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.bmm(a, b)
        seconds = (time.perf_counter() - start) / repeats
        rates[f"matmul_gflops_{str(dtype).removeprefix('torch.')}"] = 2 * a.numel() * sizes[-1] / seconds / 1e9
    return rates


def env_step_rate(env_id: str, kwargs: dict[str, Any], steps: int, seed: int = 0, copies: int = 1) -> float:
    """Env steps/s of Gymnasium environments with random actions, resets included: one copy, or
    `copies` copies stepped in turn (as a sampler steps its copies, each out of the CPU's caches
    by the time its turn comes again)."""
    envs = [make_env(env_id, kwargs) for _ in range(copies)]
    envs[0].action_space.seed(seed)
    for env in envs:
        env.reset(seed=seed)
    actions = [envs[0].action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for i, action in enumerate(actions):
        env = envs[i % copies]
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    for env in envs:
        env.close()
    return rate


def env_step_rates(config: Config, steps: int, copies: int = 1) -> dict[str, float]:
    """``env.step`` rate of one process, and the summed rate of one process per core at once; with
    ``copies > 1`` also the summed rate of one process per core stepping that many copies each."""
    one = env_step_rate(config.env.id, config.env.kwargs, steps)
    with mp.get_context("spawn").Pool(CORES) as pool:
        jobs = [(config.env.id, config.env.kwargs, steps, seed) for seed in range(CORES)]
        rates = {"env_step_1_process": one, "env_step_all_cores": sum(pool.starmap(env_step_rate, jobs))}
        if copies > 1:
            many = pool.starmap(env_step_rate, [(*job, copies) for job in jobs])
            rates[f"env_step_all_cores_{copies}_copies_each"] = sum(many)
    return rates


def copies_per_worker(config: Config) -> int:
    """How many environment copies each of one-per-core worker processes steps for the config's
    meta-batch (the sampler's rounds of at most `max_copies`), for a family stepped in worker
    processes; 1 for a natively batched family (its copies are not separate Gymnasium environments)."""
    ensure_registered(config.env.id)
    spec = gym.registry.get(config.env.id)
    if spec is None or spec.vector_entry_point is not None:
        return 1
    sampler = Sampler.from_config(config)
    try:
        tasks = min(sampler.tasks_per_round() or config.outer.tasks_per_batch, config.outer.tasks_per_batch)
        return -(-tasks * sampler.copies_per_task // CORES)
    finally:
        sampler.close()


def sampler_rate(
    config_dict: dict[str, Any],
    workers: int,
    backend: str = "local",
    step_in_parent: bool = True,
    free_running: bool = True,
) -> dict[str, float]:
    """Env steps/s of metarl's sampler collecting one meta-batch of the config (second call timed),
    and the peak memory of the process and its worker processes or Ray actors (run it in a fresh
    process). `step_in_parent`, `free_running`: ``env.step_in_parent``, ``env.free_running``."""
    config = config_from_dict(config_dict)
    torch.manual_seed(0)
    overrides = [
        f"env.workers={workers}",
        f"env.backend={backend}",
        f"env.step_in_parent={step_in_parent}",
        f"env.free_running={free_running}",
    ]
    sampler = make_sampler(config_from_dict(config.to_dict(), overrides))
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
    tasks = TaskSplits(sampler.env, 0, 1, 1).sample_train(config.outer.tasks_per_batch)
    params = parameters_of(policy)
    sampler.sample(policy, params, tasks)  # builds the environments (and starts workers)
    start = time.perf_counter()
    episodes = sampler.sample(policy, params, tasks)
    elapsed = time.perf_counter() - start
    worker_pids = [pid for envs in sampler._vector_envs.values() for pid in getattr(envs, "worker_pids", ())]
    if isinstance(sampler, RaySampler):  # actors on this machine (a local Ray instance)
        worker_pids = [where[2] for where in map(sampler._resolve_where, range(sampler.num_actors)) if where]
    memory = {"peak_rss_mib": _peak_rss_mib(os.getpid()), "workers_peak_rss_mib": sum(map(_peak_rss_mib, worker_pids))}
    if isinstance(sampler, RaySampler):  # the actors' copies together, each at most max_copies
        slices = contiguous_slices(len(tasks), workers)
        copies = sum(min(n, sampler.max_copies or n) for n in ((b - a) * sampler.episodes_per_task for a, b in slices))
    else:
        copies = max(envs.num_envs for envs in sampler._vector_envs.values())
    sampler.close()
    return {
        "env_steps_per_s": episodes.num_steps / elapsed,
        "env_steps": episodes.num_steps,
        "seconds": elapsed,
        "env_copies": copies,
        **memory,
        "total_peak_rss_mib": memory["peak_rss_mib"] + memory["workers_peak_rss_mib"],
    }


def _peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM, Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# MuJoCo's C entry points that Gymnasium's and Meta-World's environments call to advance physics.
MUJOCO_CALLS = ("mj_step", "mj_step1", "mj_step2", "mj_forward", "mj_rnePostConstraint")


def step_profile(config: Config, steps: int) -> dict[str, float]:
    """Where one process's ``env.step`` time goes: MuJoCo's C calls (physics) against everything
    else (the environment's Python: observations, reward, bookkeeping), with random actions on one
    training task of the config, resets included."""
    import mujoco

    spent = [0.0]

    def timed(call: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return wrapper

    originals = {name: getattr(mujoco, name) for name in MUJOCO_CALLS}
    env = make_env(config.env.id, config.env.kwargs, config.env.horizon)
    try:
        for name, call in originals.items():
            setattr(mujoco, name, timed(call))
        env.set_wrapper_attr("task", TaskSplits(env, 0, 1, 1).sample_train(1)[0])
        env.action_space.seed(0)
        actions = [env.action_space.sample() for _ in range(steps)]
        env.reset(seed=0)
        spent[0] = 0.0
        start = time.perf_counter()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        total = time.perf_counter() - start
    finally:
        for name, call in originals.items():
            setattr(mujoco, name, call)
        env.close()
    return {"env_steps_per_s": steps / total, "physics_share": spent[0] / total, "python_share": 1 - spent[0] / total}


def meta_iterations(config_dict: dict[str, Any], iterations: int, products: bool = True) -> dict[str, Any]:
    """Run `iterations` meta-iterations with `metarl.train`'s own iteration; per-phase seconds and peak RSS."""
    from metarl.curvature import supports_fast_curvature
    from metarl.logger import RunLogger
    from metarl.outer.trpo import adaptation_curvature
    from metarl.training import build_training, training_iteration, with_threads_resolved

    config = with_threads_resolved(config_from_dict(config_dict))
    torch.set_num_threads(config.train.num_threads)
    state = build_training(config)
    records = []
    with tempfile.TemporaryDirectory() as run_dir:
        logger = RunLogger(Path(run_dir), config.to_dict(), iterations, progress=False)
        for iteration in range(1, iterations + 1):
            start = time.perf_counter()
            batch, metrics = training_iteration(state)
            outer_end = time.perf_counter()
            logger.log(iteration, metrics)
            end = time.perf_counter()
            record = {k.removeprefix("time/"): v for k, v in metrics.items() if k.startswith("time/")}
            record.update({k: v for k, v in metrics.items() if k.startswith("sampler/")})  # Ray's counters
            record.pop("env_steps_per_s", None)
            known = sum(record.get(k, 0.0) for k in ("meta_gradient_s", "conjugate_gradient_s", "line_search_s"))
            record["outer_other_s"] = record["outer_s"] - known
            record["log_s"] = end - outer_end
            record["iteration_s"] = end - start
            record["env_steps"] = float(sum(e.num_steps for e in (*batch.inner, batch.outer)))
            records.append(record)
        logger.close()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the comparison below
    worker_pids = [pid for envs in state.sampler._vector_envs.values() for pid in getattr(envs, "worker_pids", ())]
    kept = records[1:] or records  # the first iteration builds the environments
    medians = {key: statistics.median(r.get(key, 0.0) for r in kept) for key in records[0]}
    result = {
        "iterations": iterations,
        "median": medians,
        "per_iteration": records,
        "peak_rss_mib": peak_rss_mib,  # the training process
        "workers_peak_rss_mib": sum(map(_peak_rss_mib, worker_pids)),  # its worker processes
    }
    if not products:
        state.sampler.close()
        return result
    # The curvature product of each CG iteration, each way on the last batch (interleaved, best of 3).
    policy = state.policy
    v = torch.randn(sum(p.numel() for p in policy.parameters()))
    ways = PRODUCTS if supports_fast_curvature(policy) else {"autograd": PRODUCTS["autograd"]}
    products = {
        name: adaptation_curvature(policy, batch, state.inner, **kwargs).kl_hessian_product(1e-5)
        for name, kwargs in ways.items()
    }
    seconds: dict[str, list[float]] = {name: [] for name in products}
    for _ in range(4):
        for name, product in products.items():
            start = time.perf_counter()
            product(v)
            seconds[name].append(time.perf_counter() - start)
    state.sampler.close()
    return {
        **result,
        "curvature_product_s": {name: min(t[1:]) for name, t in seconds.items()},
        "torch_threads": torch.get_num_threads(),
    }


def _run_and_save(path: str, func: Any, args: tuple) -> None:
    Path(path).write_text(json.dumps(func(*args)))


def in_child_process(func: Any, *args: Any) -> Any:
    """``func(*args)`` (JSON-serialisable result) in a fresh spawned process, which, unlike a pool's
    daemonic workers, may start environment worker processes of its own."""
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "result.json")
        child = mp.get_context("spawn").Process(target=_run_and_save, args=(path, func, args))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the benchmark's child process failed (exit code {child.exitcode})")
        return json.loads(Path(path).read_text())


# How idle OpenMP threads wait, as `--side-by-side` compares them: metarl's default (sleep, see
# metarl/__init__.py), a short spin before sleeping (GNU OpenMP's spin count), spinning.
WAIT_POLICIES = {
    "PASSIVE": ("metarl (idle threads sleep)", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "SPIN_10000": ("spin 10,000 turns, sleep", {"GOMP_SPINCOUNT": "10000"}),
    "ACTIVE": ("idle threads spin", {"OMP_WAIT_POLICY": "ACTIVE"}),
}


def train_side_by_side(
    config: str, overrides: list[str], iterations: int, copies: int, wait: dict[str, str]
) -> list[float]:
    """Median seconds per iteration (after the first) of `copies` ``metarl train`` processes started together."""
    with tempfile.TemporaryDirectory() as logdir:
        command = [sys.executable, "-m", "metarl", "train", config, "--logdir", logdir, "--no-progress"]
        command += ["--iterations", str(iterations), "--set", f"train.checkpoint_every={iterations + 1}"]
        command += [x for o in overrides for x in ("--set", o)]
        environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        environment.update(wait)
        processes = [
            subprocess.Popen([*command, "--run-name", f"run{i}"], env=environment, stdout=subprocess.DEVNULL)
            for i in range(copies)
        ]
        if any(process.wait() for process in processes):
            raise RuntimeError(f"a training run failed: {' '.join(command)}")
        medians = []
        for i in range(copies):
            lines = (Path(logdir) / f"run{i}" / "metrics.jsonl").read_text().splitlines()
            seconds = [json.loads(line)["time/iteration_s"] for line in lines][1:]
            medians.append(statistics.median(seconds))
        return medians


def side_by_side(args: argparse.Namespace) -> None:
    """One training alone and two at once, for each way idle OpenMP threads may wait."""
    print(f"{args.config}: metarl train alone and two at once, {args.iterations} iterations, {CORES} cores")
    result: dict[str, Any] = {"config": args.config, "overrides": args.set, "cores": CORES, "runs": {}}
    for policy, (label, wait) in WAIT_POLICIES.items():
        alone = train_side_by_side(args.config, args.set, args.iterations, 1, wait)[0]
        pair = train_side_by_side(args.config, args.set, args.iterations, 2, wait)
        result["runs"][policy] = {"alone_s": alone, "two_at_once_s": pair, "slowdown": [t / alone for t in pair]}
        print(
            f"  {label:<28} alone {alone:6.2f} s/it   two at once {pair[0]:6.2f}, {pair[1]:6.2f} s/it   "
            f"slowdown {max(pair) / alone:.2f}x"
        )
    runs = result["runs"]
    result["single_run_over_spinning"] = {p: runs[p]["alone_s"] / runs["ACTIVE"]["alone_s"] for p in runs}
    print(
        "  one run alone, over spinning idle threads: "
        + ", ".join(f"{p} {r:.2f}" for p, r in result["single_run_over_spinning"].items())
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"\nwritten to {args.out}")


def compare_algorithms(args: argparse.Namespace) -> None:
    """Each outer algorithm's meta-iteration on the config's sizes, one fresh process each, one after another."""
    names = args.algorithms.split(",")
    results = {}
    for name in names:  # "promp" or "promp+outer.precision=bfloat16": an algorithm and settings of its own
        algo, *settings = name.split("+")
        config = load_config(args.config, [*args.set, f"outer.algo={algo}", *settings])
        results[name] = in_child_process(meta_iterations, config.to_dict(), args.iterations, False)
    first = names[0]
    waiting = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    print(f"{args.config}: meta-iteration by outer algorithm, median of {max(args.iterations - 1, 1)} (seconds)")
    print("  idle OpenMP threads: " + " ".join(f"{k}={v}" for k, v in waiting.items()))
    width = max(12, *(len(n) + 2 for n in names))
    print(f"  {'phase':<22}" + "".join(f"{n:>{width}}" for n in names))
    for phase in ("iteration_s", "sample_s", "advantages_s", "adapt_s", "outer_s", *PHASES[3:6], "log_s"):
        row = [results[n]["median"].get(phase, 0.0) for n in names]
        print(f"  {phase.removesuffix('_s'):<22}" + "".join(f"{v:>{width}.3f}" for v in row))
    ratios = {n: results[n]["median"]["iteration_s"] / results[first]["median"]["iteration_s"] for n in names}
    print("  iteration / " + first + ": " + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"config": args.config, "overrides": args.set, "cores": CORES, "openmp_waiting": waiting}
        summary["algorithms"] = results
        args.out.write_text(json.dumps({**summary, "ratios_to_first": ratios}, indent=1))
        print(f"\nwritten to {args.out}")


def compare_backends(args: argparse.Namespace) -> None:
    """The same meta-iterations on the local backend and on Ray actors, one fresh process each."""
    results = {}
    for backend in ("local", "ray"):
        config = load_config(args.config, [*args.set, f"env.backend={backend}", f"env.workers={CORES}"])
        results[backend] = in_child_process(meta_iterations, config.to_dict(), args.iterations, False)
    print(f"{args.config}: local backend against {CORES} Ray actors, median of {max(args.iterations - 1, 1)} (s)")
    for phase in ("iteration_s", "sample_s", "outer_s"):
        local, ray = (results[b]["median"][phase] for b in ("local", "ray"))
        print(f"  {phase.removesuffix('_s'):<12} local {local:8.3f}   ray {ray:8.3f}   ray / local {ray / local:.2f}")
    # Ray's counters are totals since the start: per iteration, the differences after the first.
    records = results["ray"]["per_iteration"]
    per_iteration = (
        {
            key.removeprefix("sampler/"): statistics.median(
                b[key] - a[key] for a, b in zip(records, records[1:], strict=False)
            )
            for key in ("sampler/bytes_sent", "sampler/bytes_received", "sampler/ray_overhead_s")
        }
        if len(records) > 1
        else {}
    )
    ratio = results["ray"]["median"]["iteration_s"] / results["local"]["median"]["iteration_s"]
    print(
        f"  per iteration on Ray: {per_iteration.get('bytes_sent', 0) / 1e6:.2f} MB sent, "
        f"{per_iteration.get('bytes_received', 0) / 1e6:.2f} MB received, "
        f"{per_iteration.get('ray_overhead_s', 0):.3f} s beyond the actors' own time"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        config = load_config(args.config, args.set)
        sizes = {
            "tasks": config.outer.tasks_per_batch,
            "episodes": config.inner.episodes_per_task,
            "calls": config.inner.steps + 1,  # sampling calls per iteration
        }
        summary = {"config": args.config, "overrides": args.set, "cores": CORES, "config_sizes": sizes}
        summary["backends"] = results
        args.out.write_text(
            json.dumps({**summary, "ray_per_iteration": per_iteration, "ray_over_local": ratio}, indent=1)
        )
        print(f"\nwritten to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (its env id and sizes are benchmarked)")
    parser.add_argument("--iterations", type=int, default=4, help="meta-iterations to time (the first is warm-up)")
    parser.add_argument("--env-steps", type=int, default=5_000, help="random-action steps for the env.step limit")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with N > 1, time the sampler with all workers N more times, each between two measurements of the "
        "all-cores env.step limits, and report each round's ratio and their median (the host's speed drifts)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--with-ray",
        action="store_true",
        help="also time the sampler on Ray actors, one per core (a local Ray instance, or RAY_ADDRESS)",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="measure only how runs share the machine: metarl train alone, then two at once",
    )
    parser.add_argument(
        "--algorithms",
        metavar="A,B,...",
        help="measure only the meta-iteration of these outer algorithms, side by side, each optionally with "
        "settings of its own: trpo,promp,promp+outer.precision=bfloat16",
    )
    parser.add_argument(
        "--backends",
        action="store_true",
        help="measure only the local backend against Ray actors (one per core): seconds per iteration, bytes "
        "sent and received, Ray's overhead",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.backends:
        compare_backends(args)
        return
    if args.side_by_side:
        side_by_side(args)
        return
    if args.algorithms:
        compare_algorithms(args)
        return
    warnings.filterwarnings("ignore", message="the task distribution has too few distinct tasks")

    config = load_config(args.config, args.set)
    copies = config.outer.tasks_per_batch * config.inner.episodes_per_task
    print(
        f"{config.env.id}: {config.outer.tasks_per_batch} tasks x {config.inner.episodes_per_task} episodes, "
        f"{CORES} cores, torch {torch.__version__}"
    )

    limits: dict[str, float] = {}
    limits.update(physics_rates(config, copies) or {})
    per_worker = copies_per_worker(config)
    limits.update(env_step_rates(config, args.env_steps, per_worker))
    profile = step_profile(config, args.env_steps)
    samplers = {f"{w}_workers": in_child_process(sampler_rate, config.to_dict(), w) for w in sorted({1, CORES})}
    if CORES > 1 and per_worker > 1:  # stepped in worker processes: lockstep, the parent's share
        samplers[f"{CORES}_workers_lockstep"] = in_child_process(
            sampler_rate, config.to_dict(), CORES, "local", True, False
        )
        samplers[f"{CORES}_workers_none_in_parent"] = in_child_process(
            sampler_rate, config.to_dict(), CORES, "local", False
        )
    rounds = []  # with --rounds N: N more samplers, each between two measurements of the limits
    before = env_step_rates(config, args.env_steps, per_worker) if args.rounds > 1 else {}
    for _ in range(args.rounds if args.rounds > 1 else 0):
        rate = in_child_process(sampler_rate, config.to_dict(), CORES)["env_steps_per_s"]
        after = env_step_rates(config, args.env_steps, per_worker)
        means = {name: (before[name] + after[name]) / 2 for name in after}
        rounds.append({**means, "sampler": rate, "limits_before": before, "limits_after": after})
        before = after
    if args.with_ray:  # whole episodes per actor, no lockstep with the learner
        samplers[f"ray_{CORES}_actors"] = in_child_process(sampler_rate, config.to_dict(), CORES, "ray")
    iteration = in_child_process(meta_iterations, config.to_dict(), args.iterations)
    matmuls = matmul_rates(config)

    best = max(s["env_steps_per_s"] for s in samplers.values())
    ratios = {f"sampler_over_{name}": best / rate for name, rate in limits.items()}
    median = iteration["median"]
    shares = {phase: median.get(phase, 0.0) / median["iteration_s"] for phase in PHASES}
    result = {
        "config": args.config,
        "overrides": args.set,
        "env": config.env.id,
        "cores": CORES,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "limits_env_steps_per_s": limits,
        "env_step_profile": profile,
        "sampler": samplers,
        "ratios": ratios,
        "meta_iteration": iteration,
        "matmul_gflops": matmuls,
        "phase_shares": shares,
        "alternated_rounds": rounds,
    }

    print("\nlimits (env steps/s)")
    for name, rate in limits.items():
        print(f"  {name:<22} {rate:>12,.0f}   sampler / this = {best / rate:.2f}")
    print(
        f"env.step in one process: {100 * profile['physics_share']:.0f}% MuJoCo physics, "
        f"{100 * profile['python_share']:.0f}% the environment's Python (observation, reward, bookkeeping)"
    )
    print("metarl sampler, one meta-batch (env steps/s, policy included; peak memory with its workers)")
    all_cores = limits["env_step_all_cores"]
    same_copies = next((k for k in limits if k.endswith("_copies_each")), None)
    for name, sample in samplers.items():
        rate = sample["env_steps_per_s"]
        against_copies = f", {rate / limits[same_copies]:.2f} x with as many copies" if same_copies else ""
        print(
            f"  {name:<22} {rate:>12,.0f}   {rate / all_cores:.2f} x env.step on all cores{against_copies} "
            f"({sample['env_steps']:,} steps, {sample['env_copies']} env copies, "
            f"{sample['total_peak_rss_mib']:,.0f} MiB)"
        )
    if rounds:
        print(f"{CORES} workers against the mean of the limits measured just before and after, {len(rounds)} rounds:")
        for name in (k for k in rounds[0] if k.startswith("env_step_all_cores")):
            each = [r["sampler"] / r[name] for r in rounds]
            print(f"  / {name:<36} " + " ".join(f"{x:.2f}" for x in each) + f"   median {np.median(each):.2f}")
    print(
        f"meta-iteration (median of {max(args.iterations - 1, 1)}): {median['iteration_s']:.3f} s, "
        f"{median['env_steps']:,.0f} env steps, peak RSS {iteration['peak_rss_mib']:,.0f} MiB "
        f"(+ {iteration['workers_peak_rss_mib']:,.0f} MiB in its worker processes)"
    )
    for phase in PHASES:
        print(f"  {phase.removesuffix('_s'):<22} {median.get(phase, 0.0):>8.3f} s  {100 * shares[phase]:5.1f}%")
    products = iteration["curvature_product_s"]
    print("one curvature product (J^T H J v): " + ", ".join(f"{1e3 * t:.1f} ms {n}" for n, t in products.items()))
    print(
        f"matrix products [tasks x steps, hidden] x [hidden, hidden]: {matmuls['matmul_gflops_float32']:.0f} GFLOP/s "
        f"float32, {matmuls['matmul_gflops_bfloat16']:.0f} GFLOP/s bfloat16"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
