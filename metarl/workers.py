"""A vector environment whose copies step in worker processes, for environments that cannot be batched.

`WorkerVectorEnv` splits ``num_envs`` copies into contiguous slices, one per worker process. Each
worker runs its slice as a ``gymnasium.vector.SyncVectorEnv`` with next-step autoreset, so the
results are those of one ``SyncVectorEnv`` over all copies, whatever the number of workers.
With ``parent_slice`` the calling process steps the first slice itself while the processes step
theirs: on few cores the parent would otherwise sit idle while a worker does that share, and every
lockstep step would wait for one more process to wake up. Observations, actions, rewards and done
flags travel through shared memory; the pipes carry only short commands. `WorkerVectorEnv.run`
instead hands every slice a function to run on its own copies for many steps (whole episodes, with
the policy evaluated in the worker), with no lockstep between the slices until it returns. A worker that raises or
dies is reported as a `WorkerError` naming the worker, its copies and the cause, never as a hang.

Workers are started with ``spawn``, which re-imports the main module in every worker: a script that
creates a `WorkerVectorEnv` must keep its top-level code under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from metarl.errors import WorkerError
from metarl.info_metrics import step_values

# Workers step with one thread each: they must not compete with each other or with the policy.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_CLOSE_TIMEOUT = 5.0  # seconds the workers get to exit after "close", before they are terminated
# Seconds a worker may take to start Python and import its modules (a fresh install compiles them
# first), before `timeout` applies to building each environment copy.
_START_UP_GRACE = 60.0
_BUFFERS = ("observations", "actions", "rewards", "terminated", "truncated")


class WorkerVectorEnv(VectorEnv):
    """`len(env_fns)` environment copies stepped by `num_workers` processes, each owning a contiguous slice.

    Semantics are those of ``SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.NEXT_STEP)``: the
    same observations, rewards and done flags for the same seeds, tasks and actions. Differences:

    - ``reset`` returns an empty info dict; ``step`` returns the step infos of `info_keys` only
      (numbers, with Gymnasium's ``"_key"`` masks), since infos travel through the pipes;
    - actions are cast to the action space's dtype;
    - observations must be a ``Box`` (a `TypeError` otherwise);
    - a worker that raises in ``reset`` or ``step``, or dies, closes the whole vector env and raises
      a `WorkerError`; errors in ``get_attr``/``set_attr``/``call`` raise one and leave it usable.

    Args:
        env_fns: picklable callables that create one environment each (e.g. `env_factory`); the
            workers import their modules.
        num_workers: worker processes, between 1 and ``len(env_fns)``.
        start_method: ``spawn`` or ``forkserver`` (never ``fork``: the parent may hold torch threads).
        timeout: seconds to wait for a worker's answer, and for its environments to be built at
            start-up (None: as long as it lives).
        info_keys: the step-info keys to send back (numbers per copy; Meta-World's "success").
        parent_slice: the calling process steps the first slice itself while the workers step
            theirs (``num_workers - 1`` processes): no wait for a process to wake up and answer
            for that share, and one process fewer. `timeout` applies to it through ``SIGALRM``,
            which interrupts Python code (a hang inside one C call is not); so it needs the main
            thread of a POSIX process, and is ignored elsewhere.
        group: copies that stay together in one slice (a task's episodes, for `run`): slices hold
            whole groups, sizes differing by at most one group; ``len(env_fns)`` must be a multiple.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        num_workers: int,
        start_method: str = "spawn",
        timeout: float | None = None,
        info_keys: Sequence[str] = (),
        parent_slice: bool = False,
        group: int = 1,
    ) -> None:
        num_envs = len(env_fns)
        self.info_keys = tuple(info_keys)
        if group < 1 or num_envs % group:
            raise ValueError(f"the {num_envs} copies must form whole groups of {group}")
        if not 1 <= num_workers <= num_envs // group:
            raise ValueError(
                f"num_workers must be between 1 and the number of copies ({num_envs}) in groups of {group}, "
                f"got {num_workers}"
            )
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        self.num_envs, self.num_workers, self.timeout = num_envs, num_workers, timeout
        self.slices: tuple[tuple[int, int], ...] = tuple(
            (start * group, stop * group) for start, stop in contiguous_slices(num_envs // group, num_workers)
        )
        self.metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = None
        self.closed = False
        self._failure: str | None = None

        # The finalizer owns the processes and shared memory, so Ctrl-C, an error or interpreter exit
        # in the parent stops the workers and frees the memory even if close() is never called.
        self._processes: list[BaseProcess] = []
        self._conns: list[Connection] = []
        self._shms: list[SharedMemory] = []
        self._buffers: dict[str, np.ndarray] = {}
        # The parent's own slice (parent_slice): its SyncVectorEnv and its rows of the buffers.
        self._parent: dict[str, Any] = {}
        parent_slice = parent_slice and _alarm_available()
        self._offset = 1 if parent_slice else 0  # slice index of the first worker process
        self._finalizer = weakref.finalize(
            self, _shutdown, self._processes, self._conns, self._shms, self._buffers, self._parent
        )

        context = mp.get_context(start_method)
        try:
            with _child_process_settings():
                for index, (start, stop) in enumerate(self.slices[self._offset :], start=self._offset):
                    parent_end, child_end = context.Pipe()
                    process = context.Process(
                        target=_serve,
                        args=(list(env_fns[start:stop]), start, child_end, self.info_keys),
                        name=f"metarl-worker-{index}",
                        daemon=True,
                    )
                    self._conns.append(parent_end)
                    try:
                        process.start()
                    except (pickle.PicklingError, AttributeError, TypeError) as error:
                        raise TypeError(
                            f"env_fns must be picklable to reach the worker processes ({error}); use module-level "
                            "functions or classes, e.g. metarl.workers.env_factory(env_id, kwargs, horizon)"
                        ) from None
                    finally:
                        child_end.close()
                    self._processes.append(process)
            if parent_slice:  # built while the workers build theirs
                start, stop = self.slices[0]
                self._parent["envs"] = KeyedSyncVectorEnv(list(env_fns[start:stop]), self.info_keys, copy=False)
            observation_space, action_space = self._start()
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = observation_space, action_space
        self.observation_space = batch_space(observation_space, num_envs)
        self.action_space = batch_space(action_space, num_envs)

    @property
    def worker_pids(self) -> tuple[int | None, ...]:
        """Process id of every worker process (not of the parent, when it steps a slice)."""
        return tuple(process.pid for process in self._processes)

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every copy; an int seed gives copy ``i`` the seed ``seed + i``. Returns an empty info dict."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds (one per copy), got {len(seeds)}")
        mask = None if options is None else options.get("reset_mask")
        payloads = []
        for start, stop in self.slices:
            slice_options = options
            if mask is not None:
                slice_options = {**options, "reset_mask": np.asarray(mask)[start:stop]}
                if not slice_options["reset_mask"].any():
                    slice_options = None  # nothing to reset in this slice
            payloads.append((seeds[start:stop], slice_options, mask is not None))
        self._command("reset", payloads, fatal=True)
        return self._buffers["observations"].copy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every copy (next-step autoreset); returns copies of the results, and the infos of `info_keys`."""
        self._check_open()
        actions = np.asarray(actions)
        buffer = self._buffers["actions"]
        if actions.shape != buffer.shape:
            raise ValueError(f"expected actions of shape {buffer.shape} (one per copy), got {actions.shape}")
        buffer[...] = actions
        answers = self._command("step", [self.info_keys] * self.num_workers, fatal=True)
        infos: dict[str, np.ndarray] = {}
        for (start, stop), answer in zip(self.slices, answers, strict=True):
            for key, (values, present) in answer.items():
                if key not in infos:
                    infos[key], infos[f"_{key}"] = np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=bool)
                infos[key][start:stop], infos[f"_{key}"][start:stop] = values, present
        return (
            self._buffers["observations"].copy(),
            self._buffers["rewards"].copy(),
            self._buffers["terminated"].copy(),
            self._buffers["truncated"].copy(),
            infos,
        )

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute `name` of every copy (through wrappers)."""
        return tuple(value for values in self._command("get_attr", [name] * self.num_workers) for value in values)

    def set_attr(self, name: str, values: Any) -> None:
        """Set `name` on every copy: a list or tuple gives one value per copy, anything else is set on all."""
        if isinstance(values, (list, tuple)):
            if len(values) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} values (one per copy) for {name!r}, got {len(values)}")
            payloads = [(name, list(values[start:stop])) for start, stop in self.slices]
        else:
            payloads = [(name, values)] * self.num_workers
        self._command("set_attr", payloads)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call the method `name` of every copy (or read the attribute, as ``SyncVectorEnv.call`` does).

        The arguments are pickled: each worker gets its own copy (a random generator is not shared).
        """
        payloads = [(name, args, kwargs)] * self.num_workers
        return tuple(value for values in self._command("call", payloads) for value in values)

    def run(self, function: Callable[..., Any], payloads: Sequence[Any]) -> list[Any]:
        """Run ``function(envs, payload, beat)`` on every slice at once (the parent's too) and
        return the results in slice order.

        `envs` is the slice's next-step-autoreset vector env (its copies as the last command left
        them; the function may reset them), `payload` the slice's entry of `payloads`, and
        ``beat()`` says the function is still making progress: each call restarts `timeout` (call
        it once per step; it sends at most one message a second). `function` must be picklable (a
        module-level function); the workers import its module. Afterwards the shared buffers no
        longer hold the copies' observations. An error or a missed deadline closes the vector env,
        as in `step`.
        """
        if len(payloads) != self.num_workers:
            raise ValueError(f"expected {self.num_workers} payloads (one per slice), got {len(payloads)}")
        return self._command("run", [(function, payload) for payload in payloads], fatal=True)

    def close_extras(self, **kwargs: Any) -> None:
        """Stop the workers (``close``, then terminate after a timeout) and free the shared memory."""
        self._finalizer()

    # Internals -----------------------------------------------------------------------------------

    def _start(self) -> tuple[gym.Space, gym.Space]:
        """Wait for the workers' environments, then share the buffers with them."""
        deadline = None if self.timeout is None else time.monotonic() + max(self.timeout, _START_UP_GRACE)
        replies = self._gather("start-up", deadline, progress_timeout=self.timeout)
        if self._parent:
            envs = self._parent["envs"]
            replies = [(envs.single_observation_space, envs.single_action_space), *replies]
        observation_space, action_space = replies[0]
        for index, (obs_space, act_space) in enumerate(replies):
            if obs_space != observation_space or act_space != action_space:
                raise ValueError(
                    f"worker {index}'s environments have spaces {obs_space}, {act_space}; worker 0's have "
                    f"{observation_space}, {action_space}: all copies must share their spaces"
                )
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"WorkerVectorEnv supports Box observation spaces only, got {observation_space}")
        batched_actions = batch_space(action_space, self.num_envs)
        if not isinstance(batched_actions, (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)):
            raise TypeError(f"WorkerVectorEnv supports Box, Discrete and Multi* action spaces, got {action_space}")
        layout = {
            "observations": ((self.num_envs, *observation_space.shape), observation_space.dtype),
            "actions": (batched_actions.shape, batched_actions.dtype),
            "rewards": ((self.num_envs,), np.dtype(np.float64)),
            "terminated": ((self.num_envs,), np.dtype(np.bool_)),
            "truncated": ((self.num_envs,), np.dtype(np.bool_)),
        }
        described = {}
        for name, (shape, dtype) in layout.items():
            dtype = np.dtype(dtype)
            shm = SharedMemory(create=True, size=max(1, int(np.prod(shape)) * dtype.itemsize))
            self._shms.append(shm)
            self._buffers[name] = np.ndarray(shape, dtype, buffer=shm.buf)
            described[name] = (shm.name, shape, dtype.str)
        if self._parent:
            start, stop = self.slices[0]
            self._parent["views"] = {name: buffer[start:stop] for name, buffer in self._buffers.items()}
        self._command("attach", [described] * self.num_workers, fatal=True, patient=True)
        return observation_space, action_space

    def _check_open(self) -> None:
        if self.closed or not self._finalizer.alive:
            cause = f" after an error: {self._failure}" if self._failure else ""
            raise WorkerError(f"this WorkerVectorEnv is closed{cause}")

    def _command(self, command: str, payloads: Sequence[Any], fatal: bool = False, patient: bool = False) -> list[Any]:
        """Send `command` with one payload per worker and return their answers in worker order.

        `fatal`: a worker's exception leaves the copies out of step, so the vector env is closed.
        A dead or silent worker always closes it. `patient`: ignore `timeout`.
        """
        self._check_open()
        for conn, payload in zip(self._conns, payloads[self._offset :], strict=True):
            with contextlib.suppress(OSError):  # a dead worker is reported by _gather
                conn.send((command, payload))
        deadline = None if self.timeout is None or patient else time.monotonic() + self.timeout
        try:
            parent: list[Any] = []
            failed = None
            if self._parent and command != "attach":  # the parent's slice, while the workers run theirs
                try:
                    with _alarm(None if patient else self.timeout) as rearm:
                        beat = _Heartbeat(rearm)
                        parent.append(_execute(self._parent["envs"], self._parent["views"], command, payloads[0], beat))
                except _ParentTimeout:
                    failed = ("", self._late(0, command, 0), "")
                except Exception as error:
                    failed = _remote_error(error)
            progress_timeout = self.timeout if command == "run" else None
            return parent + self._gather(command, deadline, fatal, progress_timeout, parent_error=failed)
        except KeyboardInterrupt:
            self.close()  # the workers' answers are left unread: the env cannot go on
            raise

    def _gather(
        self,
        what: str,
        deadline: float | None,
        fatal: bool = True,
        progress_timeout: float | None = None,
        parent_error: tuple[str, str, str] | None = None,
    ) -> list[Any]:
        """Every worker process's answer; raise a `WorkerError` when one fails, dies or misses its
        deadline, or when the parent's own slice failed (`parent_error`: kind, message, traceback).

        A worker may send ``("progress", n)`` before its answer (start-up: after its imports, then
        after building each copy; `run`: its function's beats): that moves its deadline to
        `progress_timeout` seconds from then.
        """
        answers: list[Any] = [None] * len(self._processes)
        errors: list[tuple[int, str]] = []
        details: list[str] = []
        dead = False
        if parent_error is not None:  # (kind, message, traceback); no kind: the message is whole (a timeout)
            kind, message, remote_traceback = parent_error
            errors.append((-1, f"{self._describe(0)} raised {kind}: {message} (during '{what}')" if kind else message))
            details.append(f"--- traceback in the parent's slice ---\n{remote_traceback.rstrip()}")
            dead = not kind  # a hang leaves the parent's copies in an unknown state
        pending = set(range(len(self._processes)))
        deadlines: dict[int, float | None] = dict.fromkeys(pending, deadline)
        progress: dict[int, int] = dict.fromkeys(pending, -1)  # -1: not started; n: n copies built
        while pending:
            waiting_on = [self._conns[i] for i in pending] + [self._processes[i].sentinel for i in pending]
            soonest = min((deadlines[i] for i in pending if deadlines[i] is not None), default=None)
            remaining = None if soonest is None else max(0.0, soonest - time.monotonic())
            ready = set(wait(waiting_on, timeout=remaining))
            if not ready:
                late = [i for i in sorted(pending) if deadlines[i] is not None and deadlines[i] <= time.monotonic()]
                if not late:  # woke a moment early
                    continue
                errors += [(i, self._late(i + self._offset, what, progress[i])) for i in late]
                dead = True
                break
            for index in sorted(pending):
                conn, process = self._conns[index], self._processes[index]
                if conn not in ready and process.sentinel not in ready:
                    continue
                try:
                    status, payload = conn.recv() if conn.poll() else ("died", None)
                except (EOFError, OSError):
                    status, payload = "died", None
                if status == "progress":
                    progress[index] = payload
                    deadlines[index] = None if progress_timeout is None else time.monotonic() + progress_timeout
                    continue
                pending.discard(index)
                if status == "ok":
                    answers[index] = payload
                elif status == "error":
                    kind, message, remote_traceback = payload
                    described = self._describe(index + self._offset)
                    errors.append((index, f"{described} raised {kind}: {message} (during '{what}')"))
                    details.append(f"--- traceback in worker {index + self._offset} ---\n{remote_traceback.rstrip()}")
                    dead = dead or what == "start-up"
                else:
                    hint = " (its output, if any, is on stderr)" if what == "start-up" else ""
                    described = self._describe(index + self._offset)
                    errors.append((index, f"{described} {self._death(process)} during '{what}'{hint}"))
                    dead = True
        if errors:
            message = "; ".join(text for _, text in sorted(errors))
            if fatal or dead:
                self._failure = message
                self.close()
            raise WorkerError(message, details="\n".join(details))
        return answers

    def _late(self, index: int, what: str, built: int) -> str:
        """Why worker `index` missed its deadline, and what to do."""
        if what != "start-up":
            return (
                f"{self._describe(index)} did not answer '{what}' within {self.timeout:g} s (env.worker_timeout); "
                "the environment may hang, or needs longer: raise env.worker_timeout"
            )
        if built < 0:
            return f"{self._describe(index)} did not start within {_START_UP_GRACE:g} s (starting Python and importing)"
        return (
            f"{self._describe(index)} did not finish building its environments within {self.timeout:g} s "
            f"(env.worker_timeout, per environment copy; {built} built): the environment constructor may hang, or "
            "needs longer: raise env.worker_timeout"
        )

    def _describe(self, index: int) -> str:
        """Who steps slice `index`: a worker process, or the parent."""
        start, stop = self.slices[index]
        copies = f"copy {start}" if stop - start == 1 else f"copies {start}-{stop - 1}"
        if index < self._offset:
            return f"the parent process ({copies}, pid {os.getpid()})"
        return f"worker {index} ({copies}, pid {self._processes[index - self._offset].pid})"

    @staticmethod
    def _death(process: BaseProcess) -> str:
        process.join(1.0)
        code = process.exitcode
        if code is None:
            return "closed its pipe"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by signal {signal.Signals(-code).name}"
            return f"was killed by signal {-code}"
        return f"exited with code {code}"


