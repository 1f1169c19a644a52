"""Time of MAML-TRPO's curvature products at ML1 sizes (20 tasks x 5,000 steps, a (128, 128) tanh
policy, float32, the training's threads), over all tasks at once against over groups of tasks of
about 25,000 and 10,000 steps (the default, `metarl.curvature.CHUNK_ROWS`), alternated N times in one process.

    python experiments/results/metaworld/chunked_products.py 5
"""

import sys
import time

import numpy as np
import torch

from metarl.curvature import GaussianMLPCurvature
from metarl.episodes import Episodes
from metarl.functional import parameters_of, per_task
from metarl.policies import GaussianMLPPolicy
from metarl.threads import available_cpus


def product_inputs(
    tasks: int = 20, steps: int = 5000, obs_dim: int = 39, act_dim: int = 4, hidden: tuple[int, ...] = (128, 128)
) -> tuple[GaussianMLPPolicy, dict, Episodes, list]:
    """A tanh policy with per-task parameters, random episodes packed as one row per task, and
    random product vectors (seeded); ML1's sizes by default."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(obs_dim, act_dim, hidden)
    params = {k: v + 0.01 * torch.randn_like(v) for k, v in per_task(parameters_of(policy), tasks).items()}
    shape = (tasks, 1, steps)
    episodes = Episodes(
        observations=torch.randn(*shape, obs_dim),
        actions=torch.randn(*shape, act_dim),
        rewards=torch.randn(shape),
        mask=torch.ones(shape),
        log_probs=torch.randn(shape),
        advantages=torch.randn(shape),
    )
    return policy, params, episodes, [torch.randn_like(v) for v in params.values()]


if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    torch.set_num_threads(available_cpus())
    tasks, steps = 20, 5000
    policy, params, episodes, vectors = product_inputs(tasks, steps)
    weights = episodes.mask / steps / tasks
    settings = {"all tasks at once": 10**9, "groups of 25,000 steps": 25_000, "groups of 10,000 steps (default)": None}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, rows in settings.items():
            curvature = GaussianMLPCurvature(policy, params, episodes.observations, chunk_rows=rows)
            products = (curvature.reinforce_hessian_product(episodes), curvature.fisher_product(weights))
            start = time.perf_counter()
            for _ in range(3):
                for product in products:
                    product(vectors)
            times[name].append((time.perf_counter() - start) / 3)
    for name, values in times.items():
        each = " ".join(f"{1e3 * x:6.0f}" for x in values)
        print(f"{name:<34} {each}   median {1e3 * np.median(values):.0f} ms")
    print("(ms for one inner-loss Hessian product and one Fisher product)")
