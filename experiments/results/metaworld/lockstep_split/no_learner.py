"""The lockstep without a learner: 40 ML1 copies in `WorkerVectorEnv` (the parent steps 20, one
worker process the other 20), stepped with fixed clipped-Gaussian actions and nothing computed
between steps; ms per step, split into the parent's own env steps and its wait for the worker.

    python experiments/results/metaworld/lockstep_split/no_learner.py reach-v3    # or push-v3
"""

import sys
import time

import numpy as np

import metarl.workers as workers
from metarl.make import env_factory, make_env
from metarl.tasks import TaskSplits, set_tasks

SPENT = {"execute": 0.0, "gather": 0.0}


def timed(function, key):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - start

    return wrapper


def main() -> None:
    name, copies, steps = sys.argv[1], 40, 500  # one whole episode of every copy
    workers._execute = timed(workers._execute, "execute")
    workers.WorkerVectorEnv._gather = timed(workers.WorkerVectorEnv._gather, "gather")
    factory = env_factory("MetaRL/ML1-v0", {"env_name": name}, None)
    tasks = TaskSplits(make_env("MetaRL/ML1-v0", {"env_name": name}), 0, 1, 1).sample_train(4)
    envs = workers.WorkerVectorEnv([factory] * copies, 2, info_keys=("success",), parent_slice=True)
    set_tasks(envs, [task for task in tasks for _ in range(copies // 4)])
    actions = np.clip(np.random.default_rng(0).normal(size=(steps, copies, 4)), -1, 1).astype(np.float32)
    for _ in range(2):
        envs.reset(seed=0)
        SPENT["execute"] = SPENT["gather"] = 0.0
        start = time.perf_counter()
        for step in actions:
            envs.step(step)
        wall = (time.perf_counter() - start) / steps * 1e3
        execute, gather = (SPENT[k] / steps * 1e3 for k in ("execute", "gather"))
        print(
            f"{name}: {wall:.2f} ms per step = parent's env steps {execute:.2f} + wait {gather:.2f} + rest "
            f"{wall - execute - gather:.2f}; {copies / wall * 1e3:,.0f} env steps/s"
        )
    envs.close()


if __name__ == "__main__":
    main()
