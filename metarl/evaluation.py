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
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import scipy.stats
import torch
import yaml
from torch import nn

from metarl.backends import make_sampler
from metarl.checkpoint import load_checkpoint
from metarl.config import AdvantageConfig, Config, config_from_dict, stored_config
from metarl.errors import CheckpointError, ConfigError, EnvError, RunDirError
from metarl.functional import Params, detach, distribution, parameters_of, per_task
from metarl.inner import InnerLoop, LearnedStepSizes, estimate_advantages, step_size_summary
from metarl.make import make_env
from metarl.memory import check_evaluation_memory
from metarl.policies import make_policy
from metarl.rundir import describe_os_error
from metarl.sampler import Sampler, concat_episodes, env_actions, with_task_features
from metarl.tasks import SPLITS, TaskSplits, check_trusted_env, task_features, task_to_json
from metarl.threads import on_evaluation_threads
from metarl.video import record_adaptation_videos


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t over tasks; NaN for one task)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), math.nan
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


class MetaPolicy:
    """A meta-trained policy: adapt it to a new environment variant with a few episodes, then act.

    Obtained with ``metarl.load(path)``. ``adapt`` returns a new `MetaPolicy` whose parameters are
    the adapted θ'; the original stays unchanged.
    """

    def __init__(
        self,
        policy: nn.Module,
        config: Config,
        params: Params | None = None,
        checkpoint: dict[str, Any] | None = None,
        inner: InnerLoop | None = None,
    ) -> None:
        self.policy, self.config, self.checkpoint = policy, config, checkpoint or {}
        self.params = params if params is not None else detach(parameters_of(policy))
        self.inner = inner if inner is not None else InnerLoop.from_config(config)
        self._action_space: gym.Space | None = None

    @on_evaluation_threads
    def adapt(
        self,
        env: gym.Env | str,
        episodes: int | None = None,
        steps: int = 1,
        lr: float | None = None,
        seed: int | None = None,
        later_lr_scale: float = 1.0,
    ) -> MetaPolicy:
        """Run `episodes` episodes on `env` (default ``inner.episodes_per_task``), take an inner
        policy-gradient step on them, and repeat `steps` times (0: no adaptation). The first step
        has size `lr` (default: the run's α, learned ones included), later ones × `later_lr_scale`.
        `env` is an environment instance (its current task is used, never read) or a Gymnasium id;
        its observations and actions must be those the policy was trained on."""
        if self.observes_task:
            raise ValueError("an oracle policy is not adapted: it observes the task (act(observation, task=...))")
        episodes = self.config.inner.episodes_per_task if episodes is None else episodes
        for name, value, least in (("episodes", episodes, 1), ("steps", steps, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"adapt: {name} must be an integer of at least {least}, got {value!r}")
        if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"adapt: lr must be a finite number >= 0, got {lr!r}")
        env = make_env(env) if isinstance(env, str) else env
        self.check_env(env)
        policy_config = self.config.policy
        sampler = Sampler.for_env(
            env, self.config.env.horizon, policy_config.action_scaling, seed or 0, policy_config.action_bound
        )
        params = per_task(self.params, 1)
        for k in range(steps):
            batch = concat_episodes([sampler.sample(self.policy, params, None) for _ in range(episodes)])
            batch = estimate_advantages(batch, self.config.advantages)
            step_lr = self.inner.evaluation_lr(k, lr, later_lr_scale)
            params = detach(self.inner.step(self.policy, params, batch, create_graph=False, lr=step_lr)[0])
        adapted = MetaPolicy(
            self.policy, self.config, {name: p[0] for name, p in params.items()}, self.checkpoint, self.inner
        )
        adapted._action_space = env.action_space
        return adapted

    def check_env(self, env: gym.Env) -> None:
        """Refuse an environment whose observations or actions differ from the ones of training
        (`EnvError`): the policy's outputs would be meaningless, or the wrong shape."""
        trained_obs = self.checkpoint.get("observation_shape")
        trained_actions = self.checkpoint.get("action_space")
        shape = list(env.observation_space.shape or ())
        if trained_obs is not None and not self.observes_task and shape != trained_obs:
            raise EnvError(
                f"this policy was trained on observations of shape {trained_obs}, the environment gives {shape} "
                f"({env.observation_space}); adapt it on a variant of {self.config.env.id}"
            )
        if trained_actions is not None and not _same_action_layout(env.action_space, trained_actions):
            raise EnvError(
                f"this policy acts in {trained_actions}, the environment in {env.action_space}; adapt it on a "
                f"variant of {self.config.env.id}"
            )

    @property
    def observes_task(self) -> bool:
        """Whether this is an oracle: a policy that observes the task's parameters (never adapted)."""
        return self.config.train.algo == "oracle"

    @torch.no_grad()
    @on_evaluation_threads
    def act(
        self,
        observation: Any,
        deterministic: bool = True,
        action_space: gym.Space | None = None,
        task: Any = None,
    ) -> np.ndarray:
        """The action for one observation, in the environment's units (mean action if deterministic).
        An oracle also needs the `task`."""
        observation = np.asarray(observation, dtype=np.float32)
        if self.observes_task:
            if task is None:
                raise ValueError("an oracle policy acts on the observation and the task: pass task=")
            observation = np.concatenate([observation, task_features(task)])
        expected = self.checkpoint.get("observation_shape")
        if expected is not None and list(observation.shape) != expected:
            raise ValueError(f"act: expected one observation of shape {expected}, got shape {list(observation.shape)}")
        pi = distribution(self.policy, self.params, torch.as_tensor(observation))
        if deterministic:
            action = pi.mean if not isinstance(pi, torch.distributions.Categorical) else pi.probs.argmax(-1)
        else:
            action = pi.sample()
        space = action_space or self._action_space
        if space is None:
            raise ValueError("pass action_space= (or call adapt(env) first) so the action can be scaled to the env")
        return env_actions(action.numpy(), space, self.config.policy.action_scaling, self.config.policy.action_bound)


