"""Where ProMP's outer step goes at 2D navigation's paper sizes (experiments/navigation_2d_promp_fast.yaml:
3 bfloat16 epochs): the epochs' adaptations through θ, their backward passes, and the adaptation at
the new θ for the statistics and the KL coefficients; milliseconds per meta-iteration, mean of
iterations 4-10.

    python experiments/results/benchmark/algorithms/promp_parts.py
"""

import collections
import time

# isort: off
import metarl  # noqa: F401  (before torch: idle OpenMP threads sleep)
import torch

# isort: on

from metarl.config import load_config
from metarl.outer import ppo
from metarl.training import build_training, training_iteration, with_threads_resolved

spent: collections.defaultdict[str, float] = collections.defaultdict(float)


def timed(name: str, function):  # noqa: ANN001, ANN201
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        result = function(*args, **kwargs)
        key = name(args, kwargs) if callable(name) else name
        spent[key] += time.perf_counter() - start
        return result

    return wrapper


if __name__ == "__main__":
    config = with_threads_resolved(load_config("experiments/navigation_2d_promp_fast.yaml", []))
    torch.set_num_threads(config.train.num_threads)
    state = build_training(config)
    graph = lambda args, kwargs: f"adaptation, create_graph={kwargs.get('create_graph', True)}"  # noqa: E731
    ppo.PPO._adaptation = timed(graph, ppo.PPO._adaptation)
    torch.Tensor.backward = timed("the epochs' backward passes", torch.Tensor.backward)
    ppo.PPO.step = timed("the whole outer step", ppo.PPO.step)
    for iteration in range(10):
        if iteration == 3:
            spent.clear()
        training_iteration(state)
    for key, seconds in spent.items():
        print(f"{key:<40} {1e3 * seconds / 7:7.1f} ms per meta-iteration")
