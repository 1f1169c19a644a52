"""What a Meta-World reset costs next to an episode's steps, in one process (the other core idle):
a reset with the same task, a reset with a new task (the copy moves to another model, copying it the
first time), and 500 steps with random actions; medians of N repeats of 20 resets / one episode.

    python experiments/results/metaworld/reset_cost.py reach-v3 5

Meta-World's reset runs ``reset_model`` twice (once itself, once through Gymnasium's reset), each
resetting the hand with 50 physics steps of ``frame_skip`` substeps.
"""

import sys
import time

import numpy as np

from envs.metaworld import MetaWorldEnv

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    env = MetaWorldEnv("ML1", name)
    tasks = env.task_lists()["train"]
    env.task = tasks[0]
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 4))
    same, switching, episode = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(20):
            env.reset(seed=i)
        same.append((time.perf_counter() - start) / 20)
        start = time.perf_counter()
        for i in range(20):
            env.task = tasks[1 + i % 2]
            env.reset(seed=i)
        switching.append((time.perf_counter() - start) / 20)
        env.task = tasks[0]
        env.reset(seed=0)
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        episode.append(time.perf_counter() - start)
    reset, new_task, steps = (float(np.median(x)) * 1e3 for x in (same, switching, episode))
    print(f"{name}: reset {reset:.1f} ms (same task), {new_task:.1f} ms (new task); 500 steps {steps:.0f} ms")
    print(f"a reset is {reset / steps:.1%} of the episode's steps ({new_task / steps:.1%} with a new task)")
