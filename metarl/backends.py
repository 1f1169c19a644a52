"""Sampling backends: the local `Sampler`, or long-lived Ray actors on a cluster (``env.backend``).

`RaySampler` splits each sampling call's tasks into contiguous slices of whole tasks, one per
actor. An actor (`SamplerActor`) owns a local `Sampler` (its environment copies, built in the actor
from the env id and tasks, batched physics where the family has it) for the whole run, and runs
whole episodes of its slice with its own batched policy forward. Per call the learner puts θ (or the
per-task adapted parameters) into Ray's object store once; actors return numpy arrays. No remote
call per env step. A closed `RaySampler` leaves its actors idle (environments closed) for this
process's next one: evaluation after training runs on the training's actors.

Same results: copy ``i`` of a call resets with ``seed + i`` on whichever actor holds it, and every
actor draws the call's policy noise from a copy of the learner's torch generator, taking its own
rows (`AllCopiesNoise`); the learner then advances its generator as the local call would. The
episodes are bit-identical to the local backend's for Gaussian policies on a CPU learner (tested),
whatever the number of actors or nodes. With ``train.device: cuda`` the actors still draw their
noise on the CPU, so the episodes follow the same distribution but differ from a local GPU run.

Faults: an actor that dies is re-created and its slice sampled again with the same seeds and noise,
so the episodes are those of a call without the fault (logged, and counted as
``sampler/actor_restarts``); an actor that keeps dying, or a lost cluster, stops the run with a
`WorkerError` within seconds (training saves ``last.pt`` and ``--resume`` continues).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from metarl.config import Config
from metarl.episodes import FIELDS, Episodes, stack_tasks
from metarl.errors import ConfigError, MetarlError, WorkerError
from metarl.functional import Params
from metarl.sampler import AllCopiesNoise, Sampler
from metarl.threads import available_cpus, torch_threads
from metarl.workers import contiguous_slices

log = logging.getLogger(__name__)

# Times in a row an actor may die on one slice of a call before the run stops.
MAX_RESTARTS = 3
# Seconds between checks that the cluster's head still answers while actors sample.
CLUSTER_CHECK_S = 2.0
# Seconds a new actor may wait for the cluster to start it (a CPU to be free, its process to start).
ACTOR_START_S = 120.0
# Actors of closed `RaySampler`s, idle, for this process's next one (evaluation after training, a
# test after a test) instead of new processes: (Ray job, actor, where it runs).
_IDLE_ACTORS: list[tuple[str, Any, Any]] = []


def make_sampler(
    config: Config, episodes_per_task: int | None = None, seed: int | None = None, batch_unit: str | None = None
) -> Sampler:
    """The sampler of ``config.env.backend``: `Sampler` (local) or `RaySampler`."""
    if config.env.backend == "ray":
        return RaySampler.from_config(config, episodes_per_task, seed, batch_unit)
    return Sampler.from_config(config, episodes_per_task, seed, batch_unit)


def connect_ray(address: str | None = None) -> str:
    """Connect to the Ray cluster at `address` (or ``RAY_ADDRESS``), else start a local instance
    with this machine's cores; returns a description. Keeps a connection that already exists."""
    ray = _import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return "the Ray instance this process is connected to"
    try:
        if address is None:
            ray.init(num_cpus=available_cpus(), include_dashboard=False, logging_level=logging.WARNING)
            return "a local Ray instance"
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
        auth = (
            ""
            if os.environ.get("RAY_AUTH_MODE") == "token"
            else " (with token authentication, ray start's default: export RAY_AUTH_MODE=token, the cluster's "
            "token in ~/.ray/auth_token)"
        )
        raise WorkerError(
            f"could not connect to the Ray cluster at {address!r} ({_first_line(error)}): start one with "
            f"'ray start --head'{auth}, or leave env.ray_address and RAY_ADDRESS unset for a local instance"
        ) from None
    return f"the Ray cluster at {address}"


