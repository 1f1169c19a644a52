"""Typed experiment configuration: dataclasses loaded from YAML, validated, overridable from the CLI.

Every field below is a YAML key (``section.field``) and can be overridden with
``--set section.field=value`` (the value is parsed as YAML: ``--set policy.hidden_sizes=[32,32]``).
Unknown keys, wrong types and out-of-range values are all reported together, naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from metarl.errors import ConfigError
from metarl.info_metrics import AGGREGATIONS, DEFAULT_INFO_METRICS
from metarl.registry import OUTER_ALGORITHMS
from metarl.rundir import run_name_problem
from metarl.task_space import task_space_problems

# What `metarl train --resume` may change: how the run is executed, not what it computes (except the
# last bits of some sums, for train.num_threads: `metarl.threads`).
RESUMABLE_OVERRIDES = (
    "train.iterations",
    "train.num_threads",
    "train.reuse_freed_memory",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "env.workers",
    "env.step_in_parent",
    "env.free_running",
    "env.worker_timeout",
    "env.info_metrics",
    "env.max_copies",
    "env.backend",
    "env.ray_address",
)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    id: str = "MetaRL/Navigation2D-v0"
    """Gymnasium id of the task family (``MetaRL/...``, any registered id, or ``module:Id``)."""
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments for the environment constructor."""
    horizon: int | None = None
    """Episode length; defaults to the id's ``max_episode_steps``."""
    batch_unit: Literal["episodes", "steps"] = "episodes"
    """``episodes``: every task gets exactly ``episodes_per_task`` episodes. ``steps``: a task's
    episodes run back to back until they hold ``episodes_per_task × horizon`` steps, as the MAML
    paper's rllab sampler does, so tasks whose episodes end early (a reached goal) get more of them."""
    spare_episodes: int = 0
    """``batch_unit: steps``: episodes per task run beyond ``episodes_per_task`` in the same lockstep
    round, kept in order while a task's budget has room, as a second round's episodes would be, but
    without that round's horizon of lockstep steps (other random draws, the same distribution).
    Spares not needed are discarded and not counted; families whose episodes never end early gain
    nothing from them."""
    workers: int | None = None
    """Parallel stepping. Families with batched physics (HalfCheetah*, Navigation2D) run it on this
    many C threads (default: one per core). Other families step in this many worker processes when
    it is above 1 (default: in the training process). ``backend: ray``: the number of Ray actors
    (default: one per CPU of the cluster). Results do not depend on it."""
    step_in_parent: bool = True
    """With ``workers`` above 1 for a family stepped in worker processes: the training process steps
    one share of the copies itself, while ``workers - 1`` processes step the others, instead of
    waiting for them (Meta-World on 2 cores: 0.98-1.47x the env steps/s, one process less memory).
    ``worker_timeout`` covers that share through SIGALRM, which stops Python code but not one endless
    C call: set false for an environment that may hang there. Results do not depend on it."""
    free_running: bool = True
    """With ``workers`` above 1 for a family stepped in worker processes and a Gaussian policy: each
    process (the training process too, with ``step_in_parent``) runs whole episodes of its share of
    a round's tasks with its own policy forward, instead of stepping in lockstep with the training
    process and waiting for its policy at every step. The same episodes for the same seed (the
    call's noise is drawn here and shared out); false: lockstep."""
    backend: Literal["local", "ray"] = "local"
    """Where episodes are sampled: ``local`` (this machine: batched physics or worker processes) or
    ``ray`` (long-lived actors on a Ray cluster, ``env.workers`` of them, default one per CPU; the
    same episodes for the same seed). Needs ``pip install -e ".[ray]"``."""
    ray_address: str | None = None
    """``ray``: the cluster to connect to (``HOST:6379`` or ``auto``; default ``RAY_ADDRESS``, else a
    local instance with this machine's cores). Never read from a checkpoint or a resumed run's files."""
    worker_timeout: float | None = 60.0
    """Seconds a worker process or Ray actor may spend in one step (or reset) of its environments
    before the run stops with an error naming it; null waits as long as the worker lives."""
    task_space: dict[str, Any] | None = None
    """Make any environment a task distribution without code: parameter name -> distribution and
    how it is applied (constructor kwarg, attribute, MuJoCo model field, reward goal); see
    ``metarl.task_space`` and the README section "No-code task spaces"."""
    max_copies: int | None = None
    """Bounded memory: run each batch's episodes in rounds of whole tasks on at most this many
    environment copies (at least ``episodes_per_task``), with the same episodes as all at once.
    Default: the family's own (Meta-World: 40 copies, about 0.8 GiB), else all copies at once."""
    info_metrics: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_INFO_METRICS))
    """Step-info keys folded into one number per episode and reported next to the returns
    (TensorBoard, metrics.jsonl, evaluation): key -> ``any`` (1 if non-zero at any step: an episode
    succeeds if ``info["success"]`` was 1 once), ``mean``, ``sum``, ``max`` or ``last``. Keys the
    family's infos do not report are left out."""


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    hidden_sizes: list[int] = dataclasses.field(default_factory=lambda: [64, 64])
    """Widths of the hidden layers."""
    activation: Literal["tanh", "relu"] = "tanh"
    init_std: float = 1.0
    """Initial standard deviation of the Gaussian policy (in the policy's action units)."""
    action_scaling: Literal["normalize", "clip"] = "normalize"
    """``normalize``: the policy acts in [-action_bound, action_bound], clipped and mapped linearly onto
    the env's action bounds (the MAML paper's rllab ``normalize`` wrapper). ``clip``: raw actions
    clipped to the bounds."""
    action_bound: float = 1.0
    """Half-width of the policy's action range under ``normalize`` (pytorch-maml-rl uses 10 for MuJoCo)."""


