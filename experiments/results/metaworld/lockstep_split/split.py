"""Where one lockstep step of ML1 sampling goes, with 2 workers and the training process stepping
its share (the default): the parent's own env steps, its wait for the worker process, sending the
command, and the learner's work between steps (policy, actions, bookkeeping).

    python experiments/results/metaworld/lockstep_split/split.py reach    # or push

One meta-batch of the config (20 tasks x 10 episodes x 500 steps in rounds of 40 copies), the
second call timed; milliseconds per command (a step of the 40 copies, or a round's reset).
"""

import sys
import time

import torch
from timing import timed

import metarl.workers as workers
from metarl.config import load_config
from metarl.functional import parameters_of
from metarl.policies import make_policy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits

SPENT: dict[str, float] = {}


def main() -> None:
    name = sys.argv[1]
    # The parent's share runs `_execute`; `_gather` waits for the worker; `_command` is both and the send.
    workers._execute = timed(workers._execute, "execute", SPENT)
    workers.WorkerVectorEnv._gather = timed(workers.WorkerVectorEnv._gather, "gather", SPENT)
    workers.WorkerVectorEnv._command = timed(workers.WorkerVectorEnv._command, "command", SPENT)
    config = load_config(f"experiments/metaworld_ml1_{name}.yaml")
    torch.manual_seed(0)
    sampler = Sampler.from_config(config)
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
    tasks = TaskSplits(sampler.env, 0, 1, 1).sample_train(config.outer.tasks_per_batch)
    params = parameters_of(policy)
    with torch.no_grad():
        sampler.sample(policy, params, tasks)  # builds the environments and starts the worker
        SPENT.clear()
        start = time.perf_counter()
        episodes = sampler.sample(policy, params, tasks)
        wall = time.perf_counter() - start
    sampler.close()
    n = SPENT["command_calls"]
    execute, gather, command = (SPENT[k] / n * 1e3 for k in ("execute", "gather", "command"))
    print(f"{name}: {episodes.num_steps / wall:,.0f} env steps/s, {wall:.1f} s, {n} commands")
    per_command = wall / n * 1e3
    print(
        f"  ms per command: {per_command:.2f} = parent's env steps {execute:.2f} + wait for the worker "
        f"{gather:.2f} + send {command - execute - gather:.2f} + learner between commands {per_command - command:.2f}"
    )


if __name__ == "__main__":
    main()