class SamplerActor:
    """One Ray actor: a local `Sampler` over its own environment copies, built on the first call
    from the settings it is given, for the whole run. When the run's sampler closes, the actor
    stays with this process, idle and without environments, for its next `RaySampler`."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.sampler: Sampler | None = None
        self.settings_id: str | None = None
        self._lock = threading.Lock()  # `run` and `release`; `overdue` answers without it

    def overdue(self, limit: float) -> tuple[str, float, float] | None:
        """What the environments have been doing, for how long and how long that may take, if
        longer than `limit` seconds (per copy while building copies); else None. Answered from a
        second thread while `run` runs."""
        sampler = self.sampler
        if sampler is None or sampler.busy is None:
            return None
        what, since, copies = sampler.busy
        seconds = time.monotonic() - since
        return (what, seconds, limit * copies) if seconds > limit * copies else None

    def where(self) -> tuple[str, str, int]:
        """Node id, node address and process id: what a fault report names."""
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), os.getpid()

    def release(self, settings_id: str) -> None:
        """Close the environments of the sampler `settings_id`, if they are still this actor's."""
        with self._lock:
            if self.settings_id == settings_id:
                self._close()

    def _close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        self.sampler = self.settings_id = None

    def run(
        self,
        settings_id: str,
        settings: Mapping[str, Any],
        policy: nn.Module,
        params: Mapping[str, np.ndarray],
        shared: bool,
        first_task: int,
        tasks: Sequence[Any],
        seed: int,
        rng_state: torch.Tensor,
        total_tasks: int,
    ) -> tuple[dict[str, Any], int, float]:
        """The episodes of `tasks` (tasks `first_task`… of a call over `total_tasks`) as numpy
        arrays, the noise steps drawn, and the seconds spent. The sampler `settings_id` (its
        `Sampler` arguments: `settings`) is built first where this actor last served another."""
        start = time.perf_counter()
        rows = slice(first_task, first_task + len(tasks))
        tensors = {name: torch.from_numpy(np.array(value)) for name, value in params.items()}  # writable copies
        if shared:  # θ, the same for every task
            tensors = {name: value.expand(len(tasks), *value.shape) for name, value in tensors.items()}
        else:
            tensors = {name: value[rows] for name, value in tensors.items()}
        with self._lock:
            if self.settings_id != settings_id:
                self._close()
                self.sampler, self.settings_id = Sampler(**settings), settings_id
            torch.set_rng_state(rng_state)
            noise = AllCopiesNoise(total_tasks)
            with torch.no_grad(), torch_threads(1):
                episodes = self.sampler.task_episodes(policy, tensors, tasks, seed, noise, first_task)
        arrays = {name: getattr(episodes, name).numpy() for name in FIELDS}
        arrays["metrics"] = {k: v.numpy() for k, v in (episodes.metrics or {}).items()}
        return arrays, noise.used, time.perf_counter() - start


