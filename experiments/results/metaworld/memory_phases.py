"""Resident memory of the training process (and its worker) through one MAML-TRPO iteration of
ML1 reach-v3 at the paper's sizes (20 tasks x 10 episodes x 500 steps, env.workers 2).

    python experiments/results/metaworld/memory_phases.py
"""

import torch

from metarl.config import load_config
from metarl.training import build_training, training_iteration, with_threads_resolved


def memory(pid: int | str = "self") -> str:
    """Current and peak resident memory of a process (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    current, peak = (int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
    return f"RSS {current:,.0f} MiB, peak {peak:,.0f} MiB"


if __name__ == "__main__":
    print("training process, imports done:", memory())
    config = with_threads_resolved(load_config("experiments/metaworld_ml1_reach.yaml"))
    torch.set_num_threads(config.train.num_threads)
    state = build_training(config)
    print("training process, built:", memory())
    training_iteration(state)
    print("training process, after one iteration:", memory())
    for envs in state.sampler._vector_envs.values():
        for pid in getattr(envs, "worker_pids", ()):
            print(f"worker process {pid}, after one iteration:", memory(pid))
    state.sampler.close()
