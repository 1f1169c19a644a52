"""Sampling throughput of metarl against the raw Gymnasium environment, measured side by side.

    python scripts/benchmark.py experiments/halfcheetah_dir.yaml [--repeats 3] [--out bench.json]

Measures, in one process and one after another (repeated, medians reported):
- raw: ``env.step`` of one Gymnasium environment of the config's family with random actions
  (one core, resets included);
- sampler: metarl's batched sampler collecting one meta-batch (tasks × episodes × horizon of the
  config) with a policy forward at every step, in env steps per second.
It prints the ratio sampler / raw. A benchmark, not a test: the machine's load moves the numbers,
so compare ratios taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from metarl.config import load_config
from metarl.functional import parameters_of
from metarl.policies import make_policy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits, make_env


def raw_step_rate(env_id: str, kwargs: dict, steps: int, seed: int = 0) -> float:
    """Env steps per second of one environment with random actions, resets included."""
    env = make_env(env_id, kwargs)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def sampler_rate(config_path: str) -> tuple[float, int]:
    """Env steps per second of metarl's sampler for one meta-batch of the config, and the steps."""
    config = load_config(config_path)
    torch.manual_seed(0)
    sampler = Sampler.from_config(config)
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
    tasks = TaskSplits(sampler.env, 0, 1, 1).sample_train(config.outer.tasks_per_batch)
    sampler.sample(policy, parameters_of(policy), tasks)  # builds the vector env
    start = time.perf_counter()
    episodes = sampler.sample(policy, parameters_of(policy), tasks)
    elapsed = time.perf_counter() - start
    sampler.close()
    return episodes.num_steps / elapsed, episodes.num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw-steps", type=int, default=20_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore", message="the task distribution has too few distinct tasks")
    config = load_config(args.config)
    raw, sampled, steps = [], [], 0
    for _ in range(args.repeats):
        raw.append(raw_step_rate(config.env.id, config.env.kwargs, args.raw_steps))
        rate, steps = sampler_rate(args.config)
        sampled.append(rate)
    result = {
        "config": args.config,
        "env": config.env.id,
        "meta_batch_env_steps": steps,
        "raw_env_step_per_s": statistics.median(raw),
        "sampler_env_steps_per_s": statistics.median(sampled),
        "ratio_sampler_over_raw": statistics.median(sampled) / statistics.median(raw),
        "repeats": {"raw": raw, "sampler": sampled},
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }
    print(f"{config.env.id}: raw env.step (1 env, random actions) {result['raw_env_step_per_s']:,.0f} steps/s")
    print(
        f"metarl sampler ({steps:,} steps per meta-batch, policy included) "
        f"{result['sampler_env_steps_per_s']:,.0f} steps/s"
    )
    print(f"ratio sampler / raw: {result['ratio_sampler_over_raw']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