class RaySampler(Sampler):
    """A `Sampler` whose calls run on `actors` Ray actors, each owning a slice of whole tasks.

    Args:
        actors: Ray actors (default: one per CPU of the cluster); each takes one CPU.
        address: the Ray cluster to connect to (default: ``RAY_ADDRESS``, else a local instance).
        **kwargs: the `Sampler`'s; the actors build their own copies of the environment with them
            (one thread each: ``workers`` is not passed on).
    """

    def __init__(self, *, actors: int | None = None, address: str | None = None, **kwargs: Any) -> None:
        self.cluster = connect_ray(address)
        super().__init__(**{**kwargs, "workers": 1})
        settings = {**kwargs, "workers": 1, "device": "cpu", "seed": 0}  # the actors' `Sampler`s
        self._settings_id, self._settings = uuid.uuid4().hex, _import_ray().put(settings)
        cpus = int(_import_ray().cluster_resources().get("CPU", 0))
        self.num_actors = actors or max(1, cpus)
        if self.num_actors > cpus:
            raise ConfigError(
                [
                    f"env.workers={self.num_actors} Ray actors need a CPU each, but {self.cluster} has {cpus}: "
                    f"set env.workers to at most {cpus}, or add nodes (ray start --address HEAD:6379)"
                ]
            )
        self._actors: list[Any] = [None] * self.num_actors  # created on first use
        self._where: list[Any] = [None] * self.num_actors  # (node id, address, pid), or the call answering it
        self._created: list[float | None] = [None] * self.num_actors  # when a new actor was asked for
        self._policies: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()
        self.actor_restarts = 0
        self.bytes_sent, self.bytes_received = len(pickle.dumps(settings)), 0
        self.overhead_s = 0.0  # a call's wall time beyond its slowest actor's own time, summed
        self._gcs_address: str | None = None

    @classmethod
    def config_arguments(cls, config: Config, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The local sampler's arguments (`Sampler.config_arguments`), and the actors
        (``env.workers``) and cluster (``env.ray_address``)."""
        arguments = super().config_arguments(config, *args, **kwargs)
        return {**arguments, "actors": config.env.workers, "address": config.env.ray_address}

    def statistics(self) -> dict[str, float]:
        """What training logs next to its timings (``sampler/...``)."""
        return {
            "sampler/actor_restarts": float(self.actor_restarts),
            "sampler/bytes_sent": float(self.bytes_sent),
            "sampler/bytes_received": float(self.bytes_received),
            "sampler/ray_overhead_s": self.overhead_s,
        }

    def _lockstep_episodes(self, policy: nn.Module, params: Params, tasks: Sequence[Any] | None) -> Episodes:
        if tasks is None:
            return super()._lockstep_episodes(policy, params, tasks)
        ray = _import_ray()
        start = time.perf_counter()
        self.check_cluster()
        seed = int(self.rng.integers(2**31))
        rng_state = torch.get_rng_state()
        num_tasks = len(tasks)
        shared = all(value.stride(0) == 0 for value in params.values())  # θ expanded over the tasks
        arrays = {name: (value[0] if shared else value).detach().cpu().numpy() for name, value in params.items()}
        self.bytes_sent += sum(value.nbytes for value in arrays.values())
        params_ref = ray.put(arrays)
        policy_ref = self._policy_ref(policy)
        calls = {}
        # Whole tasks per actor; with fewer tasks than actors, the last actors stay idle.
        for index, (first, stop) in enumerate(contiguous_slices(num_tasks, min(self.num_actors, num_tasks))):
            inline = (first, list(tasks[first:stop]), seed, rng_state, num_tasks)  # sent with each call
            self.bytes_sent += len(pickle.dumps(inline))
            calls[index] = (policy_ref, params_ref, shared, *inline)
        results = self._run(calls)
        parts, noise_steps, busy = [], 0, 0.0
        for arrays_out, steps, seconds in results:
            metrics = {k: torch.from_numpy(np.array(v)).to(self.device) for k, v in arrays_out.pop("metrics").items()}
            self.bytes_received += sum(v.nbytes for v in arrays_out.values())
            tensors = {k: torch.from_numpy(np.array(v)).to(self.device) for k, v in arrays_out.items()}
            parts.append(Episodes(**tensors, metrics=metrics or None))
            noise_steps, busy = max(noise_steps, steps), max(busy, seconds)
        episodes = parts[0] if len(parts) == 1 else stack_tasks(parts)
        actions = episodes.actions.shape  # [B, E, T, *action]
        AllCopiesNoise.skip(noise_steps, (num_tasks, actions[1], *actions[3:]))
        self.overhead_s += max(0.0, time.perf_counter() - start - busy)
        return episodes

    def _policy_ref(self, policy: nn.Module) -> Any:
        """The policy module in the object store, put once per module (its structure; the
        parameters travel with each call)."""
        if policy not in self._policies:
            module = policy if next(policy.parameters()).device.type == "cpu" else copy.deepcopy(policy).cpu()
            self.bytes_sent += len(pickle.dumps(module))
            self._policies[policy] = _import_ray().put(module)
        return self._policies[policy]

    def describe_actor(self, index: int) -> str:
        """``Ray actor i (pid … on node …)``, as far as the actor told before it failed."""
        where = self._resolve_where(index)
        if where is None:
            return f"Ray actor {index}"
        node_id, address, pid = where
        return f"Ray actor {index} (pid {pid} on node {address}, {node_id[:8]})"

    def _resolve_where(self, index: int) -> tuple[str, str, int] | None:
        where = self._where[index]
        if where is not None and not isinstance(where, tuple):  # still the actor's answer to come
            try:
                where = self._where[index] = _import_ray().get(where, timeout=5)
            except Exception:  # noqa: BLE001 - an actor that died before answering
                return None
        return where

    def actor_nodes(self) -> list[str]:
        """The node id of every actor (after a first call)."""
        return [where[0] for where in map(self._resolve_where, range(self.num_actors)) if where is not None]

    def _run(self, calls: Mapping[int, tuple[Any, ...]]) -> list[Any]:
        """Every actor's result for its call; a dead actor is re-created and its call run again."""
        ray = _import_ray()
        from ray import exceptions

        results: dict[int, Any] = {}
        deaths = dict.fromkeys(calls, 0)
        pending = {self._submit(index, call): index for index, call in calls.items()}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=CLUSTER_CHECK_S)
                if not ready:
                    self.check_cluster()
                    self._check_started(sorted(pending.values()))
                    self._check_progress(sorted(pending.values()))
                    continue
                index = pending.pop(ready[0])
                try:
                    results[index] = ray.get(ready[0])
                except exceptions.RayActorError as error:
                    self.check_cluster()  # the actor died with its node or the whole cluster?
                    deaths[index] += 1
                    what = f"{self.describe_actor(index)} died ({_first_line(error)})"
                    if deaths[index] > MAX_RESTARTS:
                        raise WorkerError(f"{what}, {deaths[index]} times on the same tasks: giving up") from None
                    self._actors[index] = None
                    self.actor_restarts += 1
                    first, tasks = calls[index][3], calls[index][4]
                    log.warning(
                        "%s; re-created it and sampled its tasks %d-%d again", what, first, first + len(tasks) - 1
                    )
                    pending[self._submit(index, calls[index], new=True)] = index
                except exceptions.RayTaskError as error:
                    cause = error.cause
                    if isinstance(cause, MetarlError):  # e.g. the environment's NaN, named by copy and task
                        raise cause from None
                    raise WorkerError(
                        f"{self.describe_actor(index)} raised {type(cause).__name__}: {cause}",
                        details=str(error),
                    ) from None
                except exceptions.RayError as error:
                    raise WorkerError(
                        f"lost {self.cluster} while sampling ({_first_line(error)}); the run's last checkpoint is kept"
                    ) from None
        except BaseException:
            self.close_actors()  # Ctrl-C or an error: the actors' answers are left unread
            raise
        return [results[index] for index in sorted(results)]

    def _check_progress(self, indices: Sequence[int]) -> None:
        """Raise `WorkerError` if an actor's environments have been stuck in one reset or step for
        longer than ``env.worker_timeout`` (a whole call may take much longer)."""
        if self.worker_timeout is None:
            return
        ray = _import_ray()
        asked = {index: self._actors[index].overdue.remote(self.worker_timeout) for index in indices}
        ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=CLUSTER_CHECK_S)
        for index, ref in asked.items():
            if ref not in ready:
                continue  # still starting, or died: the call's own answer will say
            try:
                late = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            if late is not None:
                what, seconds, allowed = late
                raise WorkerError(
                    f"{self.describe_actor(index)} has been {what} for {seconds:.0f} s (env.worker_timeout allows "
                    f"{allowed:g} s): the environment may hang, or needs longer: raise env.worker_timeout"
                )

    def _check_started(self, indices: Sequence[int]) -> None:
        """Raise `WorkerError` if a new actor has waited longer than `ACTOR_START_S` for the cluster
        to start it (its CPU held by other actors or jobs)."""
        ray = _import_ray()
        for index in indices:
            created, where = self._created[index], self._where[index]
            if created is None or isinstance(where, tuple) or time.monotonic() - created < ACTOR_START_S:
                continue
            if ray.wait([where], timeout=0)[0]:
                continue
            free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources().get("CPU", 0)
            raise WorkerError(
                f"Ray actor {index} has not started in {time.monotonic() - created:.0f} s: {free:g} of {total:g} "
                f"CPUs of {self.cluster} are free, the others held by other actors or jobs: free them, or lower "
                "env.workers"
            )

    def check_cluster(self) -> None:
        """Raise `WorkerError` if the cluster's head (its GCS) no longer answers: checked before each
        call and every few seconds while waiting, so a lost cluster stops the run in seconds, not
        after ``env.worker_timeout`` or Ray's own reconnection timeout (which exits the process)."""
        if self._gcs_address is None:
            self._gcs_address = _import_ray().get_runtime_context().gcs_address
        host, _, port = self._gcs_address.rpartition(":")
        error = _connection_error(host, int(port), CLUSTER_CHECK_S)
        if error is not None:
            raise WorkerError(
                f"lost {self.cluster}: its head ({self._gcs_address}) no longer answers ({error}); "
                "the run's last finished iteration is kept: restart the cluster, then resume"
            )

    def _submit(self, index: int, call: tuple[Any, ...], new: bool = False) -> Any:
        """Run `call` on actor `index`; where there is none (or it died), take an idle one of this
        process or, with `new` or none idle, create one."""
        if self._actors[index] is None:
            idle = None if new else _take_idle_actor()
            if idle is not None:
                self._actors[index], self._where[index] = idle
            else:
                # Two threads: `overdue` is answered while `run` runs.
                remote = _import_ray().remote(num_cpus=1, max_restarts=0, max_concurrency=2)(SamplerActor)
                self._actors[index] = remote.options(scheduling_strategy="SPREAD").remote()
                self._where[index] = self._actors[index].where.remote()  # answered first: actors run in order
                self._created[index] = time.monotonic()
        return self._actors[index].run.remote(self._settings_id, self._settings, *call)

    def close_actors(self, keep: bool = False) -> None:
        """Stop the actors or, with `keep`, leave them idle, without environments, for this
        process's next `RaySampler`. A next call creates or takes actors again."""
        ray = _import_ray()
        if ray.is_initialized():
            job = _ray_job()
            for actor, where in zip(self._actors, self._where, strict=True):
                if actor is not None and keep:
                    actor.release.remote(self._settings_id)
                    _IDLE_ACTORS.append((job, actor, where))
                elif actor is not None:
                    ray.kill(actor)
        self._actors = [None] * self.num_actors
        self._where = [None] * self.num_actors
        self._created = [None] * self.num_actors

    def release_workers(self) -> None:
        self.close_actors(keep=True)

    def close(self) -> None:
        self.close_actors(keep=True)
        super().close()


