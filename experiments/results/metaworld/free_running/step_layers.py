"""One process, 20 copies of an ML1 task (2 tasks x 10 episodes, 500-step episodes): env steps/s
of the layers between `env.step` and the sampler, alternated N times. Wall clock; the other core
idle.

    python experiments/results/metaworld/free_running/step_layers.py reach-v3 3

- one copy: `scripts/benchmark.py`'s limit (one environment, random actions, resets included);
- 20 copies, a loop: the 20 environments stepped in turn with random actions (resets included);
- vector env: the sampler's `KeyedSyncVectorEnv` of the 20 copies, random actions;
- sampler loop: `Rollout.run` with metarl's Gaussian (128, 128) policy (numpy actor), tasks set
  and copies reset before each round, as a free-running slice runs them.
"""

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch
from round_cost import one_round  # this folder is on sys.path when the script runs

from metarl.make import make_env
from metarl.tasks import set_tasks

benchmark_path = Path(__file__).resolve().parents[4] / "scripts" / "benchmark.py"
spec = importlib.util.spec_from_file_location("benchmark", benchmark_path)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    envs, policy, params, rollout, copies, noise = one_round(name)
    singles = [make_env("MetaRL/ML1-v0", {"env_name": name}) for _ in range(20)]
    for env, task in zip(singles, copies, strict=True):
        env.set_wrapper_attr("task", task)
    set_tasks_of = set_tasks
    uniform = np.random.default_rng(0).uniform(-1, 1, (500, 20, 4)).astype(np.float32)

    def one_copy() -> float:
        return benchmark.env_step_rate("MetaRL/ML1-v0", {"env_name": name}, 10000)

    def loop_of_copies() -> float:
        for i, env in enumerate(singles):
            env.reset(seed=i)
        start = time.perf_counter()
        for action in uniform:
            for env, a in zip(singles, action, strict=True):
                env.step(a)
        return 10000 / (time.perf_counter() - start)

    def vector_env() -> float:
        set_tasks_of(envs, copies)
        start = time.perf_counter()
        envs.reset(seed=list(range(20)))
        for action in uniform:
            envs.step(action)
        return 10000 / (time.perf_counter() - start)

    def sampler_loop() -> float:
        set_tasks_of(envs, copies)
        start = time.perf_counter()
        obs, _ = envs.reset(seed=list(range(20)))
        with torch.no_grad():
            rollout.run(envs, obs, policy, params, noise.numpy(), np.ones(20, bool), copies)
        return 10000 / (time.perf_counter() - start)

    layers = {"one copy": one_copy, "20 copies, a loop": loop_of_copies, "vector env": vector_env}
    layers["sampler loop"] = sampler_loop
    rates: dict[str, list[float]] = {key: [] for key in layers}
    for repeat in range(repeats):
        for key in list(layers) if repeat % 2 == 0 else list(layers)[::-1]:
            rates[key].append(layers[key]())
    base = np.median(rates["one copy"])
    for key, values in rates.items():
        median = np.median(values)
        print(
            f"{name} {key:<18} " + " ".join(f"{v:6,.0f}" for v in values) + f"   median {median:6,.0f} env steps/s"
            f" ({median / base:.2f} x one copy)"
        )