def contiguous_slices(count: int, parts: int) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of `parts` contiguous slices of ``range(count)``, sizes differing by at most one."""
    sizes = [count // parts + (i < count % parts) for i in range(parts)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return tuple(zip(starts[:-1], starts[1:], strict=True))


@contextlib.contextmanager
def _child_process_settings() -> Iterator[None]:
    """Workers start single-threaded and ignoring SIGINT (the parent handles Ctrl-C and closes them)."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    # An ignored SIGINT is inherited from the start, before the worker's imports.
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        yield
    finally:
        if main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _shutdown(
    processes: list[BaseProcess],
    conns: list[Connection],
    shms: list[SharedMemory],
    buffers: dict[str, np.ndarray],
    parent: dict[str, Any],
) -> None:
    """Ask the workers to exit, terminate those that do not, close the parent's slice, then free
    the shared memory."""
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.send(("close", None))
    deadline = time.monotonic() + _CLOSE_TIMEOUT
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join()
        with contextlib.suppress(ValueError):
            process.close()
    for conn in conns:
        conn.close()
    if "envs" in parent:
        with contextlib.suppress(Exception):
            parent["envs"].close()
    parent.clear()
    buffers.clear()  # views must go before the memory they look into
    for shm in shms:
        with contextlib.suppress(BufferError):
            shm.close()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()
    processes.clear()
    conns.clear()
    shms.clear()


