"""One process, the other core idle: env steps/s of K copies of an ML1 task stepped in turn with
random actions (K = 1, 2, 5, 10, 20; 10,000 steps each, 500-step episodes, resets not timed), and
MuJoCo's physics alone (`mj_step` x frame skip) on 20 copies with their own models, on one copy,
and on 20 copies' data sharing one model. Alternated N times.

    python experiments/results/metaworld/free_running/copies_in_turn.py reach-v3 3

A Meta-World copy's MjModel holds ~20 MiB (its meshes), its MjData 0.17 MiB: what the CPU's caches
cannot keep for 20 copies is mostly their models.
"""

import sys
import time

import mujoco
import numpy as np

from metarl.make import make_env
from metarl.tasks import sample_tasks

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    envs = [make_env("MetaRL/ML1-v0", {"env_name": name}) for _ in range(20)]
    task = sample_tasks(envs[0].unwrapped, 1, np.random.default_rng(0))[0]
    for env in envs:
        env.unwrapped.task = task
    uniform = np.random.default_rng(0).uniform(-1, 1, (500, 20, 4)).astype(np.float32)
    sims = [env.unwrapped._sim for env in envs]
    model = sims[0].model
    print(f"{name}: MjModel {model.nbuffer / 2**20:.1f} MiB, MjData {sims[0].data.nbuffer / 2**20:.2f} MiB per copy")

    def in_turn(k: int) -> float:
        spent = 0.0
        for block in range(20 // k):
            group = envs[block * k : (block + 1) * k]
            for i, env in enumerate(group):
                env.reset(seed=block * k + i)
            start = time.perf_counter()
            for t in range(500):
                for j, env in enumerate(group):
                    env.step(uniform[t, block * k + j])
            spent += time.perf_counter() - start
        return 10000 / spent

    shared = [mujoco.MjData(model) for _ in sims]
    for data, sim in zip(shared, sims, strict=True):
        data.qpos[:], data.qvel[:], data.mocap_pos[:] = sim.data.qpos, sim.data.qvel, sim.data.mocap_pos

    def physics(pairs: list) -> float:
        start = time.perf_counter()
        for i in range(4000):
            m, d = pairs[i % len(pairs)]
            mujoco.mj_step(m, d, nstep=sims[0].frame_skip)
        return 4000 / (time.perf_counter() - start)

    runs = {
        **{f"{k} {'copy' if k == 1 else 'copies'} in turn": (lambda k=k: in_turn(k)) for k in (1, 2, 5, 10, 20)},
        "physics, 1 copy": lambda: physics([(sims[0].model, sims[0].data)]),
        "physics, 20 own models": lambda: physics([(s.model, s.data) for s in sims]),
        "physics, 20 datas, 1 model": lambda: physics([(model, d) for d in shared]),
    }
    rates: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            rates[key].append(run())
    for key, values in rates.items():
        base = np.median(rates["physics, 1 copy" if key.startswith("physics") else "1 copy in turn"])
        print(
            f"{key:<28}"
            + " ".join(f"{x:7,.0f}" for x in values)
            + f"   median {np.median(values):7,.0f} ({np.median(values) / base:.2f} x one copy)"
        )
