"""Batched rollouts: all (task, episode) environments step together, one policy forward per step.

The vector environment holds ``B × E`` copies ordered task-major (copy ``b * E + e`` runs episode
``e`` of task ``b``). At every time step the observations are reshaped to ``[B, E, obs]`` and the
policy is evaluated once with per-task parameters (a leading task dimension), so sampling the
pre- and post-adaptation episodes of a whole meta-batch has no Python loop over tasks or episodes.
metarl's Gaussian policy is evaluated there in numpy (`GaussianMLPPolicy.numpy_actor`): between two
batches of environment steps each torch operation costs 50–100 µs, against 4 in a tight loop.

With worker processes (``env.workers``) the copies are split into slices of whole tasks. By default
(``env.free_running``) each slice runs its episodes to the end on its own, its process evaluating
the policy for its tasks (`Rollout`, `run_slice`), with its rows of the noise this process drew for
the whole call: no process waits for another at each step, and the episodes are those of the
lockstep.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from metarl.config import Config
from metarl.episodes import FIELDS, Episodes, concat_episodes, first_episodes_within, select_tasks, stack_tasks
from metarl.errors import EnvError, NonFiniteError
from metarl.functional import Params, distribution, per_task
from metarl.info_metrics import DEFAULT_INFO_METRICS, InfoMetrics
from metarl.make import make_env, make_vector_env
from metarl.tasks import environment_errors, horizon_of, sample_tasks, set_tasks, task_features
from metarl.threads import torch_threads
from metarl.workers import WorkerVectorEnv, contiguous_slices


def env_actions(actions: np.ndarray, space: gym.Space, scaling: str, bound: float = 1.0) -> np.ndarray:
    """Map policy actions to the environment's action space.

    ``normalize``: the policy acts in [-bound, bound]; actions are clipped and mapped linearly onto
    ``[low, high]``. ``clip``: clipped to ``[low, high]``. Discrete actions pass through.
    """
    if isinstance(space, spaces.Discrete):
        return actions.astype(np.int64) + space.start
    if not isinstance(space, spaces.Box):
        raise TypeError(f"unsupported action space {space}; metarl handles Box and Discrete actions")
    if scaling == "normalize":
        unit = np.clip(actions / bound, -1.0, 1.0)
        return (space.low + (unit + 1.0) * 0.5 * (space.high - space.low)).astype(space.dtype)
    return np.clip(actions, space.low, space.high).astype(space.dtype)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """How episodes run on a vector env, apart from the policy and its noise: picklable, so that a
    worker process runs them the same way (``env.free_running``)."""

    horizon: int
    action_space: gym.Space
    action_scaling: str
    action_bound: float
    info_metrics: dict[str, str]
    device: torch.device

    def run(
        self,
        envs: VectorEnv,
        obs: np.ndarray,
        policy: nn.Module,
        params: Params,
        noise: np.ndarray | RoundNoise | None,
        alive: np.ndarray,
        tasks: Sequence[Any] | None,
        features: np.ndarray | None = None,
        first_copy: int = 0,
        beat: Callable[[], None] = lambda: None,
    ) -> Episodes:
        """Step `envs` (just reset to `obs`, copies task-major, ``len(params)`` tasks) until every
        copy marked `alive` has ended its episode or the horizon. A Gaussian policy acts with the
        standard-normal `noise` of the horizon ``[T, B, E, action]`` (``a = ε·σ + μ``); without
        `noise`, and for other distributions, the policy samples. `features` are appended to the
        observations (an oracle); `first_copy` numbers the copies in errors; ``beat()`` runs before
        each step."""
        width = next(iter(params.values())).shape[0]
        num_envs = envs.num_envs
        num_episodes = num_envs // width
        numpy_actor = getattr(policy, "numpy_actor", None)
        numpy_steps = numpy_actor is not None and noise is not None and self.device.type == "cpu"
        actor = numpy_actor(params) if numpy_steps else None
        if actor is not None:  # the noise's share of every step's actions and log-probabilities, at once
            noise_actions, noise_log_probs = actor.noise_terms(noise[: self.horizon])
        # Every step's values go straight into arrays of the whole horizon, one tensor each at the end.
        obs_size = obs.shape[1] + (0 if features is None else features.shape[1])
        observations = np.empty((self.horizon, num_envs, obs_size), np.float32)
        rewards = np.empty((self.horizon, num_envs), np.float32)
        mask = np.empty((self.horizon, num_envs), np.float32)
        log_probs = np.empty((self.horizon, num_envs), np.float32)
        actions: np.ndarray | None = None  # its shape and type come with the first actions
        infos = InfoMetrics(self.info_metrics, num_envs, self.horizon)
        suspect = True  # whether `obs` may hold a NaN or infinity, to be found before the policy sees it
        for t in range(self.horizon):
            if suspect:
                _check_finite(obs, "observations", tasks, num_episodes, first_copy)
            observations[t, :, : obs.shape[1]] = obs
            if features is not None:
                observations[t, :, obs.shape[1] :] = features
            rows = observations[t].reshape(width, num_episodes, obs_size)
            if actor is not None:
                action, log_prob = actor.mean(rows) + noise_actions[t], noise_log_probs[t]
            else:
                action, log_prob = self._torch_act(policy, params, rows, noise, t)
            if actions is None:
                actions = np.empty((self.horizon, num_envs, *action.shape[2:]), action.dtype)
            actions[t], log_probs[t], mask[t] = action.reshape(num_envs, *action.shape[2:]), log_prob.reshape(-1), alive

            beat()
            with environment_errors("stepping"):
                obs, reward, terminated, truncated, info = envs.step(
                    env_actions(actions[t], self.action_space, self.action_scaling, self.action_bound)
                )
            suspect = not math.isfinite(np.sum(obs) + np.sum(reward))  # one cheap test; the names if it fails
            if suspect:
                _check_finite(reward, "rewards", tasks, num_episodes, first_copy)
            infos.add(info, alive)
            rewards[t] = np.where(alive, reward, 0.0)
            alive &= ~(terminated | truncated)
            if not alive.any():
                break
        steps = t + 1

        def episode_major(values: np.ndarray) -> Tensor:  # [T, copies, ...] -> [B, E, T, ...]
            tensor = torch.from_numpy(values[:steps]).reshape(steps, width, num_episodes, *values.shape[2:])
            return tensor.movedim(0, 2).contiguous().to(self.device)

        metrics = {
            key: torch.as_tensor(values, dtype=torch.float32, device=self.device).reshape(width, num_episodes)
            for key, values in sorted(infos.result().items())
        }
        return Episodes(
            observations=episode_major(observations),
            actions=episode_major(actions),
            rewards=episode_major(rewards),
            mask=episode_major(mask),
            log_probs=episode_major(log_probs),
            metrics=metrics or None,
        )

    def _torch_act(
        self, policy: nn.Module, params: Params, rows: np.ndarray, noise: np.ndarray | RoundNoise | None, t: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions and their log-probabilities from the policy's torch distribution (on the
        sampler's device): any policy; `run` steps metarl's Gaussian policy in numpy instead."""
        pi = distribution(policy, params, torch.from_numpy(rows).to(self.device))
        base = pi.base_dist if isinstance(pi, Independent) else pi
        if noise is None or not isinstance(base, Normal):
            action = pi.sample()
        else:
            action = torch.from_numpy(noise[t]).to(base.loc.device) * base.scale + base.loc
        return action.cpu().numpy(), pi.log_prob(action).cpu().numpy()


