"""Inside one rollout of 20 copies of an ML1 task (2 tasks x 10 episodes, 500 steps, one process):
CPU seconds in the vector env's ``step`` against the rest of the loop, and the same steps replayed
without the policy in between; 4 repeats.

    python experiments/results/metaworld/free_running/step_share.py reach-v3
"""

import sys
import time

import numpy as np
import torch
from round_cost import one_round  # this folder is on sys.path when the script runs

from metarl.tasks import set_tasks

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    envs, policy, params, rollout, copies, noise = one_round(name)
    step = envs.step
    in_step = [0.0]

    def timed_step(actions: np.ndarray) -> tuple:
        start = time.process_time()
        result = step(actions)
        in_step[0] += time.process_time() - start
        return result

    envs.step = timed_step
    for _ in range(4):
        set_tasks(envs, copies)
        obs, _ = envs.reset(seed=list(range(20)))
        in_step[0] = 0.0
        start = time.process_time()
        with torch.no_grad():
            act = noise.numpy()  # the Gaussian noise of the horizon
            episodes = rollout.run(envs, obs, policy, params, act, np.ones(20, bool), copies)
        total = time.process_time() - start
        actions = episodes.actions.permute(2, 0, 1, 3).reshape(500, 20, -1).clamp(-1, 1).numpy()
        set_tasks(envs, copies)
        envs.reset(seed=list(range(20)))
        start = time.process_time()
        for action in actions:
            step(action)
        replay = time.process_time() - start
        print(
            f"{name} rollout {total:.3f} CPU-s, of which envs.step {in_step[0]:.3f} s and the rest "
            f"{total - in_step[0]:.3f} s; the same steps replayed {replay:.3f} s"
        )
