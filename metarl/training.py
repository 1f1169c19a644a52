"""Meta-training: the outer loop of MAML, top to bottom, and resuming it exactly.

`build_training` sets a run up from its config (seeds, environments, policy, inner loop, outer
algorithm, task splits); `training_iteration` is one meta-iteration (Alg. 3, lines 3–10), the
same for `train` and for the scripts that time or inspect training; `train` and `resume` add the
run directory, logs, checkpoints and interruption handling around them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import signal
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from metarl.backends import make_sampler
from metarl.checkpoint import CheckpointKeeper, latest_checkpoint
from metarl.config import RESUMABLE_OVERRIDES, Config, stored_config
from metarl.curvature import has_fast_bfloat16, supports_fast_curvature
from metarl.errors import CheckpointError, ConfigError, NonFiniteError, RunDirError
from metarl.inner import InnerLoop, LearnedStepSizes
from metarl.logger import RunLogger
from metarl.maml import MetaBatch, sample_meta_batch
from metarl.memory import check_training_memory, reuse_freed_memory
from metarl.outer import OuterAlgorithm, make_algorithm
from metarl.policies import make_policy
from metarl.rundir import RunDirectory, default_run_name, describe_os_error, resume_command
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits, check_trusted_env, task_to_json
from metarl.threads import available_cpus, torch_threads


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (Ctrl-C or SIGTERM) after its state was saved."""


