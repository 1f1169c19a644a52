"""Meta-testing: restore a trained policy, adapt it on held-out tasks, report the adaptation curve.

Protocol (defaults follow the MAML paper): on each held-out task, sample episodes with the
meta-learned θ, take an inner step on them, sample again with θ', and so on for K steps; record
the mean return of the episodes sampled after 0, 1, …, K steps. The first step uses ``lr``, later
steps ``lr * later_lr_scale`` (the paper: 0.1, then 0.05).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metarl.checkpoint import CheckpointError, load_checkpoint
from metarl.config import Config, ConfigError, config_from_dict
from metarl.functional import Params, detach, distribution, parameters_of, per_task
from metarl.maml import adapt, estimate_advantages
from metarl.policies import make_policy
from metarl.sampler import Sampler, concat_episodes, env_actions
from metarl.tasks import TaskSplits, make_env, task_to_json


def _t_quantile(p: float, dof: int) -> float:
    """Student-t quantile (Cornish–Fisher expansion; accurate to ~1e-3 for dof >= 5)."""
    z = statistics.NormalDist().inv_cdf(p)
    if dof <= 0:
        return math.nan
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t over tasks)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), math.nan
    half = _t_quantile(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


class MetaPolicy:
    """A meta-trained policy: adapt it to a new environment variant with a few episodes, then act.

    Obtained with ``metarl.load(path)``. ``adapt`` returns a new `MetaPolicy` whose parameters are
    the adapted θ'; the original stays unchanged.
    """

    def __init__(
        self, policy: nn.Module, config: Config, params: Params | None = None, checkpoint: dict[str, Any] | None = None
    ) -> None:
        self.policy, self.config, self.checkpoint = policy, config, checkpoint or {}
        self.params = params if params is not None else detach(parameters_of(policy))
        self._action_space: gym.Space | None = None

    def adapt(
        self,
        env: gym.Env | str,
        episodes: int | None = None,
        steps: int = 1,
        lr: float | None = None,
        seed: int | None = None,
    ) -> MetaPolicy:
        """Run `episodes` episodes on `env` (default ``inner.episodes_per_task``), take an inner
        policy-gradient step on them, and repeat `steps` times. `env` is an environment instance
        (its current task is used, never read) or a Gymnasium id."""
        env = make_env(env) if isinstance(env, str) else env
        policy_config = self.config.policy
        sampler = Sampler.for_env(
            env, self.config.env.horizon, policy_config.action_scaling, seed or 0, policy_config.action_bound
        )
        params = per_task(self.params, 1)
        for _ in range(steps):
            batch = concat_episodes(
                [
                    sampler.sample(self.policy, params, None)
                    for _ in range(episodes or self.config.inner.episodes_per_task)
                ]
            )
            batch = estimate_advantages(batch, self.config.advantages)
            params = detach(
                adapt(self.policy, params, [batch], lr if lr is not None else self.config.inner.lr, create_graph=False)
            )
        adapted = MetaPolicy(self.policy, self.config, {name: p[0] for name, p in params.items()})
        adapted._action_space = env.action_space
        return adapted

    @torch.no_grad()
    def act(self, observation: Any, deterministic: bool = True, action_space: gym.Space | None = None) -> np.ndarray:
        """The action for one observation, in the environment's units (mean action if deterministic)."""
        pi = distribution(self.policy, self.params, torch.as_tensor(np.asarray(observation), dtype=torch.float32))
        if deterministic:
            action = pi.mean if not isinstance(pi, torch.distributions.Categorical) else pi.probs.argmax(-1)
        else:
            action = pi.sample()
        space = action_space or self._action_space
        if space is None:
            raise ValueError("pass action_space= (or call adapt(env) first) so the action can be scaled to the env")
        return env_actions(action.numpy(), space, self.config.policy.action_scaling, self.config.policy.action_bound)


