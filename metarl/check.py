"""Does an environment work as a metarl task distribution? Checks that say what is wrong and how to fix it.

``check_task_distribution(env_id)`` (and ``metarl check-env ID``) builds the environment and runs:

1. **creatable**: the id, ``module:Id`` or ``package.module:callable`` entry point builds an env;
2. **gymnasium API**: Gymnasium's ``check_env`` passes (its warnings become notes);
3. **task protocol**: ``sample_tasks(n, rng)`` and a readable, settable ``task`` attribute, which is
   what metarl uses (``envs.set_attr("task", tasks)``); a ``set_task`` method must agree with it;
4. **reproducible tasks**: the same generator seed gives the same tasks, other seeds other tasks,
   and numpy's and Python's global random state are neither read nor advanced;
5. **JSON tasks**: ``task_to_json(task)`` survives ``json.dumps``/``loads`` and, set back on the
   env, gives the same task and the same rollout;
6. **task effect**: two different tasks give different rollouts for the same seed and actions, and
   setting the first task again reproduces its rollout exactly (no drift);
7. **reset keeps task**: ``reset()`` and ``reset(seed=...)`` keep the task that was set;
8. **no task in observation**: the first observation after ``reset(seed=s)`` is the same for every
   task, and no observation component copies a task value. The copy heuristic: component ``i``
   copies task value ``j`` when, for each of up to three different tasks, ``obs[i]`` equals that
   task's value ``j`` (to float32 precision) at every step after reset, and value ``j`` differs
   between the tasks. It finds goals appended to the observation, not transformed encodings (a
   one-hot direction, a goal relative to the robot); the reset check finds any task dependence of
   the first observation;
9. **picklable**: ``pickle`` round-trips the environment with its task (same task, same rollout)
   and the tasks themselves (worker processes receive tasks by pickle);
10. **fixed task lists**, only for a family that declares them (``task_lists()``): "train" and
   "test" lists (and optionally "ood"), no task in both, and every listed task set on the env
   round-trips through JSON.

Rollouts use a fixed seed and a fixed sequence of actions sampled from the action space, so any
difference between two rollouts comes from the task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pickle
import random
import re
import textwrap
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from metarl.errors import EnvError
from metarl.make import make_env
from metarl.tasks import declared_task_lists, task_key, task_to_json

Status = Literal["pass", "fail", "skip"]

TITLES = {
    "creatable": "creatable",
    "gymnasium_api": "Gymnasium API",
    "task_protocol": "task protocol",
    "reproducible_tasks": "reproducible tasks",
    "json_tasks": "JSON tasks",
    "task_effect": "task effect",
    "reset_keeps_task": "reset keeps task",
    "task_not_observed": "no task in observation",
    "picklable": "picklable",
    "task_lists": "fixed task lists",
}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: what was found (`message`), how to fix a failure (`fix`), and notes."""

    name: str
    status: Status
    message: str
    fix: str = ""
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)

    def format(self, width: int = 100) -> str:
        """``PASS  title: message`` with indented ``fix:`` and ``note:`` lines, wrapped to `width`."""
        lines = [_wrap(f"{self.status.upper():<5} {self.title}: {self.message}", width, indent=6)]
        if self.fix:
            lines.append(_wrap(f"      fix: {self.fix}", width, indent=11))
        lines += [_wrap(f"      note: {note}", width, indent=12) for note in self.notes]
        return "\n".join(lines)


def _wrap(text: str, width: int, indent: int) -> str:
    return textwrap.fill(text, width, subsequent_indent=" " * indent, break_long_words=False, break_on_hyphens=False)


