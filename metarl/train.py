"""Meta-training: the outer loop of MAML, top to bottom."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from metarl.checkpoint import save_checkpoint
from metarl.config import Config
from metarl.functional import parameters_of
from metarl.logger import RunLogger
from metarl.maml import MetaBatch, meta_step, sample_meta_batch
from metarl.policies import make_policy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits, task_to_json


def make_run_dir(config: Config) -> Path:
    """``<logdir>/<run_name>``, by default ``<env>__seed<seed>__<timestamp>``."""
    name = config.train.run_name
    if name is None:
        env = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.env.id.split("/")[-1])
        name = f"{env}__seed{config.train.seed}__{datetime.datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(config.train.logdir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def iteration_metrics(batch: MetaBatch, stats: dict[str, float], policy: torch.nn.Module) -> dict[str, float]:
    """What a researcher watches: returns before and after adaptation, losses, KL, timings."""
    returns = [task_returns.mean().item() for task_returns in batch.returns]
    metrics = {
        "returns/pre_adaptation": returns[0],
        "returns/post_adaptation": returns[-1],
        "returns/adaptation_gain": returns[-1] - returns[0],
    }
    if len(returns) > 2:
        metrics.update({f"returns/after_step_{k}": r for k, r in enumerate(returns[1:], start=1)})
    if hasattr(policy, "log_std"):
        metrics["policy/std"] = policy.log_std.exp().mean().item()
    metrics.update(stats)
    metrics["time/batch_env_steps"] = float(sum(e.num_steps for e in (*batch.inner, batch.outer)))
    return metrics


def checkpoint_payload(
    config: Config, policy: torch.nn.Module, optimizer: Any, iteration: int, splits: TaskSplits, sampler: Sampler
) -> dict[str, Any]:
    """Everything a checkpoint holds, copied so that later training does not change it."""
    return copy.deepcopy(
        {
            "config": config.to_dict(),
            "iteration": iteration,
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "observation_shape": list(sampler.observation_space.shape),
            "action_space": repr(sampler.action_space),
            "rng": {
                "torch": torch.get_rng_state(),
                "tasks": splits.state(),
                "sampler": sampler.rng.bit_generator.state,
            },
        }
    )


def train(config: Config, run_dir: Path | None = None, progress: bool = True) -> Path:
    """Meta-train a policy with MAML as configured; returns the run directory.

    The run directory holds ``config.yaml``, ``test_tasks.json`` (the held-out tasks), TensorBoard
    event files, ``metrics.jsonl`` and ``checkpoints/``.
    """
    # --- setup: seeds, environments, policy, held-out tasks, outer optimiser, logs
    torch.manual_seed(config.train.seed)
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    inner, episodes_per_task = config.inner, config.inner.episodes_per_task
    if config.train.algo != "maml":
        # The baselines take no inner step; each iteration samples as many episodes per task as
        # MAML's pre- and post-adaptation batches hold together.
        inner = dataclasses.replace(config.inner, steps=0)
        episodes_per_task *= config.inner.steps + 1
    # first: a bad environment leaves no run directory behind
    sampler = Sampler.from_config(config, episodes_per_task)
    run_dir = run_dir or make_run_dir(config)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy).to(config.train.device)
    splits = TaskSplits(sampler.env, config.train.seed, config.evaluation.seed, config.evaluation.num_tasks)
    (run_dir / "test_tasks.json").write_text(json.dumps([task_to_json(t) for t in splits.test], indent=1))
    optimizer = None
    if config.outer.algo == "adam":
        optimizer = torch.optim.Adam(parameters_of(policy).values(), lr=config.outer.lr)
    elif config.outer.algo == "sgd":
        optimizer = torch.optim.SGD(parameters_of(policy).values(), lr=config.outer.lr)
    logger = RunLogger(run_dir, config.to_dict(), config.train.iterations, progress=progress)
    env_steps, log_s = 0, 0.0
    completed = checkpoint_payload(config, policy, optimizer, 0, splits, sampler)  # the last finished iteration

    try:
        for iteration in range(1, config.train.iterations + 1):
            start = time.perf_counter()
            # --- Alg. 3 line 3: sample a batch of training tasks (never a held-out test task)
            tasks = splits.sample_train(config.outer.tasks_per_batch)
            # --- lines 4-8: pre-adaptation episodes, inner step, post-adaptation episodes
            #     (pretrain and oracle: no inner step, the outer step is on θ's own episodes)
            batch = sample_meta_batch(sampler, policy, tasks, inner, config.advantages)
            # --- line 10: outer update of θ from the post-adaptation returns
            outer_start = time.perf_counter()
            stats = meta_step(policy, batch, inner, config.outer, optimizer)
            end = time.perf_counter()

            metrics = iteration_metrics(batch, stats, policy)
            env_steps += int(metrics.pop("time/batch_env_steps"))
            metrics.update(
                {
                    "time/env_steps": float(env_steps),
                    "time/env_steps_per_s": sum(e.num_steps for e in (*batch.inner, batch.outer))
                    / max(batch.timings["sample_s"], 1e-9),
                    "time/sample_s": batch.timings["sample_s"],
                    "time/advantages_s": batch.timings["advantages_s"],
                    "time/adapt_s": batch.timings["adapt_s"],
                    "time/outer_s": end - outer_start,
                    "time/iteration_s": end - start,
                    "time/previous_log_s": log_s,  # logging and checkpointing of the iteration before
                }
            )
            log_start = time.perf_counter()
            logger.log(iteration, metrics, [task_to_json(task) for task in tasks])
            completed = checkpoint_payload(config, policy, optimizer, iteration, splits, sampler)
            if iteration % config.train.checkpoint_every == 0 and iteration != config.train.iterations:
                save_checkpoint(run_dir / "checkpoints" / f"iter_{iteration:06d}.pt", completed)
            log_s = time.perf_counter() - log_start
        save_checkpoint(run_dir / "checkpoints" / "final.pt", completed)
    except BaseException:
        # Interrupted or failed mid-iteration (the parameters may be half-updated): keep the state
        # after the last finished iteration, so no finished work is lost.
        if completed["iteration"] > 0:
            save_checkpoint(run_dir / "checkpoints" / "last.pt", completed)
            logger.message(
                f"stopped during iteration {completed['iteration'] + 1}; the state after iteration "
                f"{completed['iteration']} is in {run_dir / 'checkpoints' / 'last.pt'}"
            )
        raise
    finally:
        logger.close()
        sampler.close()
    return run_dir