def load(path: str | Path) -> MetaPolicy:
    """Restore the meta-trained policy of a run directory or checkpoint file."""
    checkpoint = load_checkpoint(path)
    config = config_from_dict(checkpoint["config"])
    env = make_env(config.env.id, config.env.kwargs, config.env.horizon, config.env.task_space, check=False)
    if list(env.observation_space.shape) != checkpoint["observation_shape"]:
        raise CheckpointError(
            f"checkpoint '{checkpoint['path']}' expects observations of shape {checkpoint['observation_shape']}, "
            f"but {config.env.id} gives {list(env.observation_space.shape)}"
        )
    policy = make_policy(env.observation_space, env.action_space, config.policy)
    try:
        policy.load_state_dict(checkpoint["policy"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint '{checkpoint['path']}' does not fit the policy its config describes: "
            f"{str(error).splitlines()[0]}"
        ) from None
    env.close()
    return MetaPolicy(policy, config, checkpoint=checkpoint)


@dataclasses.dataclass
class EvaluationResult:
    """Returns of every task after 0..K adaptation steps for each method."""

    env_id: str
    tasks: list[Any]
    returns: dict[str, np.ndarray]  # method -> [num_tasks, K + 1]
    protocol: dict[str, Any]

    def summary(self) -> dict[str, list[tuple[float, float]]]:
        """Per method, ``(mean, 95% CI half-width)`` over tasks after each step."""
        return {m: [mean_ci95(r[:, k]) for k in range(r.shape[1])] for m, r in self.returns.items()}

    def table(self) -> str:
        steps = next(iter(self.returns.values())).shape[1]
        header = f"{'method':<10}" + "".join(f"{f'{k} step' + ('s' if k != 1 else ''):>20}" for k in range(steps))
        lines = [header, "-" * len(header)]
        for method, stats in self.summary().items():
            lines.append(f"{method:<10}" + "".join(f"{f'{m:.2f} ± {h:.2f}':>20}" for m, h in stats))
        return "\n".join(lines)

    def save(self, out_dir: Path) -> list[Path]:
        """Write ``eval.json``, ``eval.csv`` and, when matplotlib is installed, ``eval.png``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        tasks = [task_to_json(t) for t in self.tasks]
        summary = {
            m: [
                {"step": k, "mean": mean, "ci95": half if math.isfinite(half) else None}
                for k, (mean, half) in enumerate(stats)
            ]
            for m, stats in self.summary().items()
        }
        per_task = {m: r.tolist() for m, r in self.returns.items()}
        (out_dir / "eval.json").write_text(
            json.dumps(
                {
                    "env": self.env_id,
                    "protocol": self.protocol,
                    "summary": summary,
                    "per_task": per_task,
                    "tasks": tasks,
                },
                indent=1,
            )
        )
        with (out_dir / "eval.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["method", "task_index", "task", "step", "return"])
            for method, returns in self.returns.items():
                for i, row in enumerate(returns):
                    for k, value in enumerate(row):
                        writer.writerow([method, i, json.dumps(tasks[i]), k, f"{value:.6g}"])
        written = [out_dir / "eval.json", out_dir / "eval.csv"]
        if self.plot(out_dir / "eval.png"):
            written.append(out_dir / "eval.png")
        return written

    def plot(self, path: Path) -> bool:
        """Return vs. adaptation steps with 95% CIs; False when matplotlib is missing."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, stats in self.summary().items():
            means, halves = np.array([m for m, _ in stats]), np.array([h for _, h in stats])
            steps = np.arange(len(means))
            ax.plot(steps, means, marker="o", label=method)
            ax.fill_between(steps, means - halves, means + halves, alpha=0.2)
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel("average return")
        ax.set_xticks(range(len(means)))
        ax.set_title(f"{self.env_id}: {len(self.tasks)} held-out tasks")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return True


def adaptation_curve(
    policy: nn.Module,
    params: Params,
    sampler: Sampler,
    tasks: Sequence[Any],
    config: Config,
    adapt_steps: int,
    lr: float,
    later_lr_scale: float,
) -> np.ndarray:
    """Mean return per task after 0..K inner steps, each step on freshly sampled episodes."""
    params = per_task(params, len(tasks))
    returns = np.zeros((len(tasks), adapt_steps + 1))
    for k in range(adapt_steps + 1):
        episodes = sampler.sample(policy, params, tasks)
        returns[:, k] = episodes.mean_returns.cpu().numpy()
        if k < adapt_steps:
            step_lr = lr if k == 0 else lr * later_lr_scale
            episodes = estimate_advantages(episodes, config.advantages)
            params = detach(adapt(policy, params, [episodes], step_lr, create_graph=False))
    return returns


def evaluate(
    path: str | Path,
    num_tasks: int | None = None,
    adapt_steps: int | None = None,
    episodes_per_task: int | None = None,
    seed: int | None = None,
    out_dir: str | Path | None = None,
    split: str = "test",
    batch_unit: str | None = None,
    tasks_file: str | Path | None = None,
    baselines: Sequence[str] = (),
) -> EvaluationResult:
    """Evaluate the meta-policy of a run directory or checkpoint on unseen tasks.

    ``split="test"``: the held-out tasks of the training distribution (never trained on);
    ``split="ood"``: tasks outside the training distribution, where the family defines them.
    ``batch_unit``: count each step's batch in ``episodes`` or ``steps`` (see ``env.batch_unit``).
    ``tasks_file``: a JSON list of tasks (their JSON form) to evaluate on instead of a split, e.g.
    the goals of a published protocol.
    ``baselines``: methods run through the same protocol on the same tasks, next to ``maml``:
    ``random`` is a freshly initialised policy of the same architecture, adapted the same way.
    Unset arguments take the run's ``evaluation`` config. Results are written to `out_dir`
    (default: ``<run dir>/eval``, or ``eval_ood``).
    """
    if split not in ("test", "ood"):
        raise ValueError(f"split must be 'test' or 'ood', got {split!r}")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ConfigError([f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}"])
    given_tasks = _read_tasks(tasks_file) if tasks_file is not None else None
    if given_tasks is not None:
        num_tasks, split = len(given_tasks), "file"
    meta_policy = load(path)
    checkpoint = meta_policy.checkpoint
    overrides = {
        "num_tasks": num_tasks,
        "adapt_steps": adapt_steps,
        "episodes_per_task": episodes_per_task,
        "seed": seed,
        "batch_unit": batch_unit,
    }
    config = config_from_dict(
        meta_policy.config.to_dict(), [f"evaluation.{k}={v}" for k, v in overrides.items() if v is not None]
    )
    protocol = dataclasses.asdict(config.evaluation)
    protocol["lr"] = protocol["lr"] if protocol["lr"] is not None else config.inner.lr
    torch.manual_seed(protocol["seed"])
    protocol["batch_unit"] = protocol["batch_unit"] or config.env.batch_unit
    sampler = Sampler.from_config(config, protocol["episodes_per_task"], protocol["seed"], protocol["batch_unit"])
    try:
        # The held-out tasks are those the run kept out of training, whatever --seed says about sampling noise.
        task_seed = meta_policy.config.evaluation.seed
        splits = TaskSplits(sampler.env, config.train.seed, task_seed, protocol["num_tasks"])
        if given_tasks is not None:
            _check_tasks(sampler.env, given_tasks, tasks_file)
            tasks = given_tasks
        else:
            tasks = splits.test if split == "test" else splits.ood(protocol["num_tasks"])
        policies = {"maml": (meta_policy.policy, meta_policy.params)}
        if "random" in baselines:
            torch.manual_seed(protocol["seed"] + 1)
            policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
            policies["random"] = (policy, detach(parameters_of(policy)))
        curve = (protocol["adapt_steps"], protocol["lr"], protocol["later_lr_scale"])
        returns = {
            method: adaptation_curve(policy, params, sampler, tasks, config, *curve)
            for method, (policy, params) in policies.items()
        }
    finally:
        sampler.close()
    protocol.update(checkpoint=checkpoint["path"], iteration=checkpoint["iteration"], task_seed=task_seed, split=split)
    result = EvaluationResult(config.env.id, list(tasks), returns, protocol)
    if out_dir is None:
        checkpoint_path = Path(checkpoint["path"])
        run_dir = (
            checkpoint_path.parent.parent if checkpoint_path.parent.name == "checkpoints" else checkpoint_path.parent
        )
        out_dir = run_dir / ("eval" if split == "test" else f"eval_{split}")
    if tasks_file is not None:
        result.protocol["tasks_file"] = str(tasks_file)
    result.save(Path(out_dir))
    result.protocol["out_dir"] = str(out_dir)
    return result


BASELINES = ("random",)  # methods `evaluate` can run next to the meta-learned policy


def _read_tasks(path: str | Path) -> list[Any]:
    """A JSON list of tasks in their JSON form (environments accept that form back as a task)."""
    try:
        tasks = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError([f"cannot read tasks from {path}: {error}"]) from None
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError([f'{path} must hold a non-empty JSON list of tasks, e.g. [{{"goal": [0.1, -0.3]}}]'])
    return tasks


def _check_tasks(env: gym.Env, tasks: Sequence[Any], path: str | Path) -> None:
    """Every task must be one the environment accepts (each is set on a spare copy)."""
    for i, task in enumerate(tasks):
        try:
            env.set_wrapper_attr("task", task)
        except (TypeError, ValueError) as error:
            raise ConfigError([f"task {i} of {path} ({task!r}) is not a task of {env.spec.id}: {error}"]) from None
