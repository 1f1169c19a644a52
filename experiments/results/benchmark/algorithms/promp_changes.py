"""What each of the 2026-12-03 changes gives ProMP at 2D navigation's paper sizes
(experiments/navigation_2d_promp_fast.yaml: 3 bfloat16 epochs, spare episodes): the meta-iteration
with today's code, with packed rows of a new length every iteration (no `bucketed`), and with
autograd's own backward of the batched layers (no `BatchedLinear`). Each variant runs 20
iterations in a fresh process; reported: the median iteration of the last 15, the page faults
per iteration (the heap growing), and the resident memory at the end.

    python experiments/results/benchmark/algorithms/promp_changes.py
"""

import multiprocessing
import resource
import statistics
import time

# isort: off
import metarl  # noqa: F401  (before torch: idle OpenMP threads sleep)
import torch

# isort: on

from metarl import episodes, policies
from metarl.config import load_config
from metarl.training import build_training, training_iteration, with_threads_resolved

CONFIG = "experiments/navigation_2d_promp_fast.yaml"
ITERATIONS = 20


def autograd_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def run(variant: str) -> dict[str, float]:
    if variant == "no bucketed row lengths":
        episodes.bucketed = lambda n: n
    elif variant == "autograd's backward":
        policies.BatchedLinear.apply = autograd_linear
    config = with_threads_resolved(load_config(CONFIG, []))
    torch.set_num_threads(config.train.num_threads)
    state = build_training(config)
    seconds, faults = [], []
    for _ in range(ITERATIONS):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        training_iteration(state)
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * resource.getpagesize()
    state.sampler.close()
    return {
        "iteration_s": statistics.median(seconds[5:]),
        "faults_per_iteration": statistics.mean(faults[5:]),
        "resident_mib": resident / 2**20,
    }


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    for variant in ("today's code", "no bucketed row lengths", "autograd's backward"):
        with context.Pool(1) as pool:
            result = pool.apply(run, (variant,))
        print(
            f"{variant:<26} iteration {result['iteration_s']:.3f} s   "
            f"{result['faults_per_iteration']:8.0f} page faults per iteration   "
            f"{result['resident_mib']:5.0f} MiB resident after {ITERATIONS} iterations"
        )
