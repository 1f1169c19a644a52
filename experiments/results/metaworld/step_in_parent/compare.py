"""ML1 sampling with 2 workers, the training process stepping a share of the copies itself
(``env.step_in_parent: true``, the default) or not, alternated in fresh processes; the episodes
must be identical to one worker's.

    python experiments/results/metaworld/step_in_parent/compare.py reach --tasks 20 --repeats 3
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from metarl.config import load_config
from metarl.functional import parameters_of
from metarl.policies import make_policy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits

FIELDS = ("observations", "actions", "rewards", "mask", "log_probs")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(name: str, tasks: int, workers: int, step_in_parent: bool) -> tuple[dict, float, list[float]]:
    """One meta-batch's episodes (the second call, timed), env steps/s, and CPU/wall of each process."""
    overrides = [f"env.workers={workers}", f"env.step_in_parent={step_in_parent}"]
    config = load_config(f"experiments/metaworld_ml1_{name}.yaml", overrides)
    torch.manual_seed(0)
    sampler = Sampler.from_config(config)
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
    batch = TaskSplits(sampler.env, 0, 1, 1).sample_train(tasks)
    params = parameters_of(policy)
    sampler.sample(policy, params, batch[: sampler.tasks_per_round()])  # builds the copies
    pids = [os.getpid()] + [p for e in sampler._vector_envs.values() for p in getattr(e, "worker_pids", ())]
    before, start = [cpu_seconds(p) for p in pids], time.perf_counter()
    episodes = sampler.sample(policy, params, batch)
    wall = time.perf_counter() - start
    busy = [(cpu_seconds(p) - b) / wall for p, b in zip(pids, before, strict=True)]
    sampler.close()
    return {f: getattr(episodes, f) for f in FIELDS}, episodes.num_steps / wall, busy


def in_fresh_process(task: str, tasks: int, workers: int, step_in_parent: bool) -> tuple[dict, float, list[float]]:
    """`sample` in a new Python process (its own memory and workers)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "episodes.pt"
        command = [sys.executable, __file__, task, "--measure", str(tasks), str(workers), str(step_in_parent), str(out)]
        printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rate, busy = json.loads(printed.strip().splitlines()[-1])
        return torch.load(out), rate, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["reach", "push"])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=4, metavar=("TASKS", "WORKERS", "IN_PARENT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # in a fresh process: one measurement
        tasks, workers, in_parent, out = args.measure
        episodes, rate, busy = sample(args.task, int(tasks), int(workers), in_parent == "True")
        torch.save(episodes, out)
        print(json.dumps([rate, busy]))
        return
    reference, rate, _ = in_fresh_process(args.task, args.tasks, 1, False)
    print(f"1 worker: {rate:,.0f} env steps/s", flush=True)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for in_parent in (True, False):
            episodes, rate, busy = in_fresh_process(args.task, args.tasks, 2, in_parent)
            same = all(torch.equal(episodes[f], reference[f]) for f in FIELDS)
            rates[in_parent].append(rate)
            print(
                f"2 workers, step_in_parent={in_parent!s:<5}: {rate:,.0f} env steps/s, CPU/wall of the "
                f"processes {' '.join(f'{b:.2f}' for b in busy)}, episodes identical to 1 worker: {same}",
                flush=True,
            )
    ratios = sorted(a / b for a, b in zip(rates[True], rates[False], strict=True))
    print(f"step_in_parent true / false, per pair: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
