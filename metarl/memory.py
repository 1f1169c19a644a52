"""Will it fit? Memory estimates checked before anything large is allocated.

A size typed one digit too long (``inner.episodes_per_task=10**9``, ``env.horizon=10**9``,
``policy.hidden_sizes=[10**8, 10**8]``) would otherwise grow until the kernel kills the process,
or end in an allocator's traceback. The estimates are upper bounds of the largest allocations
(episode tensors, per-task parameters, the outer step's cached activations); a run whose
estimate exceeds the memory available now is refused with a `ConfigError` naming the keys.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import os
from collections.abc import Sequence

import gymnasium as gym
from gymnasium import spaces

from metarl.config import Config
from metarl.errors import ConfigError

FLOAT_BYTES = 4
# Episode tensors exist up to three times at once while sampling (the per-step list, the stacked
# tensors, and the packed rows with advantages).
EPISODE_COPIES = 3
# Cached activations per sampled step and hidden unit in the outer step (forward values, derivatives,
# R-operator passes of the inner and KL products).
ACTIVATION_COPIES = 8


@dataclasses.dataclass(frozen=True)
class Need:
    """An estimated allocation: its size, what it is, and the config keys that set it."""

    bytes: float
    what: str
    keys: tuple[str, ...]


# glibc's mallopt parameters, and the values `reuse_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of returning them.

    A meta-iteration allocates and frees the same activation-sized tensors (megabytes each) again
    and again. glibc serves such blocks with ``mmap`` at first and gives the top of its heap back
    to the kernel once 128 KiB of it is free, so each new tensor faults in zeroed pages afresh.
    At 2D navigation's paper sizes this took MAML-TRPO from 3.05 to 1.76 s per iteration and ProMP
    (3 bfloat16 epochs) from 0.62 to 0.51 s, with the same numbers
    (`experiments/results/benchmark/allocator/`). The process keeps the memory of its peak instead
    of shrinking between iterations. Process-wide, on glibc only; returns whether it took effect
    (elsewhere nothing changes).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux's MemAvailable; else free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.3g} PiB"


def check_fits(needs: Sequence[Need], available: int | None = None) -> None:
    """Raise `ConfigError` when the needs add up to more than the memory available."""
    available = available_memory() if available is None else available
    total = sum(need.bytes for need in needs)
    if available is None or total <= available:
        return
    largest = max(needs, key=lambda need: need.bytes)
    keys = list(largest.keys)
    raise ConfigError(
        [
            f"this run would need about {format_bytes(total)} of memory, more than the {format_bytes(available)} "
            f"available here: {largest.what} alone take about {format_bytes(largest.bytes)}; lower "
            + (", ".join(f"'{k}'" for k in keys[:-1]) + f" or '{keys[-1]}'" if len(keys) > 1 else f"'{keys[0]}'")
        ]
    )


def _numbers_per_step(observation_space: gym.Space, action_space: gym.Space) -> int:
    """Floats stored per environment step: observation, action, reward, mask, log-prob, advantage."""
    action = 1 if isinstance(action_space, spaces.Discrete) else math.prod(action_space.shape)
    return math.prod(observation_space.shape) + action + 4


def _parameters(observation_space: gym.Space, action_space: gym.Space, hidden_sizes: Sequence[int]) -> int:
    out = int(action_space.n) if isinstance(action_space, spaces.Discrete) else math.prod(action_space.shape)
    sizes = [math.prod(observation_space.shape), *hidden_sizes, out]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) + out


def episode_needs(
    num_tasks: int,
    episodes_per_task: int,
    horizon: int,
    batches: int,
    observation_space: gym.Space,
    action_space: gym.Space,
    hidden_sizes: Sequence[int],
    keys: tuple[str, ...],
    batch_unit: str = "episodes",
) -> list[Need]:
    """Episode tensors of `batches` batches and the activations the losses keep for them."""
    # Step-counted batches run rounds of E episodes until E × horizon steps are collected: up to
    # 2 × E × horizon steps stored per task.
    steps = float(num_tasks) * episodes_per_task * horizon * batches * (2 if batch_unit == "steps" else 1)
    per_step = _numbers_per_step(observation_space, action_space)
    return [
        Need(
            steps * per_step * EPISODE_COPIES * FLOAT_BYTES,
            f"the episodes ({num_tasks} tasks × {episodes_per_task} episodes × {horizon} steps × {batches} "
            f"batches × {per_step} numbers)",
            keys,
        ),
        Need(
            steps * sum(hidden_sizes) * ACTIVATION_COPIES * FLOAT_BYTES,
            f"the policy's activations on those episodes ({sum(hidden_sizes)} hidden units)",
            ("policy.hidden_sizes", *keys),
        ),
    ]


def parameter_needs(
    observation_space: gym.Space, action_space: gym.Space, hidden_sizes: Sequence[int], num_tasks: int, steps: int
) -> Need:
    """θ with its optimiser state, and every task's adapted copies and their gradients."""
    count = _parameters(observation_space, action_space, hidden_sizes)
    return Need(
        float(count) * (8 + 4 * num_tasks * (steps + 1)) * FLOAT_BYTES,
        f"the policy's {count:,} parameters, per task and inner step",
        ("policy.hidden_sizes",),
    )


def check_training_memory(
    config: Config, observation_space: gym.Space, action_space: gym.Space, horizon: int, episodes_per_task: int
) -> None:
    """Refuse a training configuration whose meta-batch cannot fit in the memory available."""
    keys = ("inner.episodes_per_task", "outer.tasks_per_batch", "env.horizon")
    batches = config.inner.steps + 1 if config.train.algo == "maml" else 1
    check_fits(
        [
            *episode_needs(
                config.outer.tasks_per_batch,
                episodes_per_task,
                horizon,
                batches,
                observation_space,
                action_space,
                config.policy.hidden_sizes,
                keys,
                config.env.batch_unit,
            ),
            parameter_needs(
                observation_space, action_space, config.policy.hidden_sizes, config.outer.tasks_per_batch, batches
            ),
        ]
    )


def check_evaluation_memory(
    config: Config, observation_space: gym.Space, action_space: gym.Space, horizon: int, batch_unit: str
) -> None:
    """Refuse an evaluation whose batch of held-out tasks cannot fit in the memory available."""
    evaluation = config.evaluation
    keys = ("evaluation.episodes_per_task", "evaluation.num_tasks", "env.horizon")
    check_fits(
        [
            *episode_needs(
                evaluation.num_tasks,
                evaluation.episodes_per_task,
                horizon,
                1,
                observation_space,
                action_space,
                config.policy.hidden_sizes,
                keys,
                batch_unit,
            ),
            parameter_needs(observation_space, action_space, config.policy.hidden_sizes, evaluation.num_tasks, 1),
        ]
    )
