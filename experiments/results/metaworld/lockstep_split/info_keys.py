"""Gymnasium's SyncVectorEnv against metarl's KeyedSyncVectorEnv (only "success" gathered) and a
plain loop of env.step, on 20 ML1 copies in one process, alternated; ms per step of the 20 copies.

    python experiments/results/metaworld/lockstep_split/info_keys.py reach-v3    # or push-v3
"""

import sys
import time

import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from metarl.make import env_factory, make_env
from metarl.tasks import TaskSplits, set_tasks
from metarl.workers import KeyedSyncVectorEnv


def main() -> None:
    name, copies, steps = sys.argv[1], 20, 100
    factory = env_factory("MetaRL/ML1-v0", {"env_name": name}, None)
    tasks = TaskSplits(make_env("MetaRL/ML1-v0", {"env_name": name}), 0, 1, 1).sample_train(2)
    full = SyncVectorEnv([factory] * copies, copy=False, autoreset_mode=AutoresetMode.NEXT_STEP)
    keyed = KeyedSyncVectorEnv([factory] * copies, ["success"], copy=False)
    for envs in (full, keyed):
        set_tasks(envs, [task for task in tasks for _ in range(copies // 2)])
        envs.reset(seed=0)
    actions = np.clip(np.random.default_rng(0).normal(size=(steps, copies, 4)), -1, 1).astype(np.float32)
    for _ in range(4):
        seconds = []
        for run in (full.step, keyed.step, lambda a: [e.step(x) for e, x in zip(full.envs, a, strict=True)]):
            start = time.perf_counter()
            for step in actions:
                run(step)
            seconds.append((time.perf_counter() - start) / steps * 1e3)
        full_ms, keyed_ms, loop_ms = seconds
        print(f"{name}: SyncVectorEnv {full_ms:.2f}  KeyedSyncVectorEnv {keyed_ms:.2f}  plain loop {loop_ms:.2f} ms")
    full.close()
    keyed.close()


if __name__ == "__main__":
    main()
