"""One process, alternating: one copy's env.step loop, the sampler's SyncVectorEnv of 40 copies
with random actions, and metarl's sampler on those 40 copies (4 tasks x 10 episodes, horizon 500).

    python experiments/results/metaworld/sampler_decomposition/vecsplit.py reach-v3 4
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


def vector_env(steps: int = 100) -> float:
    vector.reset(seed=1)
    start = time.perf_counter()
    for _ in range(steps):
        vector.step(rng.uniform(-1, 1, (vector.num_envs, 4)).astype(np.float32))
    return steps * vector.num_envs / (time.perf_counter() - start)


def metarl_sampler() -> float:
    start = time.perf_counter()
    episodes = sampler.sample(policy, params, tasks)
    return episodes.num_steps / (time.perf_counter() - start)


rates = {"env_step_1_copy": [], "vector_40_random": [], "sampler_40": []}
for _ in range(repeats):
    for key, measure in zip(rates, (one_copy, vector_env, metarl_sampler), strict=True):
        rates[key].append(round(measure()))
medians = {key: float(np.median(values)) for key, values in rates.items()}
print(
    name,
    json.dumps(rates),
    "medians",
    medians,
    f"vector/1copy {medians['vector_40_random'] / medians['env_step_1_copy']:.3f} "
    f"sampler/vector {medians['sampler_40'] / medians['vector_40_random']:.3f} "
    f"sampler/1copy {medians['sampler_40'] / medians['env_step_1_copy']:.3f}",
)
