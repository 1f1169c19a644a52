"""CPU seconds of one free-running round in one process (20 copies of an ML1 task, 2 tasks x 10
episodes, 500 steps), alternated 4 times: the reset, the rollout with the policy, the same steps
replaying the policy's own actions, and uniform random actions.

    python experiments/results/metaworld/free_running/round_cost.py reach-v3
"""

import sys
import time

import numpy as np
import torch

from metarl.functional import parameters_of, per_task
from metarl.make import env_factory, make_env
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Rollout
from metarl.tasks import sample_tasks, set_tasks
from metarl.workers import KeyedSyncVectorEnv


def one_round(name: str) -> tuple:
    """20 copies of ML1 task `name` (2 tasks x 10 episodes), a (128, 128) policy with per-task
    parameters, the 500-step rollout, the copies' tasks and the noise (also used by step_share.py)."""
    torch.set_num_threads(1)
    env = make_env("MetaRL/ML1-v0", {"env_name": name})
    tasks = sample_tasks(env, 2, np.random.default_rng(0))
    envs = KeyedSyncVectorEnv([env_factory("MetaRL/ML1-v0", {"env_name": name})] * 20, ["success"], copy=False)
    policy = GaussianMLPPolicy(env.observation_space.shape[0], env.action_space.shape[0], (128, 128))
    params = per_task(parameters_of(policy), 2)
    rollout = Rollout(500, env.action_space, "normalize", 1.0, {"success": "any"}, torch.device("cpu"))
    copies = [task for task in tasks for _ in range(10)]
    return envs, policy, params, rollout, copies, torch.randn(500, 2, 10, 4)


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    envs, policy, params, rollout, copies, noise = one_round(name)
    spent: dict[str, list[float]] = {"reset": [], "rollout": [], "policy_actions_replayed": [], "random": []}
    for repeat in range(4):
        set_tasks(envs, copies)
        start = time.process_time()
        obs, _ = envs.reset(seed=list(range(20)))
        spent["reset"].append(time.process_time() - start)
        start = time.process_time()
        with torch.no_grad():
            episodes = rollout.run(
                envs,
                obs,
                policy,
                params,
                noise.numpy(),
                np.ones(20, bool),
                copies,
            )
        spent["rollout"].append(time.process_time() - start)
        replay = np.clip(episodes.actions.permute(2, 0, 1, 3).reshape(500, 20, 4).numpy(), -1, 1)
        uniform = np.random.default_rng(repeat).uniform(-1, 1, (500, 20, 4))
        for key, actions in (("policy_actions_replayed", replay), ("random", uniform)):
            set_tasks(envs, copies)
            envs.reset(seed=list(range(20)))
            start = time.process_time()
            for action in actions.astype(np.float32):
                envs.step(action)
            spent[key].append(time.process_time() - start)
    for key, values in spent.items():
        print(f"{name} {key:<26} " + " ".join(f"{v:.2f}" for v in values) + f"   median {np.median(values):.3f} CPU-s")
