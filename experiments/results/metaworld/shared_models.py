"""Copies of one Meta-World task sharing one MuJoCo model (`envs.metaworld._SHARED_MODELS`) against
each copy on a model of its own.

    python experiments/results/metaworld/shared_models.py check        # all 50 task classes
    python experiments/results/metaworld/shared_models.py speed reach-v3 5

``check``: for every one of Meta-World's 50 task classes, 4 copies (2 tasks x 2 copies, then the
tasks swapped among the copies, then 2 new tasks interleaved) run 150 steps of the same random
actions on shared models and on models of their own; observations, rewards and successes must be equal bit for bit.

``speed``: in fresh processes, alternated N times, 20 copies (2 tasks x 10, ML1 sizes' share of one
process) built, reset and stepped in turn for 500 steps with random actions, one process at a time:
env steps/s and the process's resident memory after building and at the end.
"""

import os
import subprocess
import sys
import time

import numpy as np

import envs.metaworld as metaworld_env
from envs.metaworld import MetaWorldEnv


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def private_models() -> None:
    """Every copy on a model of its own, as before models were shared."""
    metaworld_env._share = lambda key, make: make()


# Which training task each of 4 copies runs, round by round: two tasks, swapped among the copies,
# then two new tasks interleaved.
ROUNDS = ((0, 0, 1, 1), (1, 1, 0, 0), (2, 3, 2, 3))


def episodes(name: str, steps: int) -> dict[str, np.ndarray]:
    envs = [MetaWorldEnv("ML1", name) for _ in ROUNDS[0]]
    train = envs[0].task_lists()["train"]
    rng = np.random.default_rng(0)
    records: dict[str, list] = {"obs": [], "reward": [], "success": []}
    for tasks in ROUNDS:
        for env, task in zip(envs, tasks, strict=True):
            env.task = train[task]
        records["obs"].append([env.reset(seed=i)[0] for i, env in enumerate(envs)])
        for _ in range(steps):
            actions = rng.uniform(-1, 1, (len(envs), 4))
            results = [env.step(a) for env, a in zip(envs, actions, strict=True)]
            records["obs"].append([result[0] for result in results])
            records["reward"].append([result[1] for result in results])
            records["success"].append([result[4]["success"] for result in results])
    for env in envs:
        env.close()
    return {key: np.array(value) for key, value in records.items()}


def check() -> None:
    import metaworld

    names = sorted(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
    differ = []
    for name in names:
        subprocess.run([sys.executable, __file__, "check-one", name, "private"], check=True)
        subprocess.run([sys.executable, __file__, "check-one", name, "shared"], check=True)
        private, shared = np.load("/tmp/shared_models_private.npz"), np.load("/tmp/shared_models_shared.npz")
        same = all(np.array_equal(private[key], shared[key]) for key in private.files)
        print(f"{name:32s} {'equal' if same else 'DIFFERENT'}", flush=True)
        differ += [] if same else [name]
    print(f"{len(names) - len(differ)} of {len(names)} classes equal bit for bit; different: {differ or 'none'}")


def speed_once(name: str, mode: str) -> None:
    if mode == "private":
        private_models()
    envs = [MetaWorldEnv("ML1", name) for _ in range(20)]
    train = envs[0].task_lists()["train"]
    for i, env in enumerate(envs):
        env.task = train[i // 10]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    built = rss_mib()
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 20, 4))
    start = time.perf_counter()
    for t in range(500):
        for env, action in zip(envs, actions[t], strict=True):
            env.step(action)
    rate = 10_000 / (time.perf_counter() - start)
    print(f"{mode:8s} {rate:7,.0f} env steps/s   RSS {built:6,.0f} MiB built, {rss_mib():6,.0f} MiB after")


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "check":
        check()
    elif command == "check-one":
        name, mode = sys.argv[2], sys.argv[3]
        if mode == "private":
            private_models()
        np.savez(f"/tmp/shared_models_{mode}.npz", **episodes(name, steps=150))
    elif command == "speed":
        name, repeats = sys.argv[2], int(sys.argv[3])
        for _ in range(repeats):
            for mode in ("private", "shared"):
                subprocess.run([sys.executable, __file__, "speed-once", name, mode], check=True)
    elif command == "speed-once":
        speed_once(sys.argv[2], sys.argv[3])
