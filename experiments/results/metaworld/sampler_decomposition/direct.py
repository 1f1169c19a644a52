"""One process, alternating on the same 40 copies: Gymnasium's SyncVectorEnv, a plain loop of
env.step over the copies, the same over the unwrapped environments; against one copy's loop.

    python experiments/results/metaworld/sampler_decomposition/direct.py reach-v3 4
"""

import json
import sys
import time

import numpy as np

from metarl.make import make_env, make_vector_env

name, repeats = sys.argv[1], int(sys.argv[2])
kwargs = {"env_name": name}
rng = np.random.default_rng(0)
vector = make_vector_env("MetaRL/ML1-v0", 40, kwargs, 500)
one = make_env("MetaRL/ML1-v0", kwargs)


def one_copy(steps: int = 4000) -> float:
    one.reset(seed=0)
    actions = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = one.step(action)
        if terminated or truncated:
            one.reset()
    return steps / (time.perf_counter() - start)


def sync_vector(steps: int = 100) -> float:
    vector.reset(seed=1)
    start = time.perf_counter()
    for _ in range(steps):
        vector.step(rng.uniform(-1, 1, (40, 4)).astype(np.float32))
    return steps * 40 / (time.perf_counter() - start)


def loop(envs: list, steps: int = 100) -> float:
    for env in vector.envs:
        env.reset(seed=1)
    start = time.perf_counter()
    for _ in range(steps):
        actions = rng.uniform(-1, 1, (40, 4)).astype(np.float32)
        results = [env.step(action) for env, action in zip(envs, actions, strict=True)]
        np.stack([result[0] for result in results])
    return steps * 40 / (time.perf_counter() - start)


measures = {
    "one_copy": one_copy,
    "sync_vector_40": sync_vector,
    "plain_loop_40": lambda: loop(vector.envs),
    "unwrapped_loop_40": lambda: loop([env.unwrapped for env in vector.envs]),
}
rates = {key: [] for key in measures}
for _ in range(repeats):
    for key, measure in measures.items():
        rates[key].append(round(measure()))
medians = {key: float(np.median(values)) for key, values in rates.items()}
print(name, json.dumps(rates), {key: round(value / medians["one_copy"], 3) for key, value in medians.items()})