@dataclasses.dataclass
class TrainingState:
    """Everything that changes from one meta-iteration to the next; a checkpoint holds all of it,
    so a resumed run continues exactly as an uninterrupted one would."""

    config: Config
    policy: torch.nn.Module
    inner: InnerLoop
    step_sizes: LearnedStepSizes | None  # Meta-SGD's learned α, when inner.learn_lr
    algorithm: OuterAlgorithm
    splits: TaskSplits
    sampler: Sampler
    inner_steps: int  # inner.steps for MAML; 0 for the pretrain and oracle baselines
    iteration: int = 0
    env_steps: int = 0
    best_return: float = float("-inf")

    def payload(self) -> dict[str, Any]:
        """The checkpoint of this state, copied so that later training does not change it."""
        return copy.deepcopy(
            {
                "config": self.config.to_dict(),
                "iteration": self.iteration,
                "env_steps": self.env_steps,
                "best_return": self.best_return,
                "policy": self.policy.state_dict(),
                "step_sizes": self.step_sizes.state_dict() if self.step_sizes is not None else None,
                "outer": self.algorithm.state_dict(),
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
        """Back to a checkpoint's meta-parameters and outer-algorithm state (random states and counters go on)."""
        self.policy.load_state_dict(payload["policy"])
        if self.step_sizes is not None:
            self.step_sizes.load_state_dict(payload["step_sizes"])
        outer = payload.get("outer")
        if outer is None:  # a checkpoint from before the outer algorithms had their own state
            outer = {"optimizer": payload["optimizer"]} if payload.get("optimizer") is not None else {}
        self.algorithm.load_state_dict(outer)

    def restore(self, payload: dict[str, Any]) -> None:
        """Return to the state of a checkpoint of this run."""
        self.iteration, self.env_steps = payload["iteration"], payload.get("env_steps", 0)
        self.best_return = payload.get("best_return", float("-inf"))
        self.rewind_parameters(payload)
        torch.set_rng_state(payload["rng"]["torch"])
        self.splits.set_state(payload["rng"]["tasks"])
        self.sampler.rng.bit_generator.state = payload["rng"]["sampler"]


def build_training(config: Config) -> TrainingState:
    """Seed, environments, policy, inner loop, outer algorithm and task splits of a run, before its
    first iteration. Raises `ConfigError` for a run that cannot fit in memory. The caller closes
    ``state.sampler``."""
    torch.manual_seed(config.train.seed)
    if config.train.reuse_freed_memory:
        reuse_freed_memory()
    inner_steps, episodes_per_task = config.inner.steps, config.inner.episodes_per_task
    if config.train.algo != "maml":
        # The baselines take no inner step; each iteration samples as many episodes per task as
        # MAML's pre- and post-adaptation batches hold together.
        inner_steps, episodes_per_task = 0, episodes_per_task * (config.inner.steps + 1)
    sampler = make_sampler(config, episodes_per_task)
    try:
        check_training_memory(
            config, sampler.observation_space, sampler.action_space, sampler.horizon, episodes_per_task
        )
        policy = make_policy(sampler.observation_space, sampler.action_space, config.policy).to(config.train.device)
        _check_precision(config, policy)
        step_sizes = LearnedStepSizes(policy, config.inner.lr) if config.inner.learn_lr else None
        inner = InnerLoop.from_config(config, step_sizes)
        splits = TaskSplits(sampler.env, config.train.seed, config.evaluation.seed, config.evaluation.num_tasks)
        algorithm = make_algorithm(policy, inner, config.outer)
    except BaseException:
        sampler.close()
        raise
    return TrainingState(config, policy, inner, step_sizes, algorithm, splits, sampler, inner_steps)


def training_iteration(
    state: TrainingState, inspect: Callable[[MetaBatch], None] | None = None
) -> tuple[MetaBatch, dict[str, float]]:
    """One meta-iteration (Alg. 3, lines 3–10); returns the meta-batch and what a researcher watches.

    `inspect` sees the meta-batch before the outer step (scripts that compare outer steps).
    Raises `NonFiniteError` where a NaN or infinity arises; the state then holds the parameters of
    a half-done step, which the caller rewinds.
    """
    config, start = state.config, time.perf_counter()
    # --- line 3: sample a batch of training tasks (never a held-out test task)
    tasks = state.splits.sample_train(config.outer.tasks_per_batch)
    # --- lines 4-8: pre-adaptation episodes, inner step, post-adaptation episodes
    #     (pretrain and oracle: no inner step, the outer step is on θ's own episodes)
    batch = sample_meta_batch(state.sampler, state.policy, tasks, state.inner, config.advantages, state.inner_steps)
    if inspect is not None:
        inspect(batch)
    # --- line 10: outer update of θ (and learned step sizes) from the post-adaptation returns
    outer_start = time.perf_counter()
    stats = state.algorithm.step(batch)
    end = time.perf_counter()
    steps = sum(e.num_steps for e in (*batch.inner, batch.outer))
    state.env_steps += steps
    metrics = iteration_metrics(batch, stats, state)
    metrics.update(
        {
            "time/env_steps": float(state.env_steps),
            "time/env_steps_per_s": steps / max(batch.timings["sample_s"], 1e-9),
            "time/sample_s": batch.timings["sample_s"],
            "time/advantages_s": batch.timings["advantages_s"],
            "time/adapt_s": batch.timings["adapt_s"],
            "time/outer_s": end - outer_start,
            "time/iteration_s": end - start,
            **state.sampler.statistics(),
        }
    )
    return batch, metrics


def iteration_metrics(batch: MetaBatch, stats: dict[str, float], state: TrainingState) -> dict[str, float]:
    """Returns before and after adaptation, the outer algorithm's statistics, the policy's spread."""
    returns = [task_returns.mean().item() for task_returns in batch.returns]
    metrics = {
        "returns/pre_adaptation": returns[0],
        "returns/post_adaptation": returns[-1],
        "returns/adaptation_gain": returns[-1] - returns[0],
    }
    if len(returns) > 2:
        metrics.update({f"returns/after_step_{k}": r for k, r in enumerate(returns[1:], start=1)})
    for name in batch.metrics[0] if batch.metrics else ():
        # e.g. success/pre_adaptation: the share of successful episodes, averaged over tasks
        values = [torch.nanmean(step[name]).item() for step in batch.metrics]
        metrics.update({f"{name}/pre_adaptation": values[0], f"{name}/post_adaptation": values[-1]})
        if len(values) > 2:
            metrics.update({f"{name}/after_step_{k}": v for k, v in enumerate(values[1:], start=1)})
    if hasattr(state.policy, "log_std"):
        metrics["policy/std"] = state.policy.log_std.exp().mean().item()
    if state.step_sizes is not None:
        summary = state.step_sizes.summary()
        metrics.update({f"inner_lr/{k}": summary[k] for k in ("mean", "std", "min", "max")})
    metrics.update(stats)
    metrics["optim/skipped_batch"] = 0.0  # 1 on iterations whose meta-batch was dropped (train.on_nonfinite: skip)
    return metrics


def train(config: Config, progress: bool = True, overwrite: bool = False) -> Path:
    """Meta-train a policy with MAML as configured; returns the run directory.

    The run directory, ``<train.logdir>/<train.run_name>`` (default ``<env>__seed<N>__<time>``),
    holds ``config.yaml``, ``test_tasks.json`` (the held-out tasks), TensorBoard event files,
    ``metrics.jsonl`` and ``checkpoints/``. A run name that exists is refused unless `overwrite`
    (which deletes that run); `resume` continues a run.
    """
    return _train(config, None, progress, overwrite=overwrite)


def with_threads_resolved(config: Config) -> Config:
    """`config` with ``train.num_threads`` set: null becomes this machine's CPU count, and the run
    records it, since the count sets the last bits of its results (`metarl.threads`)."""
    if config.train.num_threads is not None:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, num_threads=available_cpus()))