def format_report(results: Sequence[CheckResult]) -> str:
    """All results, one block each, and a closing count."""
    failed = sum(r.status == "fail" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    summary = f"{len(results) - failed - skipped} of {len(results)} checks pass"
    summary += f", {failed} fail" if failed else ""
    summary += f", {skipped} skipped" if skipped else ""
    return "\n".join([*(r.format() for r in results), summary])


def check_task_distribution(
    env_id: str,
    kwargs: Mapping[str, Any] | None = None,
    horizon: int | None = None,
    *,
    make: Callable[[], gym.Env] | None = None,
    num_tasks: int = 8,
    steps: int = 10,
    seed: int = 0,
) -> list[CheckResult]:
    """Run every check on `env_id` (built by `make` when given) and return one result per check.

    A failed ``creatable`` check is the only result when the environment cannot be built. Tasks
    are drawn with ``numpy.random.default_rng(seed)``; rollouts take `steps` fixed actions. Global
    random state is restored afterwards, and warnings are reported as notes instead of raised.
    """
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return _Checker(env_id, kwargs, horizon, make, num_tasks, steps, seed, caught).run()
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class _Checker:
    def __init__(
        self,
        env_id: str,
        kwargs: Mapping[str, Any] | None,
        horizon: int | None,
        make: Callable[[], gym.Env] | None,
        num_tasks: int,
        steps: int,
        seed: int,
        caught: list[warnings.WarningMessage],
    ) -> None:
        self.env_id, self.kwargs, self.horizon = env_id, dict(kwargs or {}), horizon
        self.make = make or (lambda: make_env(env_id, self.kwargs, horizon))
        self.num_tasks, self.steps, self.seed = max(int(num_tasks), 2), max(int(steps), 1), seed
        self._caught, self._reported_warnings = caught, set()
        self._where = ""  # what the env was doing, for messages about exceptions it raises
        self.env: gym.Env
        self.tasks: list[Any] = []
        self.distinct: list[Any] = []
        self.actions: list[Any] = []

    # ---- driver -------------------------------------------------------------------------------

    def run(self) -> list[CheckResult]:
        creatable = self._guarded("creatable", self.check_creatable)
        if not creatable.passed:
            return [creatable]
        results = [creatable, self._guarded("gymnasium_api", self.check_gymnasium_api)]
        protocol = self._guarded("task_protocol", self.check_task_protocol)
        results.append(protocol)
        later = [
            ("reproducible_tasks", self.check_reproducible_tasks),
            ("json_tasks", self.check_json_tasks),
            ("task_effect", self.check_task_effect),
            ("reset_keeps_task", self.check_reset_keeps_task),
            ("task_not_observed", self.check_task_not_observed),
            ("picklable", self.check_picklable),
        ]
        for name, check in later:
            if not protocol.passed:
                results.append(CheckResult(name, "skip", "needs the task protocol (see the failure above)"))
            elif len(self.distinct) < 2 and name in ("task_effect", "task_not_observed"):
                results.append(CheckResult(name, "skip", "needs two different tasks from sample_tasks"))
            else:
                results.append(self._guarded(name, check))
        if protocol.passed and _wrapper_attr(self.env, "task_lists") is not _MISSING:
            results.append(self._guarded("task_lists", self.check_task_lists))
        with contextlib.suppress(Exception):
            self.env.close()
        return results

    def _guarded(self, name: str, check: Callable[[], CheckResult]) -> CheckResult:
        """Run one check; an exception in the environment's code is that check's failure."""
        start, self._where = len(self._caught), ""
        try:
            result = check()
        except Exception as error:  # the environment's own code raised: report it, go on
            parts = [f"the environment raised {_describe(error)}", self._where, _location(error)]
            message = " ".join(part for part in parts if part)
            result = CheckResult(name, "fail", message, "fix the error above; the other checks still ran")
        notes = [*result.notes, *self._new_warnings(start)]
        return dataclasses.replace(result, notes=tuple(notes))

    def _new_warnings(self, start: int) -> list[str]:
        notes = []
        for record in self._caught[start:]:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(record.message)).removeprefix("WARN: ").strip()
            if text not in self._reported_warnings:
                self._reported_warnings.add(text)
                notes.append(f"warning: {text}")
        return notes

    # ---- helpers ------------------------------------------------------------------------------

    def _get_task(self, env: gym.Env | None = None) -> Any:
        env = env if env is not None else self.env
        return env.get_wrapper_attr("task")

    def _set_task(self, task: Any, env: gym.Env | None = None) -> None:
        # The way metarl sets tasks: vector envs call set_wrapper_attr("task", ...) on every copy.
        (env if env is not None else self.env).set_wrapper_attr("task", task)

    def _rollout(self, task: Any = None, env: gym.Env | None = None, set_task: bool = True) -> _Rollout:
        """Reset with the check's seed (after setting `task`) and take the fixed actions until the episode ends."""
        env = env if env is not None else self.env
        if set_task:
            self._where = f"(while setting the task {_show(task)})"
            self._set_task(task, env)
        self._where = "(in reset)"
        obs, _ = env.reset(seed=self.seed)
        observations, rewards = [_flat(env, obs)], []
        self._where = "(in step)"
        for action in self.actions:
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(_flat(env, obs))
            rewards.append(float(reward))
            if terminated or truncated:
                break
        self._where = ""
        return _Rollout(observations, rewards)

    # ---- the checks ---------------------------------------------------------------------------

    def check_creatable(self) -> CheckResult:
        try:
            self.env = self.make()
        except Exception as error:
            fix = (
                "use a registered Gymnasium id, 'module:Id' (the module registers Id when imported) or "
                "'package.module:EnvClass'; `metarl envs` lists the MetaRL/ families"
            )
            cause = error.__cause__ if isinstance(error, EnvError) else error  # the environment's own error
            reason = str(error) if cause is None else _describe(cause)
            return CheckResult("creatable", "fail", f"cannot build '{self.env_id}': {reason}", fix)
        env = self.env
        self.env.action_space.seed(self.seed)
        self.actions = [env.action_space.sample() for _ in range(self.steps)]
        spec = env.spec
        horizon = self.horizon if self.horizon is not None else (spec.max_episode_steps if spec else None)
        notes = []
        if horizon is None:
            notes.append(
                "no episode length: register the id with max_episode_steps or set env.horizon in the config "
                "(metarl needs one)"
            )
        message = (
            f"'{self.env_id}' builds {type(env.unwrapped).__name__} (observation {env.observation_space}, "
            f"action {env.action_space}, horizon {horizon})"
        )
        return CheckResult("creatable", "pass", message, notes=tuple(notes))

    def check_gymnasium_api(self) -> CheckResult:
        try:
            check_env(self.env.unwrapped, skip_render_check=True)
        except Exception as error:
            return CheckResult(
                "gymnasium_api",
                "fail",
                f"gymnasium.utils.env_checker.check_env failed: {_describe(error)}",
                "follow Gymnasium's Env API (spaces, reset(seed=...) -> (obs, info), step -> 5-tuple): "
                "https://gymnasium.farama.org/introduction/create_custom_env/",
            )
        return CheckResult("gymnasium_api", "pass", "gymnasium.utils.env_checker.check_env passes")

    def check_task_protocol(self) -> CheckResult:
        env, problems, fixes = self.env, [], []
        sampler = _wrapper_attr(env, "sample_tasks")
        has_task = _wrapper_attr(env, "task") is not _MISSING
        set_task = _wrapper_attr(env, "set_task")
        if not callable(sampler):
            problems.append("no sample_tasks(n, rng) method")
            fixes.append("add sample_tasks(self, n, rng) returning n tasks drawn from the numpy Generator rng")
        if not has_task:
            if callable(set_task):
                problems.append(
                    "set_task() but no `task` attribute: metarl sets tasks with envs.set_attr('task', tasks), which "
                    "would silently put an unused attribute on a wrapper"
                )
                fixes.append("add a `task` property whose setter calls set_task, and set a default task in __init__")
            else:
                problems.append("no `task` attribute")
                fixes.append("add a `task` attribute or property and set a default task in __init__")
        if problems:
            return CheckResult("task_protocol", "fail", "; ".join(problems), "; ".join(fixes))

        self._where = "(in sample_tasks)"
        drawn = sampler(self.num_tasks, np.random.default_rng(self.seed))
        self._where = ""
        tasks = list(drawn) if isinstance(drawn, Iterable) and not isinstance(drawn, (str, bytes, Mapping)) else None
        if tasks is None or len(tasks) != self.num_tasks:
            return CheckResult(
                "task_protocol",
                "fail",
                f"sample_tasks({self.num_tasks}, rng) returned {_show(drawn)}, not a list of {self.num_tasks} tasks",
                "return a list with one task per requested draw",
            )
        self.tasks = list(tasks)
        for task in self.tasks:
            if not any(_same_task(task, other) for other in self.distinct):
                self.distinct.append(task)

        problems, fixes = [], []
        target = self.distinct[-1]
        self._set_task(target)
        if not _same_task(self._get_task(), target):
            problems.append(f"after env.task = {_show(target)} the env reports task {_show(self._get_task())}")
            fixes.append("make the `task` setter store the task it is given")
        if callable(set_task):
            self._where = "(in set_task)"
            set_task(self.distinct[0])
            self._where = ""
            if not _same_task(self._get_task(), self.distinct[0]):
                problems.append(f"set_task({_show(self.distinct[0])}) left the task at {_show(self._get_task())}")
                fixes.append("make set_task(task) and `env.task = task` do the same")
        if problems:
            return CheckResult("task_protocol", "fail", "; ".join(problems), "; ".join(fixes))
        notes = []
        if len(self.distinct) < 2:
            notes.append(f"sample_tasks drew {self.num_tasks} equal tasks: a distribution with a single task")
        message = f"sample_tasks(n, rng) and a settable `task` attribute; sample: {_show(self.tasks[0])}"
        return CheckResult("task_protocol", "pass", message, notes=tuple(notes))

    def check_reproducible_tasks(self) -> CheckResult:
        sampler = self.env.get_wrapper_attr("sample_tasks")
        n = self.num_tasks

        def draw(seed: int, global_seed: int) -> list[Any]:
            np.random.seed(global_seed)
            random.seed(global_seed)
            return list(sampler(n, np.random.default_rng(seed)))

        fix = "draw every random number from the rng argument (rng.uniform, rng.choice, ...), never np.random or random"
        first, second = draw(self.seed, 1), draw(self.seed, 2)
        if not _same_tasks(first, second):
            return CheckResult(
                "reproducible_tasks",
                "fail",
                f"the same generator seed gave different tasks ({_show(first[0])}, then {_show(second[0])}): "
                "sample_tasks draws from somewhere else than its rng argument (numpy's global np.random, Python's "
                "random, an rng of its own), so training and held-out task sets cannot be reproduced",
                fix,
            )
        np.random.seed(3)
        expected = np.random.random()
        np.random.seed(3)
        sampler(n, np.random.default_rng(self.seed))
        if np.random.random() != expected:
            return CheckResult(
                "reproducible_tasks",
                "fail",
                "sample_tasks draws from numpy's global random state (np.random.*), which the caller does not control",
                fix,
            )
        others = [draw(self.seed + k, 1) for k in (1, 2, 3)]
        if all(_same_tasks(first, other) for other in others):
            return CheckResult(
                "reproducible_tasks",
                "fail",
                f"four different generator seeds gave the same {n} tasks: sample_tasks ignores its rng argument",
                fix,
            )
        return CheckResult(
            "reproducible_tasks",
            "pass",
            "the same seed gives the same tasks, other seeds other tasks; global random state is not used",
        )

    def check_json_tasks(self) -> CheckResult:
        task = self.distinct[-1]
        data = task_to_json(task)
        text = json.dumps(data)
        restored = json.loads(text)
        expected = self._rollout(task)
        self._where = f"(while setting the JSON task {text[:200]})"
        try:
            self._set_task(restored)
        except Exception as error:
            return CheckResult(
                "json_tasks",
                "fail",
                f"setting the JSON form {_show(restored)} back raised {_describe(error)}",
                "accept the JSON form in the task setter, e.g. MyTask(**task) when given a dict",
            )
        self._where = ""
        fix = (
            "give tasks only numbers, strings, lists and mappings (frozen dataclasses of them are fine) and accept "
            "that JSON form back in the task setter"
        )
        if not _same_task(self._get_task(), task):
            return CheckResult(
                "json_tasks",
                "fail",
                f"the task {_show(task, digits=None)} became {_show(self._get_task(), digits=None)} after a JSON "
                f"round trip ({text[:200]})",
                fix,
            )
        again = self._rollout(set_task=False)
        if not again.equals(expected):
            return CheckResult(
                "json_tasks",
                "fail",
                f"the env behaves differently with the JSON form of {_show(task)}: {again.difference(expected)}",
                fix,
            )
        return CheckResult("json_tasks", "pass", f"tasks round-trip through JSON, e.g. {_show(restored)}")

    def check_task_effect(self) -> CheckResult:
        first, second = self.distinct[0], self.distinct[1]
        a, b, a_again = self._rollout(first), self._rollout(second), self._rollout(first)
        if a.equals(b):
            return CheckResult(
                "task_effect",
                "fail",
                f"setting the task changes nothing: tasks {_show(first)} and {_show(second)} gave identical rewards "
                f"and observations over {len(a.rewards)} steps with the same seed and actions",
                "read the task where it matters: in step() for the reward (goal tasks), or write it into the "
                "simulator in the task setter (dynamics tasks)",
            )
        if not a_again.equals(a):
            return CheckResult(
                "task_effect",
                "fail",
                f"setting {_show(first)} again after {_show(second)} did not reproduce its first rollout "
                f"({a_again.difference(a)}): setting a task leaves a trace (drift), or the env is not deterministic "
                "for a seed",
                "make setting a task overwrite everything it changes, e.g. model value = nominal value x factor, "
                "never an in-place multiplication; draw all randomness from self.np_random",
            )
        return CheckResult(
            "task_effect",
            "pass",
            f"two tasks give different rollouts ({b.difference(a)}); setting the first again reproduces it exactly",
        )

    def check_reset_keeps_task(self) -> CheckResult:
        task = self.distinct[-1]
        expected = self._rollout(task)
        fix = "change the task only when it is set (env.task = ..., set_task, reset(options={'task': ...}))"
        self._set_task(task)
        for call, reset_kwargs in (("reset()", {}), (f"reset(seed={self.seed + 1})", {"seed": self.seed + 1})):
            self._where = f"(in {call})"
            self.env.reset(**reset_kwargs)
            if not _same_task(self._get_task(), task):
                return CheckResult(
                    "reset_keeps_task",
                    "fail",
                    f"{call} changed the task from {_show(task)} to {_show(self._get_task())}; metarl sets the task "
                    "and then resets",
                    fix,
                )
            for action in self.actions[:3]:
                _, _, terminated, truncated, _ = self.env.step(action)
                if terminated or truncated:
                    break
        after = self._rollout(set_task=False)
        if not after.equals(expected):
            return CheckResult(
                "reset_keeps_task",
                "fail",
                f"after plain resets the env behaves differently with the same task {_show(task)} "
                f"({after.difference(expected)}): reset undoes part of the task",
                fix,
            )
        return CheckResult("reset_keeps_task", "pass", "reset() and reset(seed=...) keep the task and its behaviour")

    def check_task_not_observed(self) -> CheckResult:
        tasks = self.distinct[:3]
        rollouts = [self._rollout(task) for task in tasks]
        first_obs = np.stack([r.observations[0] for r in rollouts])
        # Components the family declares task-dependent by design (Meta-World: the object's start).
        declared, why = _declared_observed(self.env)
        varying = np.flatnonzero(np.any(first_obs != first_obs[0], axis=0))
        differs = np.array([i for i in varying if i not in declared], dtype=int)
        values = [_task_values(task) for task in tasks]
        copies = [c for c in _copied_values(rollouts, values, after_reset=False) if c[0] not in declared]
        fix = (
            "keep the task out of the observation: the policy must infer it from rewards (put it in info['task'] "
            "for logging); a start state that depends on the task reveals it too"
        )
        if differs.size:
            shown = "; ".join(f"{_show(t)}: {_show(first_obs[k, differs][:6].tolist())}" for k, t in enumerate(tasks))
            message = f"the first observation after reset(seed={self.seed}) depends on the task: component(s) "
            message += f"{_indices(differs)} differ between tasks ({shown})"
            if copies:
                message += f"; {_describe_copies(copies)}"
            return CheckResult("task_not_observed", "fail", message, fix)
        copies = [c for c in _copied_values(rollouts, values, after_reset=True) if c[0] not in declared]
        if copies:
            return CheckResult(
                "task_not_observed",
                "fail",
                f"{_describe_copies(copies)} at every step after reset, for {len(tasks)} different tasks",
                fix,
            )
        notes = ()
        if declared:
            shown = _indices(np.array(sorted(declared)))
            seen = "; they differ between the tasks here" if varying.size else ""
            notes = (f"components {shown} may depend on the task by the family's design: {why}{seen}",)
        return CheckResult(
            "task_not_observed",
            "pass",
            f"the first observation is the same for {len(tasks)} tasks"
            + (" outside the declared components" if declared else "")
            + "; no observation component copies a task value",
            notes=notes,
        )

    def check_task_lists(self) -> CheckResult:
        fix = "return {'train': [...], 'test': [...]} (and optionally 'ood') from task_lists(), each a list of tasks"
        try:
            self._where = "(in task_lists)"
            lists = declared_task_lists(self.env)
        except EnvError as error:
            return CheckResult("task_lists", "fail", str(error), fix)
        assert lists is not None
        keys = {split: {task_key(t) for t in tasks} for split, tasks in lists.items()}
        shared = keys["train"] & keys["test"]
        if shared:
            return CheckResult(
                "task_lists",
                "fail",
                f"{len(shared)} task(s) are in both the train and the test list, e.g. {sorted(shared)[0][:200]}",
                "keep the test list out of the train list: held-out tasks must never be trained on",
            )
        for split, tasks in lists.items():
            for task in tasks:
                self._where = f"(while setting the {split} task {_show(task)})"
                self._set_task(json.loads(json.dumps(task_to_json(task))))
                if task_key(self._get_task()) != task_key(task):
                    return CheckResult(
                        "task_lists",
                        "fail",
                        f"the {split} task {_show(task)} became {_show(self._get_task())} set from its JSON form",
                        "accept the JSON form of a listed task back in the task setter",
                    )
        self._where = ""
        sizes = ", ".join(f"{len(tasks)} {split}" for split, tasks in lists.items())
        return CheckResult("task_lists", "pass", f"{sizes} tasks, train and test disjoint, all settable from JSON")

    def check_picklable(self) -> CheckResult:
        task = self.distinct[-1]
        expected = self._rollout(task)
        # The layer that holds the task, with everything it wraps: the env itself, or a task wrapper.
        holder = _task_holder(self.env)
        try:
            data = pickle.dumps(holder)
        except Exception as error:
            culprit = _unpicklable_attribute(holder)
            return CheckResult(
                "picklable",
                "fail",
                f"pickle.dumps(env) raised {_describe(error)}" + (f"; {culprit}" if culprit else ""),
                "keep only picklable state on the env (no lambdas, locks, open files or sockets): use module-level "
                "functions, or drop and rebuild such state in __getstate__/__setstate__",
            )
        restored = pickle.loads(data)
        fix = "pickle the current task with the env (__getstate__/__setstate__ that store and set it again)"
        if not _same_task(self._get_task(restored), task):
            return CheckResult(
                "picklable",
                "fail",
                f"the env was pickled with task {_show(task)} and unpickled with {_show(self._get_task(restored))}",
                fix,
            )
        after = self._rollout(env=restored, set_task=False)
        with contextlib.suppress(Exception):
            restored.close()
        if not after.equals(expected):
            return CheckResult(
                "picklable",
                "fail",
                f"the unpickled env reports the task {_show(task)} but acts differently ({after.difference(expected)})",
                fix,
            )
        try:
            tasks = pickle.loads(pickle.dumps(self.tasks))
        except Exception as error:
            return CheckResult("picklable", "fail", f"tasks do not pickle: {_describe(error)}", "make tasks plain data")
        if not _same_tasks(tasks, self.tasks):
            return CheckResult("picklable", "fail", "tasks change when pickled", "make tasks plain data")
        return CheckResult("picklable", "pass", "the env and its tasks pickle; the unpickled env keeps its task")