@dataclasses.dataclass(frozen=True)
class InnerConfig:
    lr: float = 0.1
    """Step size α of the inner policy-gradient update."""
    steps: int = 1
    """Inner gradient steps; fresh episodes are sampled after each step."""
    episodes_per_task: int = 20
    """Episodes per task per inner step (and for the post-adaptation sample)."""
    first_order: bool = False
    """Drop second derivatives through the inner update (first-order MAML)."""
    estimator: Literal["reinforce", "lvc", "dice"] | None = None
    """Inner objective: ``reinforce`` (the MAML paper's), ``lvc`` (ProMP's low-variance curvature) or
    ``dice`` (unbiased second derivatives); null: the outer algorithm's (lvc for ProMP, reinforce
    otherwise). See `metarl.inner`."""
    learn_lr: bool = False
    """Meta-SGD (Li et al. 2017): meta-learn one inner step size per parameter entry, starting at
    ``lr``, together with θ."""


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    algo: str = "trpo"
    """Outer algorithm: one of `metarl.registry.OUTER_ALGORITHMS` (``metarl train --help`` lists them):
    trpo (MAML-TRPO, the paper's), adam, sgd, ppo (MAML-PPO), promp (ProMP)."""
    tasks_per_batch: int = 20
    """Tasks per meta-batch."""
    max_kl: float = 0.01
    """TRPO: bound on the mean KL between old and new adapted policies."""
    cg_iters: int = 10
    cg_damping: float = 1e-5
    curvature_stride: int = 1
    """TRPO: the conjugate-gradient solve's curvature products use every n-th step of each task
    (OpenAI Baselines' TRPO uses 5); the meta-gradient, the step's KL and the line search always use
    all steps. 1 is exact, as in the MAML paper."""
    curvature_precision: Literal["full", "bfloat16"] = "full"
    """TRPO: arithmetic of the conjugate-gradient solve's curvature products. ``bfloat16`` makes the
    solve 2-4x faster on CPUs with bfloat16 units (AVX-512 BF16, AMX) at about 3 significant digits;
    the meta-gradient, the step's KL and the line search stay in full precision. ``full`` (the
    parameters' dtype) is exact, as in the MAML paper."""
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8
    lr: float = 1e-3
    """Adam/SGD/PPO/ProMP: outer learning rate β."""
    max_grad_norm: float | None = None
    """Adam/SGD/PPO/ProMP: clip the meta-gradient to this norm (null: no clipping)."""
    epochs: int = 5
    """PPO/ProMP: Adam steps on one meta-batch, re-adapting through θ before each."""
    clip: float = 0.3
    """PPO/ProMP: clip range ε of the likelihood ratio (ProMP's MuJoCo script: 0.3; PPO's paper: 0.2)."""
    kl_coef: float = 5e-4
    """ProMP: coefficient η of the KL penalty between the sampling and the current pre-update policy
    (initial value when adaptive)."""
    kl_target: float = 0.01
    """ProMP: target of that KL for the adaptive coefficient (halved below target/1.5, doubled above 1.5×target)."""
    adaptive_kl: bool = False
    """ProMP: adapt the coefficient after every meta-batch (ProMP's MuJoCo script keeps it fixed)."""
    precision: Literal["full", "bfloat16"] = "full"
    """PPO/ProMP: arithmetic of each epoch's matrix products (torch autocast). ``bfloat16`` halves an
    epoch's time on CPUs with bfloat16 units; the meta-gradient then agrees with full precision to
    about 2 digits (cosine 0.9999 on 2D navigation). ``full`` is exact."""


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    gamma: float = 0.99
    gae_lambda: float = 1.0
    normalize: bool = True
    """Normalise advantages per task to zero mean and unit variance."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    algo: Literal["maml", "pretrain", "oracle"] = "maml"
    """``maml``: meta-train θ for adaptation (the inner and outer loops). The baselines of the MAML
    paper, trained with the same outer optimiser and the same env steps per iteration but no inner
    loop: ``pretrain``, one policy for the whole task distribution (multi-task policy gradient), and
    ``oracle``, a policy that also observes the task's parameters."""
    iterations: int = 500
    """Meta-iterations (outer steps)."""
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    """torch intra-op threads (null: this machine's CPU count, recorded in the run's config.yaml). The
    count sets the last bits of some sums (`metarl.threads`): a run is bit-identical for the same
    count, and resuming with another continues on a slightly different path."""
    reuse_freed_memory: bool = True
    """Let the allocator (glibc's malloc) keep freed activation-sized blocks for the next iteration
    instead of returning them to the kernel and faulting them in again (`metarl.memory.reuse_freed_memory`:
    2D navigation's MAML-TRPO iteration 1.7x faster, ProMP's 1.2x; the same numbers). The process then
    keeps the memory of its peak."""
    checkpoint_every: int = 50
    """Write ``checkpoints/iter_<N>.pt`` every this many iterations (a killed run loses at most these)."""
    keep_checkpoints: int = 3
    """Keep the newest this many ``iter_<N>.pt`` files (``best.pt`` and ``final.pt`` are kept as well)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or infinity in episodes, losses, gradients or parameters: ``stop`` the run (the state
    after the last good iteration is saved) or ``skip`` that meta-batch and go on from the last good θ."""
    logdir: str = "runs"
    """Parent directory of run directories."""
    run_name: str | None = None
    """Name of the run directory (default: ``<env>__seed<seed>__<timestamp>``)."""


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    num_tasks: int = 40
    """Held-out tasks to evaluate on."""
    adapt_steps: int = 3
    """Adaptation steps K; returns are reported after 0..K steps."""
    episodes_per_task: int = 40
    """Episodes per task per adaptation step (the paper: 40 × 100 steps = 4,000 for 2D navigation)."""
    lr: float | None = None
    """First-step size (default: ``inner.lr``). Learned step sizes (``inner.learn_lr``) are used as
    learned instead."""
    later_lr_scale: float = 0.5
    """Later steps use ``lr * later_lr_scale`` (the paper: 0.1, then 0.05)."""
    seed: int = 1
    """Seed of the held-out test tasks; training never samples these tasks."""
    batch_unit: Literal["episodes", "steps"] | None = None
    """How each adaptation step's batch is counted (see ``env.batch_unit``; null: as in training).
    The MAML paper's protocol counts steps: 40 x 100 = 4,000 per step for 2D navigation."""
    baselines: list[str] = dataclasses.field(default_factory=list)
    """Methods evaluated next to the run on the same tasks when none are given (``metarl evaluate
    --baselines``): ``random`` (a fresh policy adapted the same way) or ``NAME=RUN``."""
    checkpoint: Literal["newest", "best"] = "newest"
    """The checkpoint ``metarl train --evaluate`` evaluates: the newest (the final θ of a finished run),
    or ``best.pt``, the θ with the highest post-adaptation return on training tasks."""


