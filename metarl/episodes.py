"""Episodes: the batch every part of metarl passes around, and its tensor operations.

A batch holds B tasks × E episodes × T steps, task-major with time last. Steps after an episode
ended are padding (mask 0). The sampler produces them; advantages, the inner loop, the meta-
objective, the curvature products and the outer algorithms consume them. This module imports
nothing else of metarl, so all of those can use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class Episodes:
    """A batch of episodes for B tasks × E episodes × T steps (task-major, time last).

    Steps after an episode ended are padding: `mask` is 0 there and rewards are 0.
    """

    observations: Tensor  # [B, E, T, obs_dim]
    actions: Tensor  # [B, E, T, act_dim] (continuous) or [B, E, T] (discrete)
    rewards: Tensor  # [B, E, T]
    mask: Tensor  # [B, E, T], 1 on steps that belong to the episode
    log_probs: Tensor  # [B, E, T], log π(a|s) under the policy that sampled the actions
    advantages: Tensor | None = None  # [B, E, T], filled in by `inner.estimate_advantages`
    # Packed rows only (`pack_steps`): [B, 1, N], the index in the row of the first step of each
    # step's episode, for objectives that sum over an episode's earlier steps (DiCE).
    first_step: Tensor | None = None
    # Per episode ``[B, E]``: numbers folded from the step infos (`metarl.info_metrics`), e.g.
    # "success"; NaN where an episode's steps did not report one.
    metrics: dict[str, Tensor] | None = None

    @property
    def returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[B, E]`` (0 for padding rows)."""
        return (self.rewards * self.mask).sum(-1)

    @property
    def mean_returns(self) -> Tensor:
        """Mean undiscounted episode return of every task, ``[B]``; padding rows do not count."""
        episodes = self.mask[..., 0]
        return (self.returns * episodes).sum(-1) / episodes.sum(-1).clamp(min=1)

    @property
    def mean_metrics(self) -> dict[str, Tensor]:
        """Every info metric's mean over each task's episodes, ``[B]`` (NaN for a task without values)."""
        if not self.metrics:
            return {}
        episodes = self.mask[..., 0] > 0
        means = {}
        for name, values in self.metrics.items():
            counted = episodes & ~torch.isnan(values)
            total = torch.where(counted, values, torch.zeros_like(values)).sum(-1)
            count = counted.sum(-1)
            means[name] = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))
        return means

    @property
    def num_steps(self) -> int:
        """Environment steps in the batch (padding excluded)."""
        return int(self.mask.sum().item())


def concat_episodes(batches: Sequence[Episodes]) -> Episodes:
    """Join batches along the episode dimension, padding shorter ones in time (mask 0)."""
    horizon = max(b.rewards.shape[-1] for b in batches)
    return Episodes(
        **{f: torch.cat([_pad(getattr(b, f), 2, horizon) for b in batches], dim=1) for f in FIELDS},
        metrics=_join_metrics(batches, lambda values: torch.cat(values, dim=1)),
    )


