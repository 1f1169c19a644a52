"""Where a 20-copy ML1 rollout's loop spends its time per step, outside and inside ``envs.step``
(one process, 2 tasks x 10 episodes, 500 steps, a (128, 128) policy; process time, mean of 4
rollouts). The same steps as `metarl.sampler.Rollout.run`, timed part by part.

    python experiments/results/metaworld/free_running/loop_parts.py reach-v3
"""

import collections
import sys
import time

import numpy as np
import torch
from round_cost import one_round  # this folder is on sys.path when the script runs

from metarl.functional import distribution
from metarl.info_metrics import InfoMetrics
from metarl.sampler import _check_finite, env_actions
from metarl.tasks import set_tasks

spent: collections.defaultdict[str, float] = collections.defaultdict(float)


def timed_rollout(envs, obs, policy, params, noise, rollout, tasks) -> None:  # noqa: ANN001
    width = next(iter(params.values())).shape[0]
    num_episodes = envs.num_envs // width
    alive, infos = np.ones(envs.num_envs, bool), InfoMetrics(rollout.info_metrics, envs.num_envs)
    for t in range(rollout.horizon):
        start = time.process_time()
        _check_finite(obs, "observations", tasks, num_episodes, 0)
        obs_t = torch.tensor(obs, dtype=torch.float32).reshape(width, num_episodes, -1)
        a = time.process_time()
        pi = distribution(policy, params, obs_t)
        b = time.process_time()
        action = noise[t] * pi.base_dist.scale + pi.base_dist.loc
        pi.log_prob(action)
        c = time.process_time()
        torch.as_tensor(alive, dtype=torch.float32)
        flat = action.reshape(envs.num_envs, -1).numpy()
        actions = env_actions(flat, rollout.action_space, rollout.action_scaling, rollout.action_bound)
        d = time.process_time()
        obs, reward, terminated, truncated, info = envs.step(actions)
        e = time.process_time()
        _check_finite(reward, "rewards", tasks, num_episodes, 0)
        infos.add(info, alive)
        torch.as_tensor(np.where(alive, reward, 0.0), dtype=torch.float32)
        alive &= ~(terminated | truncated)
        end = time.process_time()
        for key, seconds in (
            ("checks, observations to a tensor", a - start),
            ("the policy's forward", b - a),
            ("actions and their log-probabilities", c - b),
            ("mask, actions to numpy and scaled", d - c),
            ("envs.step", e - d),
            ("after the step: checks, infos, rewards", end - e),
        ):
            spent[key] += seconds


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    envs, policy, params, rollout, copies, noise = one_round(name)
    for _ in range(4):
        set_tasks(envs, copies)
        obs, _ = envs.reset(seed=list(range(20)))
        with torch.no_grad():
            timed_rollout(envs, obs, policy, params, noise, rollout, copies)
    outside = sum(v for k, v in spent.items() if k != "envs.step")
    for key, seconds in spent.items():
        print(f"{name} {key:<40} {1e6 * seconds / 2000:7.1f} µs per step")
    print(f"{name} outside envs.step: {100 * outside / spent['envs.step']:.1f}% of the time in it")
