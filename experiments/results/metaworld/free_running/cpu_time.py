"""CPU time per env step of the free-running sampler (training process and its worker) against
one process stepping the same number of copies with random actions: tells work from waiting.

    python experiments/results/metaworld/free_running/cpu_time.py reach-v3
"""

import os
import sys
import time

import numpy as np
import torch

from metarl.backends import make_sampler
from metarl.config import load_config
from metarl.functional import parameters_of
from metarl.make import env_factory, make_env
from metarl.policies import make_policy
from metarl.tasks import TaskSplits, sample_tasks, set_tasks
from metarl.workers import KeyedSyncVectorEnv

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def steal_seconds() -> float:
    fields = open("/proc/stat").readline().split()
    return int(fields[8]) / TICKS


def sampler_cpu(task: str, free_running: bool) -> None:
    config = load_config(
        f"experiments/metaworld_ml1_{task.removesuffix('-v3')}.yaml", [f"env.free_running={free_running}"]
    )
    torch.manual_seed(0)
    sampler = make_sampler(config)
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
    tasks = TaskSplits(sampler.env, 0, 1, 1).sample_train(config.outer.tasks_per_batch)
    sampler.sample(policy, parameters_of(policy), tasks)
    pids = [os.getpid(), *[pid for envs in sampler._vector_envs.values() for pid in envs.worker_pids]]
    before, steal, start = [cpu_seconds(pid) for pid in pids], steal_seconds(), time.perf_counter()
    episodes = sampler.sample(policy, parameters_of(policy), tasks)
    wall = time.perf_counter() - start
    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    steps = episodes.num_steps
    print(
        f"{task} sampler free_running={free_running}: {steps / wall:,.0f} env steps/s; CPU per process "
        + ", ".join(f"{u:.1f} s" for u in used)
        + f" of {wall:.1f} s wall ({sum(used) / (2 * wall):.0%} of 2 cores busy); "
        f"{1e6 * sum(used) / steps:.0f} CPU-µs per env step; host steal {steal_seconds() - steal:.1f} s",
        flush=True,
    )
    sampler.close()


def random_cpu(task: str, copies: int = 20, steps: int = 500) -> None:
    env = make_env("MetaRL/ML1-v0", {"env_name": task})
    tasks = sample_tasks(env, 2, np.random.default_rng(0))
    envs = KeyedSyncVectorEnv([env_factory("MetaRL/ML1-v0", {"env_name": task})] * copies, ["success"], copy=False)
    set_tasks(envs, [t for t in tasks for _ in range(copies // 2)])
    envs.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, copies, 4)).astype(np.float32)
    before, start = cpu_seconds(os.getpid()), time.perf_counter()
    for action in actions:
        envs.step(action)
    wall, used = time.perf_counter() - start, cpu_seconds(os.getpid()) - before
    print(
        f"{task} random actions, {copies} copies in one process: {copies * steps / wall:,.0f} env steps/s, "
        f"{1e6 * used / (copies * steps):.0f} CPU-µs per env step",
        flush=True,
    )


if __name__ == "__main__":
    task = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    for _ in range(2):
        random_cpu(task)
        sampler_cpu(task, True)
        sampler_cpu(task, False)
