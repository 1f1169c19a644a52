"""Wall and CPU seconds of each slice of a free-running sampling call at ML1 sizes (20 tasks x 10
episodes, 2 workers: the training process steps one slice, a worker process the other), three
calls after a first that builds the copies.

    python experiments/results/metaworld/free_running/slice_times.py reach
"""

import collections
import os
import sys
import time

import torch

import metarl.sampler as sampler_module
from metarl.backends import make_sampler
from metarl.config import load_config
from metarl.functional import parameters_of
from metarl.policies import make_policy
from metarl.tasks import TaskSplits

spent: collections.defaultdict[str, float] = collections.defaultdict(float)
run_slice, join_parts = sampler_module.run_slice, sampler_module._join_parts


def timed_run_slice(envs, payload, beat):  # noqa: ANN001, ANN201
    """`run_slice`, its times added to its answer (this module is imported by the workers too)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = run_slice(envs, payload, beat)
    if isinstance(out, dict):
        out["_times"] = (os.getpid(), time.perf_counter() - start, time.process_time() - cpu)
    return out


def timed_join_parts(parts, device):  # noqa: ANN001, ANN201
    for part in parts:
        if isinstance(part, dict) and "_times" in part:
            pid, wall, cpu = part.pop("_times")
            who = "training process" if pid == os.getpid() else "worker"
            spent[f"{who} slice wall"] += wall
            spent[f"{who} slice CPU"] += cpu
    return join_parts(parts, device)


sampler_module.run_slice, sampler_module._join_parts = timed_run_slice, timed_join_parts

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach"
    config = load_config(f"experiments/metaworld_ml1_{name}.yaml", ["env.workers=2"])
    torch.manual_seed(0)
    sampler = make_sampler(config)
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
    tasks = TaskSplits(sampler.env, 0, 1, 1).sample_train(config.outer.tasks_per_batch)
    params = parameters_of(policy)
    sampler.sample(policy, params, tasks)
    for _ in range(3):
        spent.clear()
        start = time.perf_counter()
        episodes = sampler.sample(policy, params, tasks)
        total = time.perf_counter() - start
        parts = "; ".join(f"{key} {value:.2f} s" for key, value in sorted(spent.items()))
        print(f"{name} call {total:.2f} s ({episodes.num_steps / total:,.0f} env steps/s); {parts}")
    sampler.close()