# ---- plain functions --------------------------------------------------------------------------

_MISSING = object()


@dataclasses.dataclass
class _Rollout:
    observations: list[np.ndarray]
    rewards: list[float]

    def equals(self, other: _Rollout) -> bool:
        return (
            self.rewards == other.rewards
            and len(self.observations) == len(other.observations)
            and all(
                np.array_equal(a, b, equal_nan=True) for a, b in zip(self.observations, other.observations, strict=True)
            )
        )

    def difference(self, other: _Rollout) -> str:
        """Where two rollouts first differ, in words."""
        if len(self.rewards) != len(other.rewards):
            return f"episodes of {len(self.rewards)} and {len(other.rewards)} steps"
        for t, (a, b) in enumerate(zip(self.observations, other.observations, strict=True)):
            if not np.array_equal(a, b, equal_nan=True):
                i = int(np.flatnonzero(a != b)[0])
                what = "first observation" if t == 0 else f"observation after step {t}"
                return f"{what}: component {i} is {a[i]:.6g} vs {b[i]:.6g}"
            if t < len(self.rewards) and self.rewards[t] != other.rewards[t]:
                return f"reward of step {t + 1}: {self.rewards[t]:.6g} vs {other.rewards[t]:.6g}"
        return "no difference"


def _wrapper_attr(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return _MISSING


def _flat(env: gym.Env, obs: Any) -> np.ndarray:
    try:
        return np.asarray(gym.spaces.flatten(env.observation_space, obs), dtype=float).ravel()
    except Exception:
        return np.asarray(obs, dtype=float).ravel()


def _same(a: Any, b: Any) -> bool:
    """Equal plain data, with numbers equal to float32 precision."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b


def _same_task(a: Any, b: Any) -> bool:
    return _same(task_to_json(a), task_to_json(b))


def _same_tasks(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(_same_task(x, y) for x, y in zip(a, b, strict=True))


def _task_values(task: Any) -> dict[str, float]:
    """The numbers of a task's JSON form, by path (``goal[0]``, ``velocity``, ...)."""
    values: dict[str, float] = {}

    def walk(data: Any, path: str) -> None:
        if isinstance(data, Mapping):
            for key, value in data.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(data, list):
            for i, value in enumerate(data):
                walk(value, f"{path}[{i}]")
        elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
            values[path or "task"] = float(data)

    walk(task_to_json(task), "")
    return values


def _declared_observed(env: gym.Env) -> tuple[set[int], str]:
    """Observation components a family declares task-dependent by design, with its reason:
    ``metadata["observed_task"] = {"components": [...], "why": "..."}``."""
    declared = env.metadata.get("observed_task") if isinstance(env.metadata, Mapping) else None
    if not declared:
        return set(), ""
    return {int(i) for i in declared.get("components", ())}, str(declared.get("why", ""))


def _copied_values(
    rollouts: Sequence[_Rollout], values: Sequence[dict[str, float]], after_reset: bool
) -> list[tuple[int, str]]:
    """(observation component, task value) pairs where the component equals the value for every task.

    ``after_reset``: at every step after reset; otherwise in the first observation.
    """
    keys = [key for key in values[0] if all(key in v for v in values)]
    keys = [key for key in keys if len({v[key] for v in values}) > 1]  # a copy must vary with the task
    if not keys:
        return []
    copies = None
    for rollout, task_values in zip(rollouts, values, strict=True):
        obs = np.stack(rollout.observations[1:] if after_reset else rollout.observations[:1])
        if obs.shape[0] == 0:
            return []
        params = np.array([task_values[key] for key in keys])
        # match[i, j]: component i equals value j at every one of these steps.
        match = np.all(np.isclose(obs[:, :, None], params[None, None, :], rtol=1e-6, atol=1e-8), axis=0)
        copies = match if copies is None else copies & match
    return [(int(i), keys[j]) for i, j in zip(*np.nonzero(copies), strict=True)]


def _describe_copies(copies: Sequence[tuple[int, str]]) -> str:
    pairs = ", ".join(f"obs[{i}] = task {key}" for i, key in copies[:6])
    return f"the observation copies the task ({pairs}{', ...' if len(copies) > 6 else ''})"


def _indices(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:8])
    return f"[{shown}{', ...' if len(indices) > 8 else ''}]"


