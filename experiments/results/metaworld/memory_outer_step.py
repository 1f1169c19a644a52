"""Resident memory of the training process through N MAML-TRPO iterations of ML1 reach-v3 at the
paper's sizes (20 tasks x 10 episodes x 500 steps, env.workers 2), phase by phase (MiB): the peak of
each phase above the memory before it (Linux: the peak is reset before each phase through
/proc/self/clear_refs), and the memory after it.

    python experiments/results/metaworld/memory_outer_step.py 4
"""

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import metarl.outer.trpo as trpo
import metarl.training as training
from metarl.config import load_config
from metarl.training import build_training, training_iteration, with_threads_resolved


def memory(pid: int | str = "self") -> tuple[float, float]:
    """Current and peak resident memory of a process in MiB (VmRSS, VmHWM)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


peaks: list[float] = []  # of the phases of the current iteration


def traced(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = memory()[0]
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        result = function(*args, **kwargs)
        after, peak = memory()
        peaks.append(peak)
        print(f"  {name:<22} before {before:6,.0f}  peak {peak:6,.0f} (+{peak - before:4,.0f})  after {after:6,.0f}")
        return result

    return wrapper


training.sample_meta_batch = traced("sampling and inner step", training.sample_meta_batch)
trpo.adaptation_curvature = traced("curvature set-up", trpo.adaptation_curvature)
trpo.AdaptationCurvature.meta_gradient = traced("meta-gradient", trpo.AdaptationCurvature.meta_gradient)
trpo.conjugate_gradient = traced("conjugate gradient", trpo.conjugate_gradient)
trpo.line_search = traced("line search", trpo.line_search)

if __name__ == "__main__":
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    config = with_threads_resolved(load_config("experiments/metaworld_ml1_reach.yaml"))
    torch.set_num_threads(config.train.num_threads)
    state = build_training(config)
    print(f"built: {memory()[0]:,.0f} MiB")
    for i in range(iterations):
        peaks.clear()
        training_iteration(state)
        print(f"iteration {i + 1}: peak {max(peaks):,.0f} MiB, {memory()[0]:,.0f} MiB after it", flush=True)
    for envs in state.sampler._vector_envs.values():
        for pid in getattr(envs, "worker_pids", ()):
            print(f"worker process: {memory(pid)[0]:,.0f} MiB, peak {memory(pid)[1]:,.0f} MiB")
    state.sampler.close()