@dataclasses.dataclass(frozen=True)
class Config:
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    inner: InnerConfig = dataclasses.field(default_factory=InnerConfig)
    outer: OuterConfig = dataclasses.field(default_factory=OuterConfig)
    advantages: AdvantageConfig = dataclasses.field(default_factory=AdvantageConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Range checks: key -> (predicate, what the value must be).
_CHECKS: dict[str, tuple[typing.Callable[[Any], bool], str | None]] = {
    "env.horizon": (lambda v: v is None or v > 0, "a positive integer or null"),
    "env.workers": (lambda v: v is None or v >= 1, "at least 1, or null for the default"),
    "env.worker_timeout": (lambda v: v is None or v > 0, "positive seconds, or null for no limit"),
    "env.max_copies": (lambda v: v is None or v >= 1, "at least 1, or null for the family's default"),
    "env.spare_episodes": (lambda v: v >= 0, "at least 0"),
    "env.info_metrics": (
        lambda v: all(how in AGGREGATIONS for how in v.values()),
        f"a mapping of info keys to one of {', '.join(AGGREGATIONS)}",
    ),
    "policy.hidden_sizes": (lambda v: all(h > 0 for h in v), "a list of positive integers"),
    "policy.init_std": (lambda v: v > 0, "positive"),
    "policy.action_bound": (lambda v: v > 0, "positive"),
    "inner.lr": (lambda v: v >= 0, "non-negative"),
    "inner.steps": (lambda v: v >= 1, "at least 1"),
    "inner.episodes_per_task": (lambda v: v >= 1, "at least 1"),
    "outer.tasks_per_batch": (lambda v: v >= 1, "at least 1"),
    "outer.max_kl": (lambda v: v > 0, "positive"),
    "outer.cg_iters": (lambda v: v >= 1, "at least 1"),
    "outer.cg_damping": (lambda v: v >= 0, "non-negative"),
    "outer.curvature_stride": (lambda v: v >= 1, "at least 1"),
    "outer.ls_max_steps": (lambda v: v >= 1, "at least 1"),
    "outer.ls_backtrack_ratio": (lambda v: 0 < v < 1, "in (0, 1)"),
    "outer.lr": (lambda v: v > 0, "positive"),
    "outer.max_grad_norm": (lambda v: v is None or v > 0, "positive or null"),
    "outer.algo": (lambda v: v in OUTER_ALGORITHMS, f"one of {', '.join(OUTER_ALGORITHMS)}"),
    "outer.epochs": (lambda v: v >= 1, "at least 1"),
    "outer.clip": (lambda v: v > 0, "positive"),
    "outer.kl_coef": (lambda v: v >= 0, "non-negative"),
    "outer.kl_target": (lambda v: v > 0, "positive"),
    "advantages.gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "advantages.gae_lambda": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.iterations": (lambda v: v >= 0, "non-negative"),
    "train.num_threads": (lambda v: v is None or v >= 1, "at least 1 or null"),
    "train.checkpoint_every": (lambda v: v >= 1, "at least 1"),
    "train.keep_checkpoints": (lambda v: v >= 1, "at least 1"),
    "train.device": (lambda v: _valid_device(v), None),
    "train.run_name": (
        lambda v: v is None or run_name_problem(v) is None,
        "a plain directory name (not empty, no '/', '\\', '.' or '..'): a run stays inside train.logdir",
    ),
    "evaluation.num_tasks": (lambda v: v >= 1, "at least 1"),
    "evaluation.adapt_steps": (lambda v: v >= 0, "non-negative"),
    "evaluation.episodes_per_task": (lambda v: v >= 1, "at least 1"),
    "evaluation.lr": (lambda v: v is None or v >= 0, "non-negative or null"),
    "evaluation.later_lr_scale": (lambda v: v >= 0, "non-negative"),
}


def _requirement(path: str) -> str:
    """What a key must be, where that depends on this machine."""
    if path == "train.device":
        return f"a torch device available here ({', '.join(repr(d) for d in available_devices())})"
    raise KeyError(path)


def available_devices() -> list[str]:
    """The torch devices this machine has: 'cpu', and 'cuda', 'cuda:N' or 'mps' where present."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _valid_device(name: str) -> bool:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return device.type == "cpu"


def _combination_problems(config: Config) -> list[str]:
    """Settings that are valid alone but contradict each other."""
    problems = []
    if config.train.algo != "maml" and config.inner.first_order:
        problems.append(
            f"'inner.first_order' has no effect with train.algo={config.train.algo} (it takes no inner "
            "step); first-order MAML is train.algo=maml with inner.first_order=true"
        )
    algorithm = OUTER_ALGORITHMS[config.outer.algo]
    defaults = OuterConfig()
    for field in dataclasses.fields(OuterConfig):
        name = field.name
        if name in ("algo", "tasks_per_batch") or name in algorithm.settings:
            continue
        if getattr(config.outer, name) != getattr(defaults, name):
            users = [a for a, spec in OUTER_ALGORITHMS.items() if name in spec.settings]
            problems.append(
                f"'outer.{name}' is not used by outer.algo={config.outer.algo} (it is a setting of "
                f"{', '.join(users)}); remove it, or choose one of those algorithms"
            )
    if config.inner.estimator == "dice" and config.outer.curvature_stride > 1:
        problems.append(
            "'outer.curvature_stride' keeps every n-th step, which breaks the episodes that the dice estimator "
            "sums over (remove outer.curvature_stride, or choose inner.estimator=reinforce or lvc)"
        )
    copies = config.env.max_copies
    episodes = max(config.inner.episodes_per_task, config.evaluation.episodes_per_task)
    if "steps" in (config.env.batch_unit, config.evaluation.batch_unit):
        episodes += config.env.spare_episodes
    if copies is not None and copies < episodes:
        problems.append(
            f"'env.max_copies' is {copies}, fewer than the {episodes} episodes of one task (inner.episodes_per_task, "
            f"evaluation.episodes_per_task, env.spare_episodes): rounds run whole tasks, so set env.max_copies to at "
            f"least {episodes}"
        )
    return problems


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_type(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether `value` fits the type `hint` (ints are accepted for floats and converted)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, converted = _check_type(value, option)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in typing.get_args(hint), value
    if hint is type(None):
        return value is None, value
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (item_hint,) = typing.get_args(hint)
        checked = [_check_type(v, item_hint) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if origin is dict:
        return isinstance(value, dict), value
    return isinstance(value, hint), value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid keys: {', '.join(names)})"
            problems.append(f"unknown key '{path}'{hint}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                problems.append(f"'{path}' must be a mapping of {hint.__name__} fields, got {value!r}")
                continue
            values[key] = _build(hint, value, f"{path}.", problems)
            continue
        ok, converted = _check_type(value, hint)
        if not ok:
            problems.append(f"'{path}' must be {_type_name(hint)}, got {value!r}")
            continue
        check = _CHECKS.get(path)
        if check is not None and not check[0](converted):
            problems.append(f"'{path}' must be {check[1] or _requirement(path)}, got {value!r}")
            continue
        values[key] = converted
    return cls(**values)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Turn ``["inner.lr=0.05", ...]`` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r} must look like section.field=value (e.g. inner.lr=0.05)")
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, leaf = key.strip().split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: '{'.'.join(parents[: depth + 1])}' was set to a value above")
                break
        else:
            node[leaf] = value
    return nested, problems


def config_from_dict(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> Config:
    """Build and validate a `Config`; raises `ConfigError` listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"the configuration must be a mapping of sections, got {type(data).__name__}"])
    extra, problems = parse_overrides(overrides)
    config = _build(Config, _merge(dict(data), extra), "", problems)
    if config.env.task_space is not None:
        problems += task_space_problems(config.env.task_space, "env.task_space")
    if not problems:
        problems += _combination_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def stored_config(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> Config:
    """The config of a checkpoint or run directory, which may come from elsewhere: its
    ``env.ray_address`` is dropped, since a file must not choose the cluster this process exchanges
    (pickled) data with; `overrides` (or ``RAY_ADDRESS``) may name one."""
    if isinstance(data, Mapping) and isinstance(data.get("env"), Mapping):
        data = {**data, "env": {k: v for k, v in data["env"].items() if k != "ray_address"}}
    return config_from_dict(data, overrides)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply ``key=value`` overrides."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(
                [f"'{path}' is a directory; give a YAML config file, e.g. experiments/navigation_2d.yaml"]
            )
        if not path.is_file():
            raise ConfigError([f"config file '{path}' does not exist"])
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError([f"cannot read config file '{path}': {error}"]) from None
        except yaml.YAMLError as error:
            raise ConfigError([f"'{path}' is not valid YAML: {' '.join(str(error).split())}"]) from None
        if not data:
            raise ConfigError(
                [
                    f"config file '{path}' is empty: it would run the 500-iteration defaults on 2D navigation; "
                    "set at least env.id (start from a file in experiments/, e.g. experiments/navigation_2d.yaml)"
                ]
            )
    return config_from_dict(data, overrides)