def _take_idle_actor() -> tuple[Any, Any] | None:
    """An idle actor of this process's Ray job (and where it runs), if there is one."""
    job = _ray_job()
    while _IDLE_ACTORS:
        owner, actor, where = _IDLE_ACTORS.pop()
        if owner == job:  # those of an earlier `ray.init` are gone with it
            return actor, where
    return None


def _ray_job() -> str:
    """This process's connection to Ray: its node and job (job ids restart with each new cluster)."""
    context = _import_ray().get_runtime_context()
    return f"{context.get_node_id()}/{context.get_job_id()}"


def stop_idle_actors() -> int:
    """Stop the idle actors this process keeps (their CPUs return to the cluster); how many."""
    ray = _import_ray()
    stopped = 0
    job = _ray_job() if ray.is_initialized() else None
    while _IDLE_ACTORS:
        owner, actor, _ = _IDLE_ACTORS.pop()
        if owner == job:
            ray.kill(actor)
            stopped += 1
    return stopped


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, where nothing listens at a ``HOST:PORT`` address (Ray's own
    connection attempts retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError([f"env.ray_address must be HOST:PORT (e.g. 10.0.0.1:6379) or 'auto', got {address!r}"])
    error = _connection_error(host, int(port), 5)
    if error is not None:
        raise WorkerError(
            f"could not connect to the Ray cluster at {address!r} ({error}): start one with "
            "'ray start --head', or leave env.ray_address and RAY_ADDRESS unset for a local instance"
        )


def _connection_error(host: str, port: int, timeout: float) -> str | None:
    """Why nothing accepts a TCP connection at ``host:port`` within `timeout` seconds, or None."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(["env.backend: ray needs Ray: pip install -e '.[ray]' (or set env.backend: local)"]) from None
    return ray