@dataclasses.dataclass(frozen=True)
class SliceWork:
    """What one slice of a free-running call runs (`run_slice`): its share of the call's tasks, the
    parameters and noise rows ``[T, tasks, E, action]`` of those tasks, and the seed of its first
    copy (copy ``i`` of the share resets with ``seed + i``)."""

    rollout: Rollout
    policy: nn.Module
    params: Params
    noise: np.ndarray
    tasks: list[Any]
    seed: int
    features: np.ndarray | None  # per task (an oracle's observations)
    tasks_per_round: int  # the slice's copies hold this many tasks' episodes
    first_copy: int  # of the share in the call, for errors


def run_slice(
    envs: VectorEnv, payload: bytes | SliceWork, beat: Callable[[], None]
) -> dict[str, Any] | EnvError | NonFiniteError | None:
    """One slice's share of a free-running call (`WorkerVectorEnv.run`'s function): rounds of its
    tasks on its copies, the policy acting with the tasks' rows of the call's Gaussian noise; the
    episodes as numpy arrays (None for an empty share). An environment's error or NaN, named by copy
    and task, is returned for the caller to raise as it is (as a lockstep call would)."""
    work = pickle.loads(payload) if isinstance(payload, bytes) else payload
    if not work.tasks:
        return None
    try:
        return _slice_episodes(envs, work, beat)
    except (EnvError, NonFiniteError) as error:
        return error


