"""Meta-training: the outer loop of MAML, top to bottom, and resuming it exactly."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from metarl.checkpoint import CheckpointError, CheckpointKeeper, latest_checkpoint
from metarl.config import Config, ConfigError, config_from_dict
from metarl.curvature import has_fast_bfloat16, supports_fast_curvature
from metarl.functional import parameters_of
from metarl.logger import RunLogger
from metarl.maml import MetaBatch, meta_step, sample_meta_batch
from metarl.policies import make_policy
from metarl.sampler import NonFiniteError, Sampler
from metarl.tasks import TaskSplits, task_to_json

# What `metarl train --resume` may change: how the run is executed, never what it computes.
RESUMABLE_OVERRIDES = (
    "train.iterations",
    "train.num_threads",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "env.workers",
    "env.worker_timeout",
)


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (Ctrl-C or SIGTERM) after its state was saved."""


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


@dataclasses.dataclass
class TrainingState:
    """Everything that changes from one meta-iteration to the next; a checkpoint holds all of it,
    so a resumed run continues exactly as an uninterrupted one would."""

    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    splits: TaskSplits
    sampler: Sampler
    iteration: int = 0
    env_steps: int = 0
    best_return: float = float("-inf")

    def payload(self, config: Config) -> dict[str, Any]:
        """The checkpoint of this state, copied so that later training does not change it."""
        return copy.deepcopy(
            {
                "config": config.to_dict(),
                "iteration": self.iteration,
                "env_steps": self.env_steps,
                "best_return": self.best_return,
                "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "observation_shape": list(self.sampler.observation_space.shape),
                "action_space": repr(self.sampler.action_space),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "tasks": self.splits.state(),
                    "sampler": self.sampler.rng.bit_generator.state,
                },
            }
        )

    def rewind_parameters(self, payload: dict[str, Any]) -> None:
        """Back to a checkpoint's θ and optimiser state (random states and counters go on)."""
        self.policy.load_state_dict(payload["policy"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(payload["optimizer"])

    def restore(self, payload: dict[str, Any]) -> None:
        """Return to the state of a checkpoint of this run."""
        self.iteration, self.env_steps = payload["iteration"], payload.get("env_steps", 0)
        self.best_return = payload.get("best_return", float("-inf"))
        self.rewind_parameters(payload)
        torch.set_rng_state(payload["rng"]["torch"])
        self.splits.set_state(payload["rng"]["tasks"])
        self.sampler.rng.bit_generator.state = payload["rng"]["sampler"]


def train(
    config: Config, run_dir: Path | None = None, progress: bool = True, resume_from: dict[str, Any] | None = None
) -> Path:
    """Meta-train a policy with MAML as configured; returns the run directory.

    The run directory holds ``config.yaml``, ``test_tasks.json`` (the held-out tasks), TensorBoard
    event files, ``metrics.jsonl`` and ``checkpoints/``. `resume_from` is a checkpoint of the run
    in `run_dir` to continue from (see `resume`).
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
    policy = make_policy(sampler.observation_space, sampler.action_space, config.policy).to(config.train.device)
    precision = config.outer.curvature_precision
    if config.outer.algo == "trpo" and precision != "full" and not supports_fast_curvature(policy):
        sampler.close()
        raise ConfigError(
            [
                f"'outer.curvature_precision={precision}' needs the Gaussian MLP policy of "
                f"a continuous action space; {config.env.id} gives a {type(policy).__name__} "
                "(remove outer.curvature_precision)"
            ]
        )
    if precision == "bfloat16" and not has_fast_bfloat16(config.train.device):
        warnings.warn(
            f"outer.curvature_precision=bfloat16: {config.train.device} has no bfloat16 matrix units, so the "
            "trust region's products will be slower than in float32 (remove outer.curvature_precision)",
            stacklevel=2,
        )
    run_dir = run_dir or make_run_dir(config)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    splits = TaskSplits(sampler.env, config.train.seed, config.evaluation.seed, config.evaluation.num_tasks)
    (run_dir / "test_tasks.json").write_text(json.dumps([task_to_json(t) for t in splits.test], indent=1))
    optimizer = None
    if config.outer.algo == "adam":
        optimizer = torch.optim.Adam(parameters_of(policy).values(), lr=config.outer.lr)
    elif config.outer.algo == "sgd":
        optimizer = torch.optim.SGD(parameters_of(policy).values(), lr=config.outer.lr)
    state = TrainingState(policy, optimizer, splits, sampler)
    if resume_from is not None:
        state.restore(resume_from)
    logger = RunLogger(run_dir, config.to_dict(), config.train.iterations, start=state.iteration, progress=progress)
    checkpoints = CheckpointKeeper(
        run_dir / "checkpoints", config.train.checkpoint_every, config.train.keep_checkpoints
    )
    completed = state.payload(config)  # the last finished iteration
    log_s = 0.0
    signals = _StopSignals()

    try:
        with signals.installed():
            for iteration in range(state.iteration + 1, config.train.iterations + 1):
                start = time.perf_counter()
                try:
                    # --- Alg. 3 line 3: sample a batch of training tasks (never a held-out test task)
                    tasks = splits.sample_train(config.outer.tasks_per_batch)
                    # --- lines 4-8: pre-adaptation episodes, inner step, post-adaptation episodes
                    #     (pretrain and oracle: no inner step, the outer step is on θ's own episodes)
                    batch = sample_meta_batch(sampler, policy, tasks, inner, config.advantages)
                    # --- line 10: outer update of θ from the post-adaptation returns
                    outer_start = time.perf_counter()
                    stats = meta_step(policy, batch, inner, config.outer, optimizer)
                    end = time.perf_counter()
                except NonFiniteError as error:
                    if config.train.on_nonfinite == "stop":
                        raise NonFiniteError(f"iteration {iteration}: {error}") from None
                    with signals.deferred():
                        state.rewind_parameters(completed)  # skip: on from the last good θ
                        state.iteration = iteration
                        logger.skipped(iteration, f"skipped meta-batch of iteration {iteration}: {error}")
                        completed = state.payload(config)
                        checkpoints.iteration_done(completed)
                    continue

                metrics = iteration_metrics(batch, stats, policy)
                state.env_steps += int(metrics.pop("time/batch_env_steps"))
                metrics.update(
                    {
                        "time/env_steps": float(state.env_steps),
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
                with signals.deferred():
                    logger.log(iteration, metrics, [task_to_json(task) for task in tasks])
                    # This iteration's post-adaptation return measured θ of the iteration before.
                    if metrics["returns/post_adaptation"] > state.best_return:
                        state.best_return = metrics["returns/post_adaptation"]
                        checkpoints.best({**completed, "best_return": state.best_return})
                    state.iteration = iteration
                    completed = state.payload(config)
                    checkpoints.iteration_done(completed)
                del batch, stats  # free this meta-batch's episodes before sampling the next one
                log_s = time.perf_counter() - log_start
        checkpoints.final(completed)
    except BaseException as error:
        # Interrupted or failed mid-iteration (the parameters may be half-updated): keep the state
        # after the last finished iteration, so no finished work is lost.
        _save_on_stop(checkpoints, completed, logger, run_dir, error)
        raise
    finally:
        logger.close()
        sampler.close()
    return run_dir


def _save_on_stop(
    checkpoints: CheckpointKeeper, completed: dict[str, Any], logger: RunLogger, run_dir: Path, error: BaseException
) -> None:
    how = f"resume with: metarl train --resume {run_dir}"
    if completed["iteration"] == 0:
        logger.message("stopped during iteration 1; nothing to keep. Start again with the same command.")
        return
    try:
        path = checkpoints.last(completed)
    except CheckpointError as save_error:
        logger.message(f"stopped during iteration {completed['iteration'] + 1}, and {save_error}")
        return
    cause = "interrupted" if isinstance(error, KeyboardInterrupt) else "stopped"
    logger.message(
        f"{cause} during iteration {completed['iteration'] + 1}; the state after iteration "
        f"{completed['iteration']} is in {path}; {how}"
    )


class _StopSignals:
    """Turn SIGTERM and SIGINT into `Interrupted`, so that the state is saved before exiting.

    Within `deferred()` a signal waits until the block has finished: an iteration's log line and
    the state that goes with it are recorded together or not at all."""

    def __init__(self) -> None:
        self._deferring = False
        self._pending: int | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._pending = signum
            return
        raise Interrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signal.Signals(signum).name)


def resume(run_dir: str | Path, overrides: list[str] = (), progress: bool = True) -> Path:
    """Continue a run from its newest checkpoint, exactly where it stopped.

    The configuration is the run's own; `overrides` may change only how it runs
    (`RESUMABLE_OVERRIDES`), e.g. ``train.iterations=200`` to extend a finished run.
    """
    run_dir = Path(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    problems = [
        f"'{o.partition('=')[0]}' cannot change when resuming (it would change what the run computes); "
        f"resumable settings: {', '.join(RESUMABLE_OVERRIDES)}"
        for o in overrides
        if o.partition("=")[0].strip() not in RESUMABLE_OVERRIDES
    ]
    if problems:
        raise ConfigError(problems)
    config = config_from_dict(checkpoint["config"], overrides)
    if checkpoint["iteration"] >= config.train.iterations:
        raise ConfigError(
            [
                f"{run_dir} already finished {checkpoint['iteration']} of train.iterations={config.train.iterations}; "
                "to train longer, resume with --iterations N (more than that)"
            ]
        )
    return train(config, run_dir, progress, resume_from=checkpoint)
