"""The lockstep without a learner: 40 ML1 copies in `WorkerVectorEnv` (the parent steps 20, one
worker process the other 20), stepped with fixed clipped-Gaussian actions and nothing computed
between steps; ms per step, split into the parent's own env steps and its wait for the worker.
Alternated with the same copies, actions and steps without a lockstep: two processes at once,
each stepping its 20 copies in a plain loop (the limit the lockstep is measured against).

    python experiments/results/metaworld/lockstep_split/no_learner.py reach-v3    # or push-v3
"""

import multiprocessing as mp
import sys
import time

import numpy as np
from timing import timed

import metarl.workers as workers
from metarl.make import env_factory, make_env
from metarl.tasks import TaskSplits, set_tasks

SPENT: dict[str, float] = {}


def copies_and_actions(name: str, copies: int, steps: int) -> tuple[list, list, np.ndarray]:
    """The copies' factories, their tasks (4 tasks x 10 copies) and every step's actions."""
    factory = env_factory("MetaRL/ML1-v0", {"env_name": name}, None)
    tasks = TaskSplits(make_env("MetaRL/ML1-v0", {"env_name": name}), 0, 1, 1).sample_train(4)
    actions = np.clip(np.random.default_rng(0).normal(size=(steps, copies, 4)), -1, 1).astype(np.float32)
    return [factory] * copies, [task for task in tasks for _ in range(copies // 4)], actions


def free_running(name: str, copies: int, steps: int, half: int) -> float:
    """Seconds for one half of the copies to take `steps` steps in a plain loop, no lockstep."""
    factories, tasks, actions = copies_and_actions(name, copies, steps)
    rows = slice(half * copies // 2, (half + 1) * copies // 2)
    envs = [factory() for factory in factories[rows]]
    for env, task in zip(envs, tasks[rows], strict=True):
        env.set_wrapper_attr("task", task)  # as the vector envs' set_attr("task", ...)
        env.reset(seed=0)
    start = time.perf_counter()
    for step in actions[:, rows]:
        for env, action in zip(envs, step, strict=True):
            env.step(action)
    return time.perf_counter() - start


def main() -> None:
    name, copies, steps = sys.argv[1], 40, 500  # one whole episode of every copy
    workers._execute = timed(workers._execute, "execute", SPENT)
    workers.WorkerVectorEnv._gather = timed(workers.WorkerVectorEnv._gather, "gather", SPENT)
    factories, tasks, actions = copies_and_actions(name, copies, steps)
    envs = workers.WorkerVectorEnv(factories, 2, info_keys=("success",), parent_slice=True)
    set_tasks(envs, tasks)
    for _ in range(2):
        with mp.get_context("spawn").Pool(2) as pool:
            seconds = pool.starmap(free_running, [(name, copies, steps, half) for half in (0, 1)])
        free = sum(copies // 2 * steps / s for s in seconds)
        print(f"{name}: no lockstep, two processes of 20 copies: {free:,.0f} env steps/s")
        envs.reset(seed=0)
        SPENT.clear()
        start = time.perf_counter()
        for step in actions:
            envs.step(step)
        wall = (time.perf_counter() - start) / steps * 1e3
        execute, gather = (SPENT[k] / steps * 1e3 for k in ("execute", "gather"))
        rate = copies / wall * 1e3
        print(
            f"{name}: {wall:.2f} ms per step = parent's env steps {execute:.2f} + wait {gather:.2f} + rest "
            f"{wall - execute - gather:.2f}; {rate:,.0f} env steps/s ({rate / free:.2f} x no lockstep)"
        )
    envs.close()


if __name__ == "__main__":
    main()