def bucketed(n: int) -> int:
    """`n` rounded up to one of 32 sizes per doubling (at most 1/32 more).

    Successive meta-batches then repeat a few row lengths, and glibc's malloc reuses the blocks
    the last iteration freed; with a fresh length each time its heap grows and every iteration
    faults in new pages (2D navigation with spare episodes, ProMP: 882 instead of 595 MiB after
    20 iterations; `experiments/results/benchmark/algorithms/promp_changes.txt`).
    """
    granularity = 1 << max(n.bit_length() - 6, 0)
    return -(-n // granularity) * granularity


def pack_steps(episodes: Episodes) -> Episodes:
    """All valid steps of each task in one row, ``[B, 1, N]`` with N the largest count over tasks
    (`bucketed`, padded with masked steps).

    The losses need no time structure once advantages are computed, so this drops the padding
    that episodes ending early (or a step budget with many short episodes) leave behind.
    """
    num_tasks = episodes.mask.shape[0]
    flat_mask = episodes.mask.reshape(num_tasks, -1)
    length = min(bucketed(int(flat_mask.sum(1).max().item())), flat_mask.shape[1])
    # A stable sort puts each task's valid steps first, in their original order.
    order = torch.argsort(flat_mask, dim=1, descending=True, stable=True)[:, :length]
    rows = torch.arange(num_tasks, device=order.device)[:, None]

    def gather(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        return x.reshape(num_tasks, -1, *x.shape[3:])[rows, order].unsqueeze(1)

    packed = {f: gather(getattr(episodes, f)) for f in (*FIELDS, "advantages")}
    # Valid steps keep their order, so an episode starts after the valid steps of the episodes before it.
    lengths = episodes.mask.sum(-1).long()  # [B, E]
    starts = (torch.cumsum(lengths, -1) - lengths).unsqueeze(-1).expand_as(episodes.mask)
    first_step = gather(starts).squeeze(1).clamp(max=max(length - 1, 0)).unsqueeze(1)
    return Episodes(**packed, first_step=first_step)


def stack_tasks(batches: Sequence[Episodes]) -> Episodes:
    """Join one-task batches along the task dimension, padding episodes and time (mask 0)."""
    horizon = max(b.rewards.shape[-1] for b in batches)
    rows = max(b.rewards.shape[1] for b in batches)
    return Episodes(
        **{f: torch.cat([_pad(_pad(getattr(b, f), 2, horizon), 1, rows) for b in batches], dim=0) for f in FIELDS},
        metrics=_join_metrics(batches, lambda values: torch.cat([_pad(v, 1, rows, float("nan")) for v in values])),
    )


def first_episodes_within(episodes: Episodes, budget: int) -> Episodes:
    """The episodes (of one task) that started before `budget` steps had been collected."""
    lengths = episodes.mask[0].sum(-1)
    keep = (torch.cumsum(lengths, 0) - lengths) < budget
    metrics = None if episodes.metrics is None else {k: v[:, keep] for k, v in episodes.metrics.items()}
    return Episodes(**{f: getattr(episodes, f)[:, keep] for f in FIELDS}, metrics=metrics)


def select_tasks(episodes: Episodes, rows: slice | Tensor) -> Episodes:
    """The episodes of some tasks (a slice or index of the task dimension), with every field they
    carry (advantages and info metrics too)."""

    def part(value: Tensor | dict[str, Tensor] | None) -> Tensor | dict[str, Tensor] | None:
        if isinstance(value, dict):  # the info metrics
            return {key: v[rows] for key, v in value.items()}
        return None if value is None else value[rows]

    return Episodes(**{field.name: part(getattr(episodes, field.name)) for field in dataclasses.fields(Episodes)})


def _join_metrics(batches: Sequence[Episodes], join: Callable[[list[Tensor]], Tensor]) -> dict[str, Tensor] | None:
    """The info metrics of batches being joined: those that every batch has."""
    if any(b.metrics is None for b in batches):
        return None
    names = set.intersection(*(set(b.metrics) for b in batches))
    return {name: join([b.metrics[name] for b in batches]) for name in sorted(names)}


def _pad(x: Tensor, dim: int, size: int, value: float = 0.0) -> Tensor:
    """Pad `x` along `dim` to `size` with `value` (zeros)."""
    missing = size - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


FIELDS = ("observations", "actions", "rewards", "mask", "log_probs")


def every_nth_step(episodes: Episodes, stride: int) -> Episodes:
    """Every stride-th step of each task's packed row (`pack_steps`): a cheaper curvature sample."""
    steps = (*FIELDS, "advantages", "first_step")
    return Episodes(**{f: _every(getattr(episodes, f), stride) for f in steps})


def _every(x: Tensor | None, stride: int) -> Tensor | None:
    return None if x is None else x[:, :, ::stride]
