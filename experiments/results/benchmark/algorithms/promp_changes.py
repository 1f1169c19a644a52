"""What two of the 2026-12-03 changes give ProMP at 2D navigation's paper sizes
(experiments/navigation_2d_promp_fast.yaml: 3 bfloat16 epochs, spare episodes).

1. `BatchedLinear` against autograd's own backward of the batched layers: one process, the two
   alternating from one meta-iteration to the next (the host's speed drifts between minutes, so
   separate runs do not compare); medians of 20 iterations each after 4 of warm-up.
2. Packed rows of recurring lengths (`bucketed`) against a new length every iteration: what it is
   for, memory. Each variant trains 20 iterations in a fresh process, alternated `ROUNDS` times;
   page faults per iteration (the heap growing) and resident memory at the end, medians over the
   rounds, and the median iteration for reference.

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
ROUNDS = 3


def training_state():  # noqa: ANN201
    config = with_threads_resolved(load_config(CONFIG, []))
    torch.set_num_threads(config.train.num_threads)
    return build_training(config)


def backward_alternated() -> dict[str, dict[str, float]]:
    """Median iteration and outer step with each backward, alternating iteration by iteration."""
    state = training_state()
    layers = {"BatchedLinear": policies.BatchedLinear.apply, "autograd": policies.batched_affine}
    spent: dict[str, list[tuple[float, float]]] = {name: [] for name in layers}
    for i in range(4 + 2 * ITERATIONS):
        name = list(layers)[i % 2]
        policies.BatchedLinear.apply = layers[name]
        start = time.perf_counter()
        _, metrics = training_iteration(state)
        if i >= 4:
            spent[name].append((time.perf_counter() - start, metrics["time/outer_s"]))
    state.sampler.close()
    return {
        name: {"iteration_s": statistics.median(t for t, _ in v), "outer_s": statistics.median(o for _, o in v)}
        for name, v in spent.items()
    }


def rows(bucketed: bool) -> dict[str, float]:
    if not bucketed:
        episodes.bucketed = lambda n: n
    state = training_state()
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
        "faults_per_iteration": statistics.mean(faults[5:]),
        "resident_mib": resident / 2**20,
        "iteration_s": statistics.median(seconds[5:]),
    }


def in_fresh_process(function, *args):  # noqa: ANN001, ANN002, ANN201
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


if __name__ == "__main__":
    for name, result in in_fresh_process(backward_alternated).items():
        print(
            f"backward {name:<14} iteration {result['iteration_s']:.3f} s, outer step {result['outer_s']:.3f} s "
            f"(median of {ITERATIONS}, alternated in one process)"
        )
    results: dict[str, list[dict[str, float]]] = {"bucketed": [], "a new length": []}
    for _ in range(ROUNDS):
        for name in results:
            results[name].append(in_fresh_process(rows, name == "bucketed"))
    for name, rounds in results.items():
        median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        each = ", ".join(f"{r['resident_mib']:.0f}" for r in rounds)
        print(
            f"rows {name:<14} {median['faults_per_iteration']:6.0f} page faults per iteration, "
            f"{median['resident_mib']:4.0f} MiB resident after {ITERATIONS} iterations "
            f"(each round: {each} MiB), "
            f"iteration {median['iteration_s']:.3f} s (medians of {ROUNDS} alternated processes)"
        )