class KeyedSyncVectorEnv(SyncVectorEnv):
    """A next-step-autoreset ``SyncVectorEnv`` that gathers only the step-info keys the sampler reads
    (a worker's slice, the parent's slice, or all copies in one process).

    ``SyncVectorEnv`` folds every key of every copy's info into arrays with masks: for Meta-World's
    eight keys that was 0.2–1.5 ms of a 4–6 ms step of 20 copies, for values nobody reads.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], info_keys: Sequence[str], copy: bool = True) -> None:
        """`copy`: return copies of the observations (``SyncVectorEnv``'s own `copy`); a slice
        whose caller copies them into shared buffers at once passes False."""
        super().__init__(list(env_fns), copy=copy, autoreset_mode=AutoresetMode.NEXT_STEP)
        self.info_keys = frozenset(info_keys)
        self._finish_steps = _steps_finished_together(self.envs)
        self._unwrapped = [env.unwrapped for env in self.envs]

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        observations, rewards, terminated, truncated, infos = super().step(actions)
        if self._finish_steps is not None:
            self._finish_steps(self._unwrapped, observations)
        return observations, rewards, terminated, truncated, infos

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int) -> dict[str, Any]:
        kept = {key: value for key, value in env_info.items() if key in self.info_keys}
        return super()._add_info(vector_infos, kept, env_num)


# The wrappers ``gymnasium.make`` puts around an environment: they hand its observations on unchanged.
_PASSING_WRAPPERS = (TimeLimit, OrderEnforcing, PassiveEnvChecker)


def _steps_finished_together(envs: Sequence[gym.Env]) -> Callable[[list[Any], np.ndarray], None] | None:
    """The copies' ``finish_steps``, for copies of one environment class that has one and whose
    wrappers pass observations through; it is then told to leave work to it (``finish_steps_later``).

    The protocol: a class may define ``finish_steps(envs, observations)`` (a classmethod). With
    ``finish_steps_later`` set on its copies, a copy's ``step`` may leave part of its observation
    to that call, which gets the copies' unwrapped environments and the vector env's observations
    (a writable row per copy) after every step of all copies, and completes both at once. Rewards,
    terminations and infos must be final after ``step``. Meta-World's families leave the objects'
    quaternions to it: one scipy call for all copies instead of one per copy.
    """
    classes = {type(env.unwrapped) for env in envs}
    finish = getattr(next(iter(classes)), "finish_steps", None) if len(classes) == 1 else None
    if finish is None:
        return None
    for env in envs:
        wrapper = env
        while wrapper is not env.unwrapped:
            if not isinstance(wrapper, _PASSING_WRAPPERS):
                return None
            wrapper = wrapper.env
    for env in envs:
        env.unwrapped.finish_steps_later = True
    return finish


def _serve(env_fns: list[Callable[[], gym.Env]], start: int, conn: Connection, info_keys: Sequence[str] = ()) -> None:
    """A worker: build the slice, report its spaces, then answer commands until "close" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs: KeyedSyncVectorEnv | None = None
    shms: list[SharedMemory] = []
    views: dict[str, np.ndarray] = {}
    try:
        try:
            for env_fn in {id(fn): fn for fn in env_fns}.values():  # an EnvFactory imports its env's modules
                prepare = getattr(env_fn, "prepare", None)
                if prepare is not None:
                    prepare()
            conn.send(("progress", 0))  # started: the modules are imported
            built = []
            for env_fn in env_fns:  # one at a time, so that a constructor that hangs is caught
                built.append(env_fn())
                conn.send(("progress", len(built)))
            envs = KeyedSyncVectorEnv([functools.partial(_built, env) for env in built], info_keys, copy=False)
            conn.send(("ok", (envs.single_observation_space, envs.single_action_space)))
        except Exception as error:
            conn.send(("error", _remote_error(error)))
            return
        while True:
            command, payload = conn.recv()
            if command == "close":
                return
            try:
                if command == "attach":
                    for name, (shm_name, shape, dtype) in payload.items():
                        shms.append(SharedMemory(name=shm_name))
                        rows = envs.num_envs
                        views[name] = np.ndarray(shape, np.dtype(dtype), buffer=shms[-1].buf)[start : start + rows]
                    answer = None
                else:
                    beat = _Heartbeat(functools.partial(conn.send, ("progress", 0)))
                    answer = _execute(envs, views, command, payload, beat)
                conn.send(("ok", answer))
            except Exception as error:
                conn.send(("error", _remote_error(error)))
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        views.clear()
        for shm in shms:
            shm.close()
        if envs is not None:
            with contextlib.suppress(Exception):
                envs.close()


class _Heartbeat:
    """``beat()`` for `WorkerVectorEnv.run`'s function: calls `signal` at most once a second."""

    def __init__(self, signal: Callable[[], Any], interval: float = 1.0) -> None:
        self.signal, self.interval = signal, interval
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.signal()


class _ParentTimeout(BaseException):
    """The parent's own slice ran past the timeout (raised by `_alarm`'s signal handler)."""


def _alarm_available() -> bool:
    """Whether `_alarm` can time the parent's slice here: SIGALRM exists and this is the main thread."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[Callable[[], None]]:
    """Raise `_ParentTimeout` in the block after `seconds` (None: no limit; nor outside the main
    thread, where signals cannot be handled, or when another timer of this process is running,
    which it would cancel). Yields a function that restarts the timer (progress was made)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if seconds is None or not main_thread or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield lambda: None
        return

    def expire(signum: int, frame: Any) -> None:
        raise _ParentTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield functools.partial(signal.setitimer, signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _execute(
    envs: KeyedSyncVectorEnv,
    views: dict[str, np.ndarray],
    command: str,
    payload: Any,
    beat: Callable[[], None] | None = None,
) -> Any:
    """Run `command` on a slice's copies (in a worker, or in the parent for its own slice); the
    step and reset results go to the slice's rows of the shared buffers (`views`)."""
    if command == "run":
        function, data = payload
        return function(envs, data, beat or (lambda: None))
    if command == "step":
        obs, rewards, terminated, truncated, infos = envs.step(views["actions"].copy())
        views["observations"][...] = obs
        views["rewards"][...] = rewards
        views["terminated"][...] = terminated
        views["truncated"][...] = truncated
        return _numeric_infos(infos, payload, envs.num_envs)
    if command == "reset":
        seeds, options, masked = payload
        if not masked or options is not None:
            obs, _ = envs.reset(seed=seeds, options=options)
            views["observations"][...] = obs
        return None
    if command == "get_attr":
        return envs.get_attr(payload)
    if command == "set_attr":
        envs.set_attr(*payload)
        return None
    if command == "call":
        name, args, kwargs = payload
        return envs.call(name, *args, **kwargs)
    raise ValueError(f"unknown command {command!r}")


def _numeric_infos(infos: dict[str, Any], keys: Sequence[str], num_envs: int) -> dict[str, Any]:
    """The values of `keys` in a vector env's step infos, with where they are present (absent keys left out)."""
    answer = {}
    for key in keys:
        found = step_values(infos, key, num_envs)
        if found is not None:
            answer[key] = (np.array(found[0]), found[1])
    return answer


def _built(env: gym.Env) -> gym.Env:
    """An environment factory for one that is already built."""
    return env


def _remote_error(error: BaseException) -> tuple[str, str, str]:
    return type(error).__qualname__, str(error), traceback.format_exc()
