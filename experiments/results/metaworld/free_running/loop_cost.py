"""The sampler loop's own work per step for 20 copies (2 tasks x 10 episodes, Meta-World's
39-number observations, a (128, 128) tanh policy) on a stub vector env that returns at once.

    python experiments/results/metaworld/free_running/loop_cost.py
"""

import time

import numpy as np
import torch
from gymnasium import spaces

from metarl.functional import distribution, parameters_of, per_task
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Rollout


class StubEnvs:
    num_envs = 20

    def __init__(self) -> None:
        self.obs = np.random.default_rng(0).random((20, 39)).astype(np.float32)
        self.info = {"success": np.zeros(20), "_success": np.ones(20, bool)}

    def step(self, actions: np.ndarray) -> tuple:
        return self.obs, np.zeros(20), np.zeros(20, bool), np.zeros(20, bool), self.info


if __name__ == "__main__":
    torch.set_num_threads(1)
    policy = GaussianMLPPolicy(39, 4, (128, 128))
    params = per_task(parameters_of(policy), 2)
    space = spaces.Box(-1, 1, (4,), np.float32)
    rollout = Rollout(500, space, "normalize", 1.0, {"success": "any"}, torch.device("cpu"))
    noise = torch.randn(500, 2, 10, 4)
    envs = StubEnvs()
    obs = torch.as_tensor(envs.obs).reshape(2, 10, 39)
    for _ in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            act = noise.numpy()  # the Gaussian noise of the horizon
            rollout.run(envs, envs.obs, policy, params, act, np.ones(20, bool), [0, 1])
        loop = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(500):
                distribution(policy, params, obs)
        forward = time.perf_counter() - start
        print(
            f"the whole loop {1e6 * loop / 500:.0f} µs per step, "
            f"of which the policy's distribution {1e6 * forward / 500:.0f} µs"
        )