def _task_holder(env: gym.Env) -> gym.Env:
    """The outermost layer that has a ``task`` attribute, where ``set_wrapper_attr("task", ...)`` sets it."""
    layer = env
    while isinstance(layer, gym.Wrapper) and not hasattr(layer, "task"):
        layer = layer.env
    return layer


def _unpicklable_attribute(env: gym.Env) -> str:
    """Name the first attribute of `env` or of an env it wraps that does not pickle, if one does not."""
    layer: Any = env
    while layer is not None:
        for name, value in vars(layer).items():
            if name == "env" and isinstance(value, gym.Env):
                continue  # the wrapped env: searched next
            try:
                pickle.dumps(value)
            except Exception:
                kind = f"{type(value).__module__}.{type(value).__qualname__}"
                return f"attribute '{name}' of {type(layer).__name__} (a {kind}) cannot be pickled"
        layer = layer.env if isinstance(layer, gym.Wrapper) else None
    return ""


def _show(value: Any, limit: int = 80, digits: int | None = 4) -> str:
    """A task (or other value) as short JSON, numbers to `digits` significant digits (None: all)."""
    try:
        text = json.dumps(_rounded(task_to_json(value), digits))
    except Exception:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rounded(data: Any, digits: int | None) -> Any:
    if digits is None:
        return data
    if isinstance(data, Mapping):
        return {key: _rounded(value, digits) for key, value in data.items()}
    if isinstance(data, list):
        return [_rounded(value, digits) for value in data]
    if isinstance(data, float):
        return float(f"{data:.{digits}g}")
    return data


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def _location(error: BaseException) -> str:
    """``at file:line in function`` of the innermost frame that raised."""
    frames = traceback.extract_tb(error.__traceback__)
    return f"at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