def _train(
    config: Config,
    run: RunDirectory | None,
    progress: bool,
    resume_from: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train in `run` (a locked run directory being resumed from `resume_from`), or in a new one."""
    config = with_threads_resolved(config)
    with contextlib.ExitStack() as cleanup:  # undone in reverse order, however training ends
        cleanup.enter_context(torch_threads(config.train.num_threads))
        # first: a bad environment or a size that cannot fit leaves no run directory behind
        state = build_training(config)
        cleanup.callback(state.sampler.close)
        if run is None:
            stamp = f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
            name = default_run_name(config.env.id, config.train.seed, stamp)
            run = RunDirectory.create(config.train.logdir, config.train.run_name, name, overwrite)
        cleanup.enter_context(run)  # the lock
        return _train_in(run, state, progress, resume_from)


def _check_precision(config: Config, policy: torch.nn.Module) -> None:
    """``outer.curvature_precision`` needs metarl's Gaussian MLP; bfloat16 without bfloat16 units is slow."""
    precision = config.outer.curvature_precision
    if precision != "full" and not supports_fast_curvature(policy):  # (only TRPO takes the setting)
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


def _train_in(run: RunDirectory, state: TrainingState, progress: bool, resume_from: dict[str, Any] | None) -> Path:
    """The training loop proper, in a locked run directory."""
    config, run_dir = state.config, run.path
    run.remove_stale_temporary_files()
    run.write_text("config.yaml", config.to_yaml())
    run.write_text("test_tasks.json", json.dumps([task_to_json(t) for t in state.splits.test], indent=1))
    if resume_from is not None:
        state.restore(resume_from)
    try:
        logger = RunLogger(run_dir, config.to_dict(), config.train.iterations, start=state.iteration, progress=progress)
    except OSError as error:
        raise RunDirError(f"cannot write the logs of run directory '{run_dir}': {describe_os_error(error)}") from None
    resumed_from = (Path(resume_from["path"]), resume_from["iteration"]) if resume_from is not None else None
    checkpoints = CheckpointKeeper(
        run_dir / "checkpoints", config.train.checkpoint_every, config.train.keep_checkpoints, newest=resumed_from
    )
    completed = state.payload()  # the last finished iteration
    log_s = 0.0
    signals = _StopSignals()

    try:
        with signals.installed():
            for iteration in range(state.iteration + 1, config.train.iterations + 1):
                try:
                    batch, metrics = training_iteration(state)
                except NonFiniteError as error:
                    if config.train.on_nonfinite == "stop":
                        raise NonFiniteError(f"iteration {iteration}: {error}") from None
                    with signals.deferred():
                        state.rewind_parameters(completed)  # skip: on from the last good θ
                        state.iteration = iteration
                        logger.skipped(iteration, f"skipped meta-batch of iteration {iteration}: {error}")
                        completed = state.payload()
                        checkpoints.iteration_done(completed)
                    continue
                metrics["time/previous_log_s"] = log_s  # logging and checkpointing of the iteration before
                log_start = time.perf_counter()
                with signals.deferred():
                    logger.log(iteration, metrics, [task_to_json(task) for task in batch.tasks])
                    # This iteration's post-adaptation return measured θ of the iteration before.
                    if metrics["returns/post_adaptation"] > state.best_return:
                        state.best_return = metrics["returns/post_adaptation"]
                        checkpoints.best({**completed, "best_return": state.best_return})
                    state.iteration = iteration
                    completed = state.payload()
                    checkpoints.iteration_done(completed)
                del batch  # free this meta-batch's episodes before sampling the next one
                log_s = time.perf_counter() - log_start
        checkpoints.final(completed)
    except BaseException as error:
        # Interrupted or failed mid-iteration (the parameters may be half-updated): keep the state
        # after the last finished iteration, so no finished work is lost.
        _save_on_stop(checkpoints, completed, logger, run_dir, error)
        if isinstance(error, OSError):  # a log file could not be written
            raise RunDirError(
                f"cannot write to run directory '{run_dir}': {describe_os_error(error)}; free space or fix the "
                f"directory, then {resume_command(run_dir)}"
            ) from error
        raise
    finally:
        with contextlib.suppress(OSError):
            logger.close()
    return run_dir


def _save_on_stop(
    checkpoints: CheckpointKeeper, completed: dict[str, Any], logger: RunLogger, run_dir: Path, error: BaseException
) -> None:
    """Save the state after the last finished iteration as ``last.pt`` and say where the run can go on."""
    cause = "interrupted" if isinstance(error, KeyboardInterrupt) else "stopped"
    done = completed["iteration"]
    how = f"resume with: {resume_command(run_dir)}"
    if done == 0:
        logger.message(
            f"{cause} during iteration 1; nothing to keep yet. Start it again with: {resume_command(run_dir)}"
        )
        return
    try:
        path = checkpoints.last(completed)
    except CheckpointError as save_error:
        kept = checkpoints.newest
        where = (
            f"the newest saved state is the one after iteration {kept[1]} ({kept[0].name}); {how} (it continues "
            "from there) once the disk has space"
            if kept is not None
            else f"no state was saved; {how} (it starts from iteration 0) once the disk has space"
        )
        logger.message(f"{cause} during iteration {done + 1}, and {save_error}; {where}")
        return
    logger.message(f"{cause} during iteration {done + 1}; the state after iteration {done} is in {path}; {how}")


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


def resume(
    run_dir: str | Path, overrides: Sequence[str] = (), progress: bool = True, trust_modules: Collection[str] = ()
) -> Path:
    """Continue a run from its newest checkpoint, exactly where it stopped.

    The configuration is the run's own; `overrides` may change only how it runs
    (`RESUMABLE_OVERRIDES`), e.g. ``train.iterations=200`` to extend a finished run. A run stopped
    before its first checkpoint starts again from its ``config.yaml``. The run's files are data
    from wherever the run came from: an ``env.id`` of the form ``module:Name`` is imported only if
    the module (or that entry point) is in `trust_modules` (`metarl.tasks.check_trusted_env`).
    """
    problems = [
        f"'{o.partition('=')[0]}' cannot change when resuming (it would change what the run computes); "
        f"resumable settings: {', '.join(RESUMABLE_OVERRIDES)}"
        for o in overrides
        if o.partition("=")[0].strip() not in RESUMABLE_OVERRIDES
    ]
    if problems:
        raise ConfigError(problems)
    run = RunDirectory.reopen(run_dir)  # refuses a run that another process is training now
    try:
        checkpoint = latest_checkpoint(run.path)
        if checkpoint is not None:
            data, source = checkpoint["config"], f"checkpoint '{checkpoint['path']}'"
        else:
            data, source = _first_config(run.path), f"'{run.path / 'config.yaml'}'"
        config = stored_config(data, overrides)
        check_trusted_env(config.env.id, trust_modules, source)
        done = checkpoint["iteration"] if checkpoint is not None else 0
        if done >= config.train.iterations:
            raise ConfigError(
                [
                    f"{run.path} already finished {done} of train.iterations={config.train.iterations}; "
                    "to train longer, resume with --iterations N (more than that)"
                ]
            )
        return _train(config, run, progress, resume_from=checkpoint)
    finally:
        run.release()


def _first_config(run_dir: Path) -> Any:
    """The config of a run that stopped before its first checkpoint."""
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"'{run_dir}' has no checkpoints/ with a .pt file and no config.yaml; is it a metarl run directory?"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"cannot read '{run_dir / 'config.yaml'}': {error}") from None