def _slice_episodes(envs: VectorEnv, work: SliceWork, beat: Callable[[], None]) -> dict[str, Any]:
    num_episodes = envs.num_envs // work.tasks_per_round
    rounds = []
    for start in range(0, len(work.tasks), work.tasks_per_round):
        rows = slice(start, min(start + work.tasks_per_round, len(work.tasks)))
        count, width = rows.stop - rows.start, work.tasks_per_round
        fill = [rows.stop - 1] * (width - count)  # a short last round repeats its last task
        index = torch.as_tensor([*range(rows.start, rows.stop), *fill])
        tasks = [work.tasks[i] for i in index.tolist()]
        noise = work.noise[:, index.numpy()]

        with environment_errors("setting tasks"):
            set_tasks(envs, [task for task in tasks for _ in range(num_episodes)])
        with environment_errors("resetting"):
            obs, _ = envs.reset(seed=work.seed + rows.start * num_episodes)
        alive = np.arange(envs.num_envs) < count * num_episodes
        features = None if work.features is None else np.repeat(work.features[index.numpy()], num_episodes, axis=0)
        params = {name: value[index] for name, value in work.params.items()}
        first_copy = work.first_copy + rows.start * num_episodes
        with torch.no_grad(), torch_threads(1):
            episodes = work.rollout.run(envs, obs, work.policy, params, noise, alive, tasks, features, first_copy, beat)
        rounds.append(select_tasks(episodes, slice(0, count)))
    episodes = _join_parts(rounds, torch.device("cpu"))
    arrays: dict[str, Any] = {name: getattr(episodes, name).numpy() for name in FIELDS}
    arrays["metrics"] = {key: value.numpy() for key, value in (episodes.metrics or {}).items()}
    return arrays