def _same_action_layout(space: gym.Space, trained: str) -> bool:
    """Whether `space` is the kind and shape of action space whose ``repr`` is `trained`."""
    if isinstance(space, gym.spaces.Discrete):
        return trained.startswith("Discrete(") and trained == repr(space)
    if isinstance(space, gym.spaces.Box):
        return trained.startswith("Box(") and trained.endswith(f", {space.shape}, {space.dtype})")
    return False


def load(path: str | Path, trust_modules: Collection[str] = ()) -> MetaPolicy:
    """Restore the meta-trained policy of a run directory or checkpoint file.

    The checkpoint is data: it cannot run code. Its ``env.id`` must be a registered Gymnasium id,
    or ``module:Name`` with the module (or that whole entry point) in `trust_modules`
    (`metarl.tasks.check_trusted_env`).
    """
    checkpoint = load_checkpoint(path)
    config = stored_config(checkpoint["config"])
    check_trusted_env(config.env.id, trust_modules, f"checkpoint '{checkpoint['path']}'")
    env = make_env(config.env.id, config.env.kwargs, config.env.horizon, config.env.task_space, check=False)
    observation_space = env.observation_space
    if config.train.algo == "oracle":
        observation_space = with_task_features(observation_space, env)
    if list(observation_space.shape) != checkpoint["observation_shape"]:
        raise CheckpointError(
            f"checkpoint '{checkpoint['path']}' expects observations of shape {checkpoint['observation_shape']}, "
            f"but {config.env.id} gives {list(observation_space.shape)}"
            + (" with the task appended (oracle)" if config.train.algo == "oracle" else "")
            + "; was the environment changed since training? Evaluate with the metarl and environment code "
            "that trained it"
        )
    if checkpoint.get("action_space") not in (None, repr(env.action_space)):
        raise CheckpointError(
            f"checkpoint '{checkpoint['path']}' acts in {checkpoint['action_space']}, but {config.env.id} "
            f"now has {env.action_space}; evaluate with the environment code that trained it"
        )
    policy = make_policy(observation_space, env.action_space, config.policy)
    try:
        policy.load_state_dict(checkpoint["policy"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint '{checkpoint['path']}' does not fit the policy its config describes: "
            f"{str(error).splitlines()[0]}"
        ) from None
    env.close()
    inner = InnerLoop.from_config(config)
    if checkpoint.get("step_sizes") is not None:  # Meta-SGD: the learned step sizes
        step_sizes = LearnedStepSizes(policy, config.inner.lr)
        step_sizes.load_state_dict(checkpoint["step_sizes"])
        inner = dataclasses.replace(inner, lr={name: a.detach() for name, a in step_sizes.as_params().items()})
    return MetaPolicy(policy, config, checkpoint=checkpoint, inner=inner)


@dataclasses.dataclass
class EvaluationResult:
    """Returns of every task after 0..K adaptation steps for each method, and the info metrics
    (success rate) where the family's steps report them."""

    env_id: str
    tasks: list[Any]
    returns: dict[str, np.ndarray]  # method -> [num_tasks, K + 1]
    protocol: dict[str, Any]
    # method -> info metric (e.g. "success") -> [num_tasks, K + 1], each task's mean over its episodes
    metrics: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, list[tuple[float, float]]]:
        """Per method, ``(mean, 95% CI half-width)`` over tasks after each step."""
        return {m: [mean_ci95(r[:, k]) for k in range(r.shape[1])] for m, r in self.returns.items()}

    def metric_names(self) -> list[str]:
        """The info metrics every method has (e.g. ``success``)."""
        names = [set(self.metrics.get(m, {})) for m in self.returns]
        return sorted(set.intersection(*names)) if names else []

    def metric_summary(self, name: str) -> dict[str, list[tuple[float, float]]]:
        """Per method, ``(mean, 95% CI half-width)`` over tasks of an info metric after each step."""
        return {m: [mean_ci95(v[:, k]) for k in range(v.shape[1])] for m, v in self._metric(name).items()}

    def gains(self, values: Mapping[str, np.ndarray]) -> dict[str, list[tuple[float, float]]]:
        """Per adapted method, the paired change from step 0 to each later step, ``(mean, CI)`` over tasks."""
        return {
            m: [mean_ci95(v[:, k] - v[:, 0]) for k in range(1, v.shape[1])]
            for m, v in values.items()
            if self._adapted(m)
        }

    def _metric(self, name: str) -> dict[str, np.ndarray]:
        return {m: self.metrics[m][name] for m in self.returns}

    def table(self) -> str:
        """The returns table, and one per info metric (success rates in percent)."""
        tables = [_table(self.summary(), self._adapted, "{:.2f} ± {:.2f}")]
        for name in self.metric_names():
            tables.append(f"\n{_metric_label(name)} (± 95% CI):")
            fmt = "{:.1%} ± {:.1%}" if name == "success" else "{:.3g} ± {:.2g}"
            tables.append(_table(self.metric_summary(name), self._adapted, fmt))
        return "\n".join(tables)

    def _adapted(self, method: str) -> bool:
        return self.protocol.get("methods", {}).get(method, {}).get("adapted", True)

    def save(self, out_dir: Path) -> list[Path]:
        """Write ``eval.json``, ``eval.csv`` and, when matplotlib is installed, ``eval.png``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        tasks = [task_to_json(t) for t in self.tasks]
        names = self.metric_names()
        metric_summaries = {name: self.metric_summary(name) for name in names}
        summary = {
            m: [
                {
                    "step": k,
                    "mean": mean,
                    "ci95": _finite(half),
                    # e.g. "success": the success rate over tasks, "success_ci95" its 95% CI half-width
                    **{f: v for n in names for f, v in _record(n, metric_summaries[n][m][k]).items()},
                }
                for k, (mean, half) in enumerate(stats)
            ]
            for m, stats in self.summary().items()
        }
        # Methods run on the same tasks, so per-task differences compare them more sharply.
        first, *others = self.returns
        differences = {
            f"{first} - {m}": [
                dict(zip(("mean", "ci95"), mean_ci95(self.returns[first][:, k] - self.returns[m][:, k]), strict=True))
                for k in range(self.returns[m].shape[1])
            ]
            for m in others
        }
        # Each method against itself before adaptation, paired over tasks: did adapting help?
        gains = {
            what: {
                m: [{"step": k, "mean": mean, "ci95": _finite(half)} for k, (mean, half) in enumerate(stats, start=1)]
                for m, stats in self.gains(values).items()
            }
            for what, values in {"return": self.returns, **{n: self._metric(n) for n in names}}.items()
        }
        data = {
            "env": self.env_id,
            "protocol": self.protocol,
            "summary": summary,
            "paired_differences": differences,
            "gain_over_step_0": gains,
            "per_task": {m: r.tolist() for m, r in self.returns.items()},
            "per_task_metrics": {n: {m: v.tolist() for m, v in self._metric(n).items()} for n in names},
            "tasks": tasks,
        }
        (out_dir / "eval.json").write_text(json.dumps(data, indent=1))
        with (out_dir / "eval.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["method", "task_index", "task", "step", "return", *names])
            for method, returns in self.returns.items():
                for i, row in enumerate(returns):
                    for k, value in enumerate(row):
                        extra = [f"{self.metrics[method][n][i, k]:.6g}" for n in names]
                        writer.writerow([method, i, json.dumps(tasks[i]), k, f"{value:.6g}", *extra])
        written = [out_dir / "eval.json", out_dir / "eval.csv"]
        self.log_tensorboard(out_dir)
        if self.plot(out_dir / "eval.png"):
            written.append(out_dir / "eval.png")
        return written

    def log_tensorboard(self, out_dir: Path) -> None:
        """Scalars ``eval/<method>`` (mean return over tasks) and ``eval_ci95/<method>`` against the
        adaptation step, next to the training curves when `out_dir` is inside the run directory;
        ``eval_<metric>/<method>`` for info metrics (``eval_success``)."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out_dir)) as writer:
            for method, stats in self.summary().items():
                for k, (mean, half) in enumerate(stats):
                    writer.add_scalar(f"eval/{method}", mean, k)
                    if math.isfinite(half):
                        writer.add_scalar(f"eval_ci95/{method}", half, k)
            for name in self.metric_names():
                for method, stats in self.metric_summary(name).items():
                    for k, (mean, _) in enumerate(stats):
                        writer.add_scalar(f"eval_{name}/{method}", mean, k)

    def plot(self, path: Path) -> bool:
        """Return (and success rate, where reported) vs. adaptation steps with 95% CIs; False when
        matplotlib is missing."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        panels = [("average return", self.summary())]
        panels += [(_metric_label(name), self.metric_summary(name)) for name in self.metric_names()]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
        for ax, (label, summary) in zip(axes[0], panels, strict=True):
            for method, stats in summary.items():
                means, halves = np.array([m for m, _ in stats]), np.nan_to_num(np.array([h for _, h in stats]))
                steps = np.arange(len(means))
                if self._adapted(method):
                    ax.plot(steps, means, marker="o", label=method)
                else:
                    ax.plot(steps, means, linestyle="--", label=f"{method} (not adapted)")
                ax.fill_between(steps, means - halves, means + halves, alpha=0.2)
            ax.set_xlabel("adaptation steps")
            ax.set_ylabel(label)
            if label == "success rate":
                ax.set_ylim(-0.03, 1.03)
            ax.set_xticks(range(len(means)))
            ax.legend()
        words = SPLIT_WORDS.get(self.protocol.get("split", "test"), "held-out")
        fig.suptitle(f"{self.env_id}: {len(self.tasks)} {words} tasks")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return True


# How each split's tasks are described in tables and plots.
SPLIT_WORDS = {"test": "held-out", "ood": "out-of-distribution", "train": "training", "file": "given"}


def _metric_label(name: str) -> str:
    return "success rate" if name == "success" else name


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _record(name: str, stats: tuple[float, float]) -> dict[str, float | None]:
    return {name: stats[0], f"{name}_ci95": _finite(stats[1])}


def _table(summary: Mapping[str, list[tuple[float, float]]], adapted: Callable[[str], bool], fmt: str) -> str:
    """Rows of ``mean ± CI`` after 0..K steps per method; a method that is not adapted gets one number."""
    steps = len(next(iter(summary.values())))
    width = max(12, *(len(m) + 2 for m in summary))
    header = f"{'method':<{width}}" + "".join(f"{f'{k} step' + ('s' if k != 1 else ''):>20}" for k in range(steps))
    lines = [header, "-" * len(header)]
    for method, stats in summary.items():
        if not adapted(method):  # the same policy at every step: one number
            lines.append(f"{method:<{width}}{fmt.format(*stats[0]):>20}   (not adapted)")
            continue
        lines.append(f"{method:<{width}}" + "".join(f"{fmt.format(m, h):>20}" for m, h in stats))
    return "\n".join(lines)


def adaptation_curve(
    method: MetaPolicy,
    sampler: Sampler,
    tasks: Sequence[Any],
    advantages: AdvantageConfig,
    adapt_steps: int,
    lr: float | None,
    later_lr_scale: float,
) -> dict[str, np.ndarray]:
    """Mean return per task after 0..K inner steps, each step on freshly sampled episodes; step
    sizes from `InnerLoop.evaluation_lr`. Returns ``{"return": [tasks, K + 1]}`` and the same for
    every info metric the episodes carry (``"success"``: each task's share of successful episodes)."""
    policy, params = method.policy, per_task(method.params, len(tasks))
    curves: dict[str, np.ndarray] = {"return": np.zeros((len(tasks), adapt_steps + 1))}
    for k in range(adapt_steps + 1):
        episodes = sampler.sample(policy, params, tasks)
        curves["return"][:, k] = episodes.mean_returns.cpu().numpy()
        for name, values in episodes.mean_metrics.items():
            curves.setdefault(name, np.full((len(tasks), adapt_steps + 1), np.nan))[:, k] = values.cpu().numpy()
        if k < adapt_steps:
            episodes = estimate_advantages(episodes, advantages)
            step_lr = method.inner.evaluation_lr(k, lr, later_lr_scale)
            params = detach(method.inner.step(policy, params, episodes, create_graph=False, lr=step_lr)[0])
    return curves


@on_evaluation_threads
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
    baselines: Sequence[str] | None = None,
    baseline_lrs: Mapping[str, float] | None = None,
    videos: int = 0,
    trust_modules: Collection[str] = (),
    checkpoint: str = "newest",
    overrides: Sequence[str] = (),
) -> EvaluationResult:
    """Evaluate the meta-policy of a run directory or checkpoint on unseen tasks.

    ``split="test"``: the held-out tasks of the training distribution (never trained on);
    ``split="ood"``: tasks outside the training distribution, where the family defines them;
    ``split="train"``: tasks of the training distribution (a family's fixed train list), for
    meta-train figures such as Meta-World's.
    ``batch_unit``: count each step's batch in ``episodes`` or ``steps`` (see ``env.batch_unit``).
    ``tasks_file``: a JSON list of tasks (their JSON form) to evaluate on instead of a split, e.g.
    the goals of a published protocol.
    ``baselines``: methods run through the same protocol on the same tasks after the evaluated run:
    ``random``, a freshly initialised policy of the same architecture, adapted the same way
    (``NAME=random`` for another one, e.g. at its own step size), and
    ``NAME=RUN`` for another run of the same task family, e.g. ``pretrained=runs/nav_pretrain``
    (``metarl train --algo pretrain``), ``oracle=runs/nav_oracle`` (``--algo oracle``: it observes
    the task and is evaluated without adaptation) or ``fomaml=runs/nav_first_order``.
    (default: the run's ``evaluation.baselines``; ``()`` for none).
    ``baseline_lrs``: a first-step size per method name (the MAML paper tuned the baselines' own).
    ``videos``: record one episode before and one after adaptation for this many tasks.
    ``trust_modules``: modules (or ``module:Name`` entry points) that the checkpoints' ``env.id``
    may import (see `load`); a registered Gymnasium id needs none.
    ``checkpoint``: for a run directory, its ``newest`` checkpoint or its ``best`` (``best.pt``: the
    θ with the highest post-adaptation return on training tasks).
    ``overrides``: ``evaluation.KEY=VALUE`` settings of the protocol, e.g.
    ``evaluation.later_lr_scale=0.3`` (only ``evaluation.*``: the rest is the trained policy's).
    Unset arguments take the run's ``evaluation`` config. Results are written to `out_dir`
    (default: ``<run dir>/eval``, or ``eval_ood``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    foreign = [o for o in overrides if not o.partition("=")[0].strip().startswith("evaluation.")]
    if foreign:
        raise ConfigError(
            [
                f"'{o.partition('=')[0].strip()}' cannot be set when evaluating (it is part of the trained policy); "
                "only evaluation.* settings, e.g. evaluation.later_lr_scale=0.3"
                for o in foreign
            ]
        )
    given_tasks = _read_tasks(tasks_file) if tasks_file is not None else None
    if given_tasks is not None:
        num_tasks, split = len(given_tasks), "file"
    if checkpoint not in ("newest", "best"):
        raise ValueError(f"checkpoint must be 'newest' or 'best', got {checkpoint!r}")
    if checkpoint == "best" and Path(path).is_dir():
        path = Path(path) / "checkpoints" / "best.pt"
        if not path.is_file():
            raise CheckpointError(f"'{path}' does not exist: the run has no best.pt; evaluate its newest checkpoint")
    meta_policy = load(path, trust_modules)
    methods = {method_name(meta_policy.config): meta_policy}
    if baselines is None:
        baselines = meta_policy.config.evaluation.baselines
    for name, other in _parse_baselines(baselines, methods).items():
        if other is not None:
            methods[name] = load(other, trust_modules)
            _check_comparable(meta_policy, methods[name], name)
        else:
            methods[name] = None  # random: built below, once the observation space is known
    unknown_lrs = sorted(set(baseline_lrs or {}) - set(methods))
    if unknown_lrs:
        raise ConfigError([f"--baseline-lr names {', '.join(unknown_lrs)}, which is not a method of this evaluation"])
    checkpoint = meta_policy.checkpoint
    given = {
        "num_tasks": num_tasks,
        "adapt_steps": adapt_steps,
        "episodes_per_task": episodes_per_task,
        "seed": seed,
        "batch_unit": batch_unit,
    }
    config = config_from_dict(
        meta_policy.config.to_dict(),
        [*overrides, *(f"evaluation.{k}={v}" for k, v in given.items() if v is not None), "train.algo=maml"],
    )
    protocol = dataclasses.asdict(config.evaluation)
    protocol["lr"] = protocol["lr"] if protocol["lr"] is not None else config.inner.lr
    protocol["batch_unit"] = protocol["batch_unit"] or config.env.batch_unit
    samplers: dict[bool, Sampler] = {}

    def sampler_for(observe_task: bool) -> Sampler:
        """One sampler for the methods that see the task (oracles), one for the others; the other
        hands back its workers first (Ray: the same actors serve both, one set may fill the cluster)."""
        for other, each in samplers.items():
            if other != observe_task:
                each.release_workers()
        if observe_task not in samplers:
            algo = "oracle" if observe_task else "maml"
            samplers[observe_task] = make_sampler(
                config_from_dict(config.to_dict(), [f"train.algo={algo}"]),
                protocol["episodes_per_task"],
                protocol["seed"],
                protocol["batch_unit"],
            )
        return samplers[observe_task]

    torch.manual_seed(protocol["seed"])
    try:
        sampler = sampler_for(False)
        check_evaluation_memory(
            config, sampler.observation_space, sampler.action_space, sampler.horizon, protocol["batch_unit"]
        )
        # The held-out tasks are those the run kept out of training, whatever --seed says about sampling noise.
        task_seed = meta_policy.config.evaluation.seed
        splits = TaskSplits(sampler.env, config.train.seed, task_seed, protocol["num_tasks"])
        if given_tasks is not None:
            _check_tasks(sampler.env, given_tasks, tasks_file)
            tasks = given_tasks
        else:
            tasks = splits.evaluation_tasks(split, protocol["num_tasks"])
        returns, metrics, protocol["methods"] = {}, {}, {}
        for name, method in methods.items():
            if method is None:
                torch.manual_seed(protocol["seed"] + 1)
                policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
                method = methods[name] = MetaPolicy(policy, config)
            # None: the method's own α (learned step sizes are the method's, whatever evaluation.lr says)
            lr = (baseline_lrs or {}).get(name, None if method.inner.learned else config.evaluation.lr)
            # An oracle is evaluated as it is, without adaptation (as in the MAML paper).
            steps = 0 if method.observes_task else protocol["adapt_steps"]
            # Every method starts from the same random state (common random numbers): its numbers do
            # not depend on which other methods run, and differences between methods are less noisy.
            torch.manual_seed(protocol["seed"])
            sampler_for(method.observes_task).reseed(protocol["seed"])
            curve = adaptation_curve(
                method,
                sampler_for(method.observes_task),
                tasks,
                config.advantages,
                steps,
                lr,
                protocol["later_lr_scale"],
            )
            if steps == 0:  # not adapted: the same numbers at every step
                curve = {key: np.repeat(values, protocol["adapt_steps"] + 1, axis=1) for key, values in curve.items()}
            returns[name] = curve.pop("return")
            metrics[name] = curve
            protocol["methods"][name] = {
                "checkpoint": method.checkpoint.get("path"),
                "iteration": method.checkpoint.get("iteration"),
                "algo": method.config.train.algo if method.checkpoint else "random init",
                "lr": None if method.observes_task else (lr if lr is not None else _lr_name(method.inner)),
                "adapted": not method.observes_task,
            }
            if method.inner.learned:  # Meta-SGD: what the step sizes learned
                protocol["methods"][name]["learned_lr"] = step_size_summary(method.inner.lr)
    finally:
        for each in samplers.values():
            each.close()
    protocol.update(checkpoint=checkpoint["path"], iteration=checkpoint["iteration"], task_seed=task_seed, split=split)
    result = EvaluationResult(config.env.id, list(tasks), returns, protocol, metrics)
    if out_dir is None:
        checkpoint_path = Path(checkpoint["path"])
        run_dir = (
            checkpoint_path.parent.parent if checkpoint_path.parent.name == "checkpoints" else checkpoint_path.parent
        )
        out_dir = run_dir / ("eval" if split == "test" else f"eval_{split}")
    if tasks_file is not None:
        result.protocol["tasks_file"] = str(tasks_file)
    try:
        result.save(Path(out_dir))
    except OSError as error:
        raise RunDirError(
            f"cannot write the evaluation results to '{out_dir}': {describe_os_error(error)}; choose another --out"
        ) from None
    result.protocol["out_dir"] = str(out_dir)
    if videos:
        result.protocol["videos"] = record_adaptation_videos(
            meta_policy, list(tasks)[:videos], Path(out_dir) / "videos", protocol
        )
    return result


def _lr_name(inner: InnerLoop) -> float | str:
    return "learned" if inner.learned else inner.lr


def method_name(config: Config) -> str:
    """What a run is called in an evaluation: maml, fomaml (first-order), pretrained or oracle."""
    if config.train.algo == "maml":
        return "fomaml" if config.inner.first_order else "maml"
    return {"pretrain": "pretrained", "oracle": "oracle"}[config.train.algo]


def _parse_baselines(baselines: Sequence[str], taken: Mapping[str, Any]) -> dict[str, str | None]:
    """``random``, ``NAME=random`` and ``NAME=RUN`` entries -> {name: run path, or None for a random init}."""
    parsed: dict[str, str | None] = {}
    problems = []
    for entry in baselines:
        name, sep, run = entry.partition("=")
        name = name.strip()
        if not sep and name != "random":
            problems.append(
                f"baseline {entry!r}: use 'random' or NAME=RUN for another run of this task family, "
                "e.g. pretrained=runs/nav_pretrain"
            )
        elif sep and not (name and run):
            problems.append(f"baseline {entry!r} needs a name and a run: NAME=RUN")
        elif name in parsed or name in taken:
            problems.append(f"baseline name {name!r} is used twice; give each method its own name")
        else:
            parsed[name] = None if run in ("", "random") else run
    if problems:
        raise ConfigError(problems)
    return parsed


def _check_comparable(reference: MetaPolicy, other: MetaPolicy, name: str) -> None:
    """A baseline must come from the same task distribution, with the same observations and actions."""
    ours, theirs = reference.config.env, other.config.env
    where = f"baseline '{name}' ({other.checkpoint['path']})"
    if theirs.id != ours.id:
        raise CheckpointError(
            f"{where} was trained on {theirs.id}, the evaluated run on {ours.id}; compare runs of the same task family"
        )
    if (theirs.kwargs, theirs.task_space) != (ours.kwargs, ours.task_space):
        raise CheckpointError(
            f"{where} was trained on a different task distribution of {ours.id} (env.kwargs {theirs.kwargs}, "
            f"task_space {theirs.task_space}; the evaluated run: {ours.kwargs}, {ours.task_space})"
        )
    ours_shape, theirs_shape = reference.checkpoint["observation_shape"], other.checkpoint["observation_shape"]
    if not (reference.observes_task or other.observes_task) and theirs_shape != ours_shape:
        raise CheckpointError(
            f"{where} observes vectors of shape {theirs_shape}, the evaluated run {ours_shape}; "
            "they cannot be compared on the same tasks"
        )
    if other.checkpoint["action_space"] != reference.checkpoint["action_space"]:
        raise CheckpointError(
            f"{where} acts in {other.checkpoint['action_space']}, the evaluated run in "
            f"{reference.checkpoint['action_space']}; they cannot be compared on the same tasks"
        )


def _read_tasks(path: str | Path) -> list[Any]:
    """A JSON or YAML list of tasks in their JSON form (environments accept that form back as a task)."""
    path = Path(path)
    try:
        text = path.read_text()
        tasks = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError([f"cannot read tasks from {path}: {error}"]) from None
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(
            [
                f'{path} must hold a non-empty list of tasks, e.g. [{{"goal": [0.1, -0.3]}}] (JSON) '
                'or "- goal: [0.1, -0.3]" (YAML)'
            ]
        )
    return tasks


def _check_tasks(env: gym.Env, tasks: Sequence[Any], path: str | Path) -> None:
    """Every task must be one the environment accepts (each is set on a spare copy)."""
    for i, task in enumerate(tasks):
        try:
            env.set_wrapper_attr("task", task)
        except (TypeError, ValueError) as error:
            raise ConfigError([f"task {i} of {path} ({task!r}) is not a task of {env.spec.id}: {error}"]) from None
