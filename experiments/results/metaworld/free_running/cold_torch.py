"""What a little torch work costs between batches of environment steps: 500 steps of 20 copies of
an ML1 task (one process, uniform random actions), with nothing, or with one piece of policy work
before each step, alternated N times; CPU seconds inside `envs.step` and per step outside it.

    python experiments/results/metaworld/free_running/cold_torch.py reach-v3 5

- torch forward: the policy's distribution, the Gaussian actions and their log-probabilities, as
  the sampler computed them until 2026-12-03;
- torch, raw: the same mean through three `baddbmm` and two `tanh`, no distribution;
- one torch op: only the observations made a tensor;
- numpy forward: the mean through numpy (`NumpyGaussianActor.mean`).

Last, the one op alone in a tight loop (wall clock).
"""

import sys
import time

import numpy as np
import torch
from round_cost import one_round  # this folder is on sys.path when the script runs

from metarl.functional import distribution
from metarl.tasks import set_tasks

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    envs, policy, params, rollout, copies, noise = one_round(name)
    params = {key: value.detach() for key, value in params.items()}
    actor = policy.numpy_actor(params)
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 20, 4)).astype(np.float32)

    def torch_forward(obs: np.ndarray) -> None:
        with torch.no_grad():
            pi = distribution(policy, params, torch.tensor(obs, dtype=torch.float32).reshape(2, 10, -1))
            pi.log_prob(noise[0] * pi.base_dist.scale + pi.base_dist.loc)

    def torch_raw(obs: np.ndarray) -> None:
        x = torch.tensor(obs, dtype=torch.float32).reshape(2, 10, -1)
        for i in range(3):
            x = torch.baddbmm(params[f"mean.layers.{i}.bias"].unsqueeze(1), x, params[f"mean.layers.{i}.weight"].mT)
            x = torch.tanh(x) if i < 2 else x

    def one_op(obs: np.ndarray) -> None:
        torch.tensor(obs, dtype=torch.float32)

    def numpy_forward(obs: np.ndarray) -> None:
        actor.mean(obs.astype(np.float32).reshape(2, 10, -1))

    work = {
        "nothing": None,
        "torch forward": torch_forward,
        "torch, raw": torch_raw,
        "one torch op": one_op,
        "numpy forward": numpy_forward,
    }
    total = {key: [] for key in work}
    inside = {key: [] for key in work}
    for _ in range(repeats):
        for key, before_step in work.items():
            set_tasks(envs, copies)
            obs, _ = envs.reset(seed=list(range(20)))
            in_step = 0.0
            start = time.process_time()
            for action in actions:
                if before_step is not None:
                    before_step(obs)
                mark = time.process_time()
                obs, *_ = envs.step(action)
                in_step += time.process_time() - mark
            total[key].append(time.process_time() - start)
            inside[key].append(in_step)
    obs = np.asarray(obs)
    for _ in range(1000):
        one_op(obs)
    start = time.perf_counter()
    for _ in range(20000):
        one_op(obs)
    print(f"{name} one torch op in a tight loop: {1e6 * (time.perf_counter() - start) / 20000:.1f} µs")
    for key in work:
        outside = 1e6 * (np.median(total[key]) - np.median(inside[key])) / 500
        print(f"{name} {key:<14} in envs.step {np.median(inside[key]):.3f} CPU-s, outside {outside:4.0f} µs per step")