def _join_parts(parts: Sequence[Episodes | Mapping[str, Any]], device: torch.device) -> Episodes:
    """Episodes of consecutive tasks (or their numpy arrays) as one batch, on `device`: shorter
    parts padded with zero steps, a metric that a part lacks NaN there."""

    def tensors(part: Episodes | Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if isinstance(part, Episodes):
            return {name: getattr(part, name) for name in FIELDS}, dict(part.metrics or {})
        return {name: torch.from_numpy(part[name]) for name in FIELDS}, {
            key: torch.from_numpy(value) for key, value in part["metrics"].items()
        }

    unpacked = [tensors(part) for part in parts]
    steps = max(fields["mask"].shape[2] for fields, _ in unpacked)
    joined = {
        name: torch.cat([_pad_steps(fields[name], steps) for fields, _ in unpacked]).to(device) for name in FIELDS
    }
    keys = sorted({key for _, metrics in unpacked for key in metrics})
    metrics = {
        key: torch.cat(
            [metrics.get(key, torch.full(fields["mask"].shape[:2], float("nan"))) for fields, metrics in unpacked]
        ).to(device)
        for key in keys
    }
    return Episodes(**joined, metrics=metrics or None)


def _pad_steps(values: Tensor, steps: int) -> Tensor:
    """Zeros after the last of the time steps (dimension 2) of `values`, up to `steps`."""
    missing = steps - values.shape[2]
    if missing == 0:
        return values
    return torch.cat([values, values.new_zeros(*values.shape[:2], missing, *values.shape[3:])], dim=2)


class Sampler:
    """Collects `episodes_per_task` episodes for each task of a batch, all in lockstep.

    Args:
        env_id: Gymnasium id of the task distribution.
        episodes_per_task: E, the number of episodes per task per call.
        env_kwargs: constructor arguments for the environment.
        horizon: episode length (default: the id's ``max_episode_steps``).
        action_scaling, action_bound: how policy actions map to the env's; see `env_actions`.
        batch_unit: ``episodes``: exactly E episodes per task. ``steps``: episodes of a task run
            back to back until they hold E × horizon steps (the MAML paper's rllab sampler), so
            tasks whose episodes end early get more episodes.
        spare_episodes: with ``batch_unit="steps"``, run this many more episodes per task in each
            round, kept only where the task's budget still has room (see ``env.spare_episodes``).
        seed: seeds the environment resets.
        device: where the episode tensors live.
        workers: physics threads of a batched family, or worker processes for the others
            (`metarl.tasks.make_vector_env`); results do not depend on it.
        task_space: an ``env.task_space`` mapping that makes the environment a task distribution
            (`metarl.task_space`).
        observe_task: append each copy's `task_features` to its observations (the oracle baseline).
        worker_timeout: seconds a worker process may take to answer before it is an error.
        max_copies: run the episodes in rounds of whole tasks on one vector env of at most this
            many copies (bounded memory for heavy environments; the family's default
            ``metadata["max_copies"]`` when None, else all B × E copies at once). The episodes are
            those of the all-copies run for the same seed (Gaussian policies).
        step_in_parent: with worker processes, this process steps one share of the copies itself
            (``env.step_in_parent``); the same episodes either way.
        free_running: with worker processes and a Gaussian policy, each process (the parent too)
            runs whole episodes of its share of the tasks with its own policy forward, instead of
            stepping in lockstep with this one (``env.free_running``); the same episodes.
        info_metrics: step-info keys folded into one number per episode (``Episodes.metrics``):
            key -> aggregation (`metarl.info_metrics`); by default the success rate where steps
            report ``info["success"]``.
    """

    def __init__(
        self,
        env_id: str,
        episodes_per_task: int,
        env_kwargs: Mapping[str, Any] | None = None,
        horizon: int | None = None,
        action_scaling: str = "normalize",
        seed: int = 0,
        device: str | torch.device = "cpu",
        action_bound: float = 1.0,
        batch_unit: str = "episodes",
        workers: int | None = None,
        task_space: Mapping[str, Any] | None = None,
        observe_task: bool = False,
        worker_timeout: float | None = None,
        info_metrics: Mapping[str, str] | None = None,
        max_copies: int | None = None,
        spare_episodes: int = 0,
        step_in_parent: bool = True,
        free_running: bool = True,
    ) -> None:
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.info_metrics = dict(DEFAULT_INFO_METRICS if info_metrics is None else info_metrics)
        self.observe_task, self.worker_timeout = observe_task, worker_timeout
        self.workers, self.task_space = workers, task_space
        self.step_in_parent, self.free_running = step_in_parent, free_running
        self.episodes_per_task = episodes_per_task
        # Copies per task in a round: E, plus the spares of a budget in steps.
        self.copies_per_task = episodes_per_task + (spare_episodes if batch_unit == "steps" else 0)
        self.action_scaling, self.action_bound = action_scaling, action_bound
        self.batch_unit = batch_unit
        self.device = torch.device(device)
        self.reseed(seed)
        self.env = make_env(env_id, self.env_kwargs, horizon, task_space)
        self.horizon = horizon_of(self.env, horizon)
        check_spaces(self.env)
        self.observation_space = self.env.observation_space
        if observe_task:
            self.observation_space = with_task_features(self.env.observation_space, self.env)
        self.action_space = self.env.action_space
        self.max_copies = max_copies if max_copies is not None else self.env.metadata.get("max_copies")
        self._vector_envs: dict[int, VectorEnv] = {}
        # What the environments are doing (what, since when, copies it is for), None between calls:
        # a Ray actor reports it, so that a hang is told from a long call.
        self.busy: tuple[str, float, int] | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        episodes_per_task: int | None = None,
        seed: int | None = None,
        batch_unit: str | None = None,
    ) -> Sampler:
        """The sampler a config describes (``inner.episodes_per_task``, ``train.seed`` and
        ``env.batch_unit`` unless given)."""
        return cls(**cls.config_arguments(config, episodes_per_task, seed, batch_unit))

    @classmethod
    def config_arguments(
        cls,
        config: Config,
        episodes_per_task: int | None = None,
        seed: int | None = None,
        batch_unit: str | None = None,
    ) -> dict[str, Any]:
        """The constructor's arguments that `config` sets (see `from_config`)."""
        return {
            "env_id": config.env.id,
            "episodes_per_task": episodes_per_task or config.inner.episodes_per_task,
            "env_kwargs": config.env.kwargs,
            "horizon": config.env.horizon,
            "action_scaling": config.policy.action_scaling,
            "seed": config.train.seed if seed is None else seed,
            "device": config.train.device,
            "action_bound": config.policy.action_bound,
            "batch_unit": batch_unit or config.env.batch_unit,
            "workers": config.env.workers,
            "task_space": config.env.task_space,
            "observe_task": config.train.algo == "oracle",
            "worker_timeout": config.env.worker_timeout,
            "info_metrics": config.env.info_metrics,
            "max_copies": config.env.max_copies,
            "spare_episodes": config.env.spare_episodes,
            "step_in_parent": config.env.step_in_parent,
            "free_running": config.env.free_running,
        }

    @classmethod
    def for_env(
        cls,
        env: gym.Env,
        horizon: int | None = None,
        action_scaling: str = "normalize",
        seed: int = 0,
        action_bound: float = 1.0,
    ) -> Sampler:
        """A sampler that runs one episode at a time on an existing environment instance (e.g. a
        robot whose task is unknown): `sample` then takes ``tasks=None``."""
        sampler = cls.__new__(cls)
        sampler.env_id, sampler.env_kwargs, sampler.episodes_per_task, sampler.copies_per_task = None, {}, 1, 1
        sampler.action_scaling, sampler.action_bound = action_scaling, action_bound
        sampler.device, sampler.batch_unit, sampler.workers = torch.device("cpu"), "episodes", 1
        sampler.task_space, sampler.observe_task, sampler.worker_timeout = None, False, None
        sampler.step_in_parent = sampler.free_running = False
        sampler.info_metrics, sampler.max_copies = dict(DEFAULT_INFO_METRICS), None
        sampler.reseed(seed)
        sampler.env, sampler.horizon = env, horizon_of(env, horizon)
        check_spaces(env)
        sampler.observation_space, sampler.action_space = env.observation_space, env.action_space
        sampler._vector_envs = {1: gym.vector.SyncVectorEnv([lambda: env], autoreset_mode="NextStep")}
        return sampler

    def statistics(self) -> dict[str, float]:
        """Counters training logs next to its timings (the Ray backend's restarts and traffic)."""
        return {}

    def reseed(self, seed: int) -> None:
        """Restart the generator that seeds every episode's reset (what `seed` at construction sets)."""
        self.rng = np.random.default_rng([seed, 2])

    def _vector_env(self, num_tasks: int) -> VectorEnv:
        if num_tasks not in self._vector_envs and self.max_copies is not None:
            self.close_vector_envs()  # bounded memory: one vector env of at most max_copies copies at a time
        if num_tasks not in self._vector_envs:
            num_envs = num_tasks * self.copies_per_task
            self.busy = (f"building {num_envs} environment copies", time.monotonic(), num_envs)
            with environment_errors(f"creating {num_envs} copies of '{self.env_id}'"):
                self._vector_envs[num_tasks] = make_vector_env(
                    self.env_id,
                    num_envs,
                    self.env_kwargs,
                    self.horizon,
                    self.workers,
                    self.task_space,
                    self.worker_timeout,
                    info_keys=tuple(self.info_metrics),
                    step_in_parent=self.step_in_parent,
                    group=self.copies_per_task,
                )
        return self._vector_envs[num_tasks]

    def sample(self, policy: nn.Module, params: Params, tasks: Sequence[Any] | None) -> Episodes:
        """Run the episodes of every task (see `batch_unit`); task ``b`` acts with ``params[name][b]``.

        `params` either carries a leading task dimension (adapted, per-task parameters) or is a
        single parameter set shared by all tasks. ``tasks=None`` keeps the environment's own task
        (one task).
        """
        num_tasks = len(tasks) if tasks is not None else 1
        if next(iter(params.values())).dim() == next(iter(policy.parameters())).dim():
            params = per_task(params, num_tasks)
        if self.batch_unit == "episodes" or tasks is None:
            return self._sample_episodes(policy, params, tasks)
        # Rounds of E episodes (and the spares) for the tasks whose episodes do not yet hold E × horizon steps.
        budget = self.episodes_per_task * self.horizon
        rounds: list[list[Episodes]] = [[] for _ in tasks]
        steps = np.zeros(num_tasks)
        active = np.arange(num_tasks)
        while len(active):
            index = torch.as_tensor(active)
            batch = self._sample_episodes(policy, {k: v[index] for k, v in params.items()}, [tasks[i] for i in active])
            for row, task in enumerate(active):
                rounds[task].append(select_tasks(batch, slice(row, row + 1)))
            steps[active] += batch.mask.sum((1, 2)).cpu().numpy()
            active = active[steps[active] < budget]
        return stack_tasks([first_episodes_within(concat_episodes(task_rounds), budget) for task_rounds in rounds])

    @torch.no_grad()
    def _sample_episodes(self, policy: nn.Module, params: Params, tasks: Sequence[Any] | None) -> Episodes:
        """One episode in each of the E copies of every task, all in lockstep."""
        # The per-step policy forward is small; torch's idle threads would spin on the cores the
        # physics threads (or workers) need, so sampling runs torch on one thread.
        with torch_threads(1):
            return self._lockstep_episodes(policy, params, tasks)

    def _lockstep_episodes(self, policy: nn.Module, params: Params, tasks: Sequence[Any] | None) -> Episodes:
        """One episode in each of the E copies of every task, from the next seed of `rng`."""
        seed = int(self.rng.integers(2**31))
        if tasks is None:
            return self._round(policy, params, None, seed)
        noise = AllCopiesNoise(len(tasks))
        episodes = self.task_episodes(policy, params, tasks, seed, noise)
        noise.finish()
        return episodes

    def task_episodes(
        self,
        policy: nn.Module,
        params: Params,
        tasks: Sequence[Any],
        seed: int,
        noise: AllCopiesNoise,
        first_task: int = 0,
    ) -> Episodes:
        """The episodes of `tasks`, tasks ``first_task, first_task + 1, …`` of a call over
        ``noise.total_tasks`` tasks whose copies reset with seeds ``seed, seed + 1, …``.

        Whichever part of a call runs here (all of it, a round of `max_copies`, a Ray actor's
        slice), copy ``i`` of the call resets with ``seed + i`` and acts with its rows of the
        call's noise, so the parts' episodes are those of the whole call at once. Runs in rounds
        of whole tasks on at most `max_copies` copies.
        """
        num_tasks = len(tasks)
        per_round = min(self.tasks_per_round() or num_tasks, num_tasks)
        # Bounded: one vector env serves every call, a smaller call fills up the one already built.
        copies_for = max(per_round, *self._vector_envs, 0) if self.max_copies is not None else None
        envs = self._vector_env(copies_for or per_round)
        if self._runs_free(envs, policy):
            return self._free_running_episodes(envs, policy, params, tasks, seed, noise, first_task)
        rounds = []
        for start in range(0, num_tasks, per_round):
            rows = slice(start, min(start + per_round, num_tasks))
            round_params = {name: value[rows] for name, value in params.items()}
            call_rows = slice(first_task + rows.start, first_task + rows.stop)
            round_seed = seed + call_rows.start * self.copies_per_task
            rounds.append(self._round(policy, round_params, tasks[rows], round_seed, noise, call_rows, copies_for))
        return rounds[0] if len(rounds) == 1 else stack_tasks(rounds)

    def tasks_per_round(self) -> int | None:
        """How many tasks' episodes run at once on the `max_copies` environment copies (None: all)."""
        if self.max_copies is None:
            return None
        return max(1, self.max_copies // self.copies_per_task)

    def _round(
        self,
        policy: nn.Module,
        params: Params,
        tasks: Sequence[Any] | None,
        seed: int,
        noise: AllCopiesNoise | None = None,
        rows: slice | None = None,
        copies_for: int | None = None,
    ) -> Episodes:
        """One episode in each of the E copies of every task, all in lockstep.

        With `noise`, the policy acts with `rows` of the call's noise. The vector env holds
        `copies_for` tasks: a round with fewer tasks fills it up with its last task (their episodes
        are dropped), so that one vector env of at most ``max_copies`` copies serves all.
        """
        num_tasks, num_episodes = len(tasks) if tasks is not None else 1, self.copies_per_task
        width = max(copies_for or num_tasks, num_tasks)
        if width > num_tasks:
            tasks = [*tasks, *[tasks[-1]] * (width - num_tasks)]
            params = {k: torch.cat([v, v[-1:].expand(width - num_tasks, *v.shape[1:])]) for k, v in params.items()}
        envs = self._vector_env(width)
        self.busy = ("resetting", time.monotonic(), 1)
        if tasks is not None:
            with environment_errors("setting tasks"):
                set_tasks(envs, [task for task in tasks for _ in range(num_episodes)])
        with environment_errors("resetting"):
            obs, _ = envs.reset(seed=seed)
        features = None
        if self.observe_task:
            features = np.repeat(np.stack([task_features(task) for task in tasks]), num_episodes, axis=0)
        alive = np.ones(envs.num_envs, dtype=bool)
        alive[num_tasks * num_episodes :] = False  # the copies that fill up a last round

        shape = (num_episodes, *self.action_space.shape)
        round_noise = None if noise is None else RoundNoise(noise, rows, width, shape, self.horizon)

        def stepping() -> None:
            self.busy = ("stepping", time.monotonic(), 1)

        episodes = self.rollout().run(envs, obs, policy, params, round_noise, alive, tasks, features, beat=stepping)
        if round_noise is not None and round_noise.drawn:
            noise.used = max(noise.used, episodes.mask.shape[2])
        self.busy = None
        return select_tasks(episodes, slice(0, num_tasks)) if width > num_tasks else episodes

    def rollout(self) -> Rollout:
        """How this sampler runs episodes on a vector env (`Rollout`)."""
        return Rollout(
            self.horizon, self.action_space, self.action_scaling, self.action_bound, self.info_metrics, self.device
        )

    def _runs_free(self, envs: VectorEnv, policy: nn.Module) -> bool:
        """Whether `envs`'s slices run whole episodes on their own (``free_running``): worker
        processes, a CPU policy that acts with Gaussian noise drawn here, in numpy (metarl's
        Gaussian policy, `numpy_actor`; other policies step in lockstep)."""
        return (
            self.free_running
            and isinstance(envs, WorkerVectorEnv)
            and isinstance(self.action_space, spaces.Box)
            and self.device.type == "cpu"
            and hasattr(policy, "numpy_actor")
        )

    def _free_running_episodes(
        self,
        envs: WorkerVectorEnv,
        policy: nn.Module,
        params: Params,
        tasks: Sequence[Any],
        seed: int,
        noise: AllCopiesNoise,
        first_task: int,
    ) -> Episodes:
        """`task_episodes` with each slice of `envs` (a worker process's, and this process's) running
        an equal share of the tasks, in rounds on its own copies, with its own policy forward and
        its rows of the call's noise, drawn here for the whole horizon: no process waits for
        another until all are done. The episodes' steps are the lockstep's; after a slice's last
        episode ended its steps are zeros (masked) instead of the lockstep's discarded steps."""
        num_episodes = self.copies_per_task
        ahead = noise.ahead(self.horizon, (num_episodes, *self.action_space.shape))
        rollout = self.rollout()
        shares = contiguous_slices(len(tasks), len(envs.slices))
        payloads = []
        for (first, stop), (copy_start, copy_stop) in zip(shares, envs.slices, strict=True):
            calls = slice(first_task + first, first_task + stop)  # rows of the whole call
            share = list(tasks[first:stop])
            payload = SliceWork(
                rollout,
                policy,
                {name: value[first:stop].detach() for name, value in params.items()},
                np.ascontiguousarray(ahead[:, calls]),
                share,
                seed + calls.start * num_episodes,
                None if not self.observe_task else np.stack([task_features(task) for task in share]),
                (copy_stop - copy_start) // num_episodes,
                first * num_episodes,
            )
            payloads.append(pickle.dumps(payload))  # plain pickles: no shared-memory tensors in the pipes
        parts = [part for part in envs.run(run_slice, payloads) if part is not None]
        for part in parts:
            if isinstance(part, Exception):
                raise part
        episodes = _join_parts(parts, self.device)
        noise.used = max(noise.used, episodes.mask.shape[2])
        return episodes

    def close_vector_envs(self) -> None:
        """Close the vector envs (they are built again on the next `sample`)."""
        for envs in self._vector_envs.values():
            envs.close()
        self._vector_envs.clear()

    def release_workers(self) -> None:
        """Between calls, hand back what another sampler of this process may need (`RaySampler`:
        its actors, the CPUs of a cluster it may fill; taken again on the next call); here nothing."""

    def close(self) -> None:
        self.close_vector_envs()
        self.env.close()


def check_spaces(env: gym.Env) -> None:
    """The spaces metarl's policies handle: flat Box observations; flat Box or Discrete actions."""
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    observations, actions = env.observation_space, env.action_space
    if not (isinstance(observations, spaces.Box) and len(observations.shape) == 1):
        raise EnvError(
            f"{name} observes {observations}; metarl's policies need a flat Box observation space: wrap the "
            "environment in gymnasium.wrappers.FlattenObservation (registered with that wrapper, or in a factory)"
        )
    if not (isinstance(actions, spaces.Discrete) or (isinstance(actions, spaces.Box) and len(actions.shape) == 1)):
        raise EnvError(
            f"{name} acts in {actions}; metarl's policies act in a flat Box or a Discrete action space: wrap the "
            "environment (a gymnasium.ActionWrapper) so that it takes one"
        )


def with_task_features(space: gym.Space, env: gym.Env) -> spaces.Box:
    """The observation space of an oracle: `space` followed by the `task_features` of env's tasks."""
    if not (isinstance(space, spaces.Box) and len(space.shape) == 1):
        raise EnvError(f"an oracle appends the task to flat Box observations; {env.spec.id} observes {space}")
    size = len(task_features(sample_tasks(env, 1, np.random.default_rng(0))[0]))
    low = np.concatenate([space.low, np.full(size, -np.inf)]).astype(np.float32)
    high = np.concatenate([space.high, np.full(size, np.inf)]).astype(np.float32)
    return spaces.Box(low, high, dtype=np.float32)


def _check_finite(
    values: np.ndarray, what: str, tasks: Sequence[Any] | None, num_episodes: int, first_copy: int = 0
) -> None:
    if np.issubdtype(np.asarray(values).dtype, np.floating) and not np.isfinite(values).all():
        bad = int(np.argwhere(~np.isfinite(np.asarray(values).reshape(len(values), -1)))[0][0])
        task = repr(tasks[bad // num_episodes]) if tasks is not None else "the environment's own"
        raise NonFiniteError(
            f"the environment returned non-finite {what} (copy {first_copy + bad}, task {task}); check the "
            "environment's dynamics for this task, or the actions it receives"
        )


class AllCopiesNoise:
    """The policy noise of one sampling call, step by step, shared by the parts that run it.

    A call over B tasks draws one standard-normal tensor ``[B, E, action]`` per step from torch's
    CPU generator, as ``Normal.sample`` would for all copies at once (``loc + scale · ε``), on every
    device. Its parts (rounds of `max_copies`, worker slices, Ray actors) act with their rows of
    those same draws; the first part to need the noise draws the horizon's steps, and `finish`
    leaves the generator where the steps the call took would, as if drawn step by step. Discrete
    policies sample each part on its own (same distribution, other draws).
    """

    def __init__(self, total_tasks: int) -> None:
        self.total_tasks = total_tasks
        self.steps: list[np.ndarray] = []
        self.used = 0  # steps some part acted on: where the generator ends (`finish`)
        self._states: dict[int, Tensor] = {}  # the generator's state before each step drawn

    @staticmethod
    def skip(steps: int, shape: Sequence[int]) -> None:
        """Advance torch's generator past `steps` steps of a call's noise of `shape` ``[B, E, action]``
        (drawn elsewhere, e.g. by Ray actors from a copy of this generator's state)."""
        for _ in range(steps):
            torch.empty(tuple(shape)).normal_()

    def ahead(self, steps: int, shape: Sequence[int]) -> np.ndarray:
        """The noise of the first `steps` steps, ``[steps, B, E, action]``, drawing those not drawn
        yet. Set `used` to the steps the parts took; `finish` rewinds the generator to there."""
        for t in range(len(self.steps), steps):
            self._states[t] = torch.get_rng_state()
            self.steps.append(torch.empty((self.total_tasks, *shape)).normal_().numpy())
        return np.stack(self.steps[:steps])

    def finish(self) -> None:
        """Leave torch's generator where the call's steps took it, not where `ahead` drew to."""
        if len(self.steps) > self.used and self.used in self._states:
            torch.set_rng_state(self._states[self.used])
            del self.steps[self.used :]
        self._states.clear()


class RoundNoise:
    """A round's rows of a call's noise ``[T, width, E, action]`` (`AllCopiesNoise`), drawn for the
    whole horizon at first use: a policy that samples on its own (categorical) never draws it. The
    filler tasks of a short last round, up to `width`, get zeros (their actions are dropped)."""

    def __init__(self, noise: AllCopiesNoise, rows: slice, width: int, shape: Sequence[int], horizon: int) -> None:
        self.noise, self.rows, self.width, self.shape, self.horizon = noise, rows, width, tuple(shape), horizon
        self._array: np.ndarray | None = None

    @property
    def drawn(self) -> bool:
        return self._array is not None

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if self._array is None:
            array = self.noise.ahead(self.horizon, self.shape)[:, self.rows]
            missing = self.width - array.shape[1]
            self._array = np.concatenate([array, np.zeros((len(array), missing, *array.shape[2:]), array.dtype)], 1)
        return self._array[index]
