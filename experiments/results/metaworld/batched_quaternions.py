"""A process's Meta-World copies computing their objects' quaternions in one scipy call per step
(`envs.metaworld.MetaWorldEnv.finish_steps`, through `metarl.workers.KeyedSyncVectorEnv`) against
each copy computing its own inside `step`, as Meta-World does.

    python experiments/results/metaworld/batched_quaternions.py check          # all 50 task classes
    python experiments/results/metaworld/batched_quaternions.py speed reach-v3 5
    python experiments/results/metaworld/batched_quaternions.py scipy

``check``: for every one of Meta-World's 50 task classes, 4 copies of 2 training tasks in a
``KeyedSyncVectorEnv`` (horizon 100) step 120 times with the same random actions (an autoreset
included), once finishing their steps together and once each on its own; observations, rewards and
successes must be equal bit for bit. It names the classes whose quaternions are left to
``finish_steps`` (those whose observation uses ``scipy.spatial.transform.Rotation``).

``speed``: in one process, 20 copies (2 tasks x 10, ML1 sizes' share of one process) step 500 times
in a ``KeyedSyncVectorEnv`` with random actions, both ways alternated N times: env steps per CPU
second (CPU time, so that other load on the host weighs less).

``scipy``: what one ``Rotation.from_matrix(m).as_quat()`` costs for one matrix and for 20.
"""

import sys
import time
import timeit

import numpy as np
from scipy.spatial.transform import Rotation

from envs.metaworld import benchmark_tasks
from metarl.make import env_factory
from metarl.workers import KeyedSyncVectorEnv

ML1 = "MetaRL/ML1-v0"


def vector_env(name: str, copies: int, horizon: int, together: bool) -> KeyedSyncVectorEnv:
    """`copies` copies of the first two training tasks (half each), finishing their steps together or not."""
    envs = KeyedSyncVectorEnv([env_factory(ML1, {"env_name": name}, horizon)] * copies, ["success"])
    if not together:
        envs._finish_steps = None
        for env in envs.envs:
            env.unwrapped.finish_steps_later = False
    tasks = benchmark_tasks("ML1", name, 0)["train"]
    for i, env in enumerate(envs.envs):
        env.unwrapped.task = tasks[2 * i // copies]
    return envs


def episodes(name: str, together: bool) -> tuple[list[np.ndarray], bool]:
    envs = vector_env(name, 4, 100, together)
    deferred = envs._finish_steps is not None and envs.envs[0].unwrapped._rotations is not None
    rng = np.random.default_rng(0)
    records = [envs.reset(seed=3)[0]]
    for _ in range(120):
        obs, reward, _, _, info = envs.step(rng.uniform(-1, 1, (4, 4)))
        records += [
            obs.copy(),
            reward.copy(),
            np.asarray(info.get("success", np.zeros(4))).copy(),
        ]  # none at an autoreset
    envs.close()
    return records, deferred


def check() -> None:
    import metaworld

    names = sorted(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
    differ, batched = [], []
    for name in names:
        together, deferred = episodes(name, True)
        alone, _ = episodes(name, False)
        same = all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True))
        differ += [] if same else [name]
        batched += [name] if deferred else []
        print(
            f"{name:<30} quaternions {'finished together' if deferred else 'in step (no scipy)':<19} "
            f"{'equal bit for bit' if same else 'DIFFERENT'}",
            flush=True,
        )
    print(
        f"\n{len(names) - len(differ)} of {len(names)} classes equal bit for bit; "
        f"{len(batched)} finish their quaternions together"
    )


def speed(name: str, repeats: int) -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 20, 4))
    envs = {together: vector_env(name, 20, 500, together) for together in (False, True)}
    rates: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for together in (False, True):
            envs[together].reset(seed=r)
            start = time.process_time()
            for step in actions:
                envs[together].step(step)
            rates[together].append(len(actions) * 20 / (time.process_time() - start))
    for together in (False, True):
        how = "together (one scipy call a step)" if together else "each copy in its step (Meta-World)"
        each = " ".join(f"{x:,.0f}" for x in rates[together])
        print(f"{name}, quaternions {how:<36} {each}   median {np.median(rates[together]):,.0f} env steps/CPU-s")
    pairs = [t / a for t, a in zip(rates[True], rates[False], strict=True)]
    print("together / alone, per pair: " + " ".join(f"{x:.2f}" for x in pairs) + f"   median {np.median(pairs):.2f}")


def scipy_cost() -> None:
    matrices = Rotation.random(20, random_state=0).as_matrix()
    for count in (1, 20):
        m = matrices[0] if count == 1 else matrices
        seconds = min(timeit.repeat(lambda m=m: Rotation.from_matrix(m).as_quat(), number=2000, repeat=5)) / 2000
        print(f"Rotation.from_matrix(...).as_quat() for {count:>2} matrices: {1e6 * seconds:.1f} µs")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "check"
    if command == "check":
        check()
    elif command == "speed":
        speed(sys.argv[2] if len(sys.argv) > 2 else "reach-v3", int(sys.argv[3]) if len(sys.argv) > 3 else 5)
    elif command == "scipy":
        scipy_cost()
    else:
        sys.exit(f"unknown command {command!r}: check, speed TASK N, or scipy")
