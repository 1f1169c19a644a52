"""How many threads torch computes with: part of a run's arithmetic, so never left to process state.

Some of torch's reductions split their input into one chunk per thread and add the partial sums:
the dot products of the conjugate-gradient solve (BLAS ``sdot``) and sums over more than 32,768
elements. So the number of threads, not which thread runs when, sets the last bits of a result.
Measured on 2D navigation (100×100 policy, 10 tasks × 10 episodes): the meta-gradient and every
curvature product are bit-identical on 1 and 2 threads, but ``r·r`` in conjugate gradient is not,
and TRPO's step norm differs in the 4th digit after one iteration. With a fixed count, repeats are
bit-identical, also on a machine busy with other work.

So a training run computes with an explicit count (``train.num_threads``, resolved when null and
recorded in the run's config), evaluation and adaptation with one thread, and both restore the
caller's setting when they return.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")

# Evaluation and the deploy API adapt small batches: one thread costs little, and makes their
# numbers the same on every machine and in every process (`metarl train --evaluate` or not).
EVALUATION_THREADS = 1


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_evaluation_threads(function: Callable[P, R]) -> Callable[P, R]:
    """Run `function` with `EVALUATION_THREADS` torch threads (the caller's count is restored)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch_threads(EVALUATION_THREADS):
            return function(*args, **kwargs)

    return wrapper
