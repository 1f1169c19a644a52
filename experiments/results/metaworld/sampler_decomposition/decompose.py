"""Where an in-process sampler's time goes on Meta-World, measured in one process, alternating:
one copy's env.step loop; the sampler's own SyncVectorEnv of 40 copies with random actions; a plain
loop of env.step over those 40 copies, and over their unwrapped environments; metarl's sampler on
them (4 tasks x 10 episodes, horizon 500, policy included). Medians of `repeats` rounds, as ratios
to one copy.

    python experiments/results/metaworld/sampler_decomposition/decompose.py reach-v3 4
"""

import json
import sys
import time

import numpy as np
import torch

from metarl.functional import detach, parameters_of
from metarl.make import make_env
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits

name, repeats = sys.argv[1], int(sys.argv[2])
kwargs = {"env_name": name}
rng = np.random.default_rng(0)
one = make_env("MetaRL/ML1-v0", kwargs)
torch.manual_seed(0)
sampler = Sampler("MetaRL/ML1-v0", 10, kwargs, horizon=500, seed=0)
policy = GaussianMLPPolicy(sampler.observation_space.shape[0], 4, (128, 128), "tanh")
params = detach(parameters_of(policy))
tasks = TaskSplits(sampler.env, 0, 1, 1).sample_train(4)
sampler.sample(policy, params, tasks)  # builds the 40 copies
vector = next(iter(sampler._vector_envs.values()))


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
        vector.step(rng.uniform(-1, 1, (vector.num_envs, 4)).astype(np.float32))
    return steps * vector.num_envs / (time.perf_counter() - start)


def loop(envs: list, steps: int = 100) -> float:
    for env in vector.envs:
        env.reset(seed=1)
    start = time.perf_counter()
    for _ in range(steps):
        actions = rng.uniform(-1, 1, (len(envs), 4)).astype(np.float32)
        results = [env.step(action) for env, action in zip(envs, actions, strict=True)]
        np.stack([result[0] for result in results])
    return steps * len(envs) / (time.perf_counter() - start)


def metarl_sampler() -> float:
    start = time.perf_counter()
    episodes = sampler.sample(policy, params, tasks)
    return episodes.num_steps / (time.perf_counter() - start)


measures = {
    "one_copy": one_copy,
    "sync_vector_40": sync_vector,
    "plain_loop_40": lambda: loop(vector.envs),
    "unwrapped_loop_40": lambda: loop([env.unwrapped for env in vector.envs]),
    "sampler_40": metarl_sampler,
}
rates = {key: [] for key in measures}
for _ in range(repeats):
    for key, measure in measures.items():
        rates[key].append(round(measure()))
medians = {key: float(np.median(values)) for key, values in rates.items()}
print(name, json.dumps(rates))
print("  ratio to one copy:", {key: round(value / medians["one_copy"], 3) for key, value in medians.items()})
print(f"  sampler / its vector env: {medians['sampler_40'] / medians['sync_vector_40']:.3f}")
