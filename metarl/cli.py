"""The ``metarl`` command: ``train``, ``evaluate``, ``envs`` and ``check-env``.

Only the standard library is imported at the top: torch and the rest load inside `main`, with
Ctrl-C held back until they are loaded (`_imports_before_interrupts`), so that an interruption
during start-up is a clean exit, never a traceback or an abort.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import os
import re
import shlex
import signal
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metarl.errors import ConfigError, MetarlError

DESCRIPTION = """\
Meta-reinforcement learning with MAML for robots: meta-train a policy on a task family, then
measure how fast it adapts to tasks it never saw.

  metarl train experiments/navigation_2d.yaml --evaluate   # meta-train, then evaluate
  metarl train --resume runs/<run>                          # continue a stopped run exactly
  metarl evaluate runs/<run>                                # adaptation table on held-out tasks
  metarl evaluate runs/<run> --baselines random pretrained=runs/<pretrain run>
  metarl envs                                               # the task families and their tasks
  metarl check-env my_package.my_envs:My/Env-v0             # does my environment work as a task family?
"""


def _train(args: argparse.Namespace) -> int:
    from metarl.config import load_config
    from metarl.tasks import ensure_registered
    from metarl.training import resume, train

    if (args.config is None) == (args.resume is None):
        raise ConfigError(["give a config file to start a run, or --resume RUN_DIR to continue one (not both)"])
    trusted = list(args.trust_module or [])
    if args.resume is not None:
        overrides = list(args.set or [])
        if args.iterations is not None:
            overrides.append(f"train.iterations={args.iterations}")
        ignored = [name for name in ("seed", "logdir", "run_name", "algo") if getattr(args, name) is not None]
        if args.overwrite:
            ignored.append("overwrite")
        if ignored:
            raise ConfigError([f"--{', --'.join(n.replace('_', '-') for n in ignored)} cannot change when resuming"])
        run_dir = resume(args.resume, overrides, progress=not args.no_progress, trust_modules=trusted)
        config = load_config(run_dir / "config.yaml")
        return _after_training(args, run_dir, config, trusted)

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    if args.logdir is not None:
        overrides.append(f"train.logdir={args.logdir}")
    if args.run_name is not None:
        overrides.append(f"train.run_name={args.run_name}")
    if args.algo is not None:
        overrides.append(f"train.algo={args.algo}")
    config = load_config(args.config, overrides)
    ensure_registered(config.env.id)
    run_dir = train(config, progress=not args.no_progress, overwrite=args.overwrite)
    # The user named this environment in their own config: evaluating it may import its module.
    return _after_training(args, run_dir, config, [*trusted, config.env.id])


def _after_training(args: argparse.Namespace, run_dir: Path, config: Any, trusted: list[str]) -> int:
    from metarl.evaluation import evaluate

    print(f"\nrun directory: {run_dir}")
    print(f"TensorBoard:   tensorboard --logdir {shlex.quote(str(run_dir.parent))}")
    if args.evaluate:
        print(f"\nevaluating on {config.evaluation.num_tasks} held-out tasks ...")
        _print_result(evaluate(run_dir, trust_modules=trusted, checkpoint=config.evaluation.checkpoint))
    else:
        trust = "".join(f" --trust-module {shlex.quote(m)}" for m in _modules_to_trust(config.env.id))
        print(f"evaluate with: metarl evaluate {shlex.quote(str(run_dir))}{trust}")
    return 0


def _modules_to_trust(env_id: str) -> list[str]:
    """The module a later ``metarl evaluate`` of a run must be told to trust (none for a registered id)."""
    return [env_id.split(":", 1)[0]] if ":" in env_id else []


def _evaluate(args: argparse.Namespace) -> int:
    from metarl.evaluation import evaluate

    result = evaluate(
        args.run,
        args.tasks,
        args.adapt_steps,
        args.episodes,
        args.seed,
        args.out,
        args.split,
        args.batch_unit,
        args.tasks_file,
        args.baselines,
        _baseline_lrs(args.baseline_lr or []),
        args.video,
        trust_modules=list(args.trust_module or []),
        checkpoint=args.checkpoint,
        overrides=args.set or [],
    )
    _print_result(result)
    return 0


def _baseline_lrs(entries: Sequence[str]) -> dict[str, float]:
    lrs, problems = {}, []
    for entry in entries:
        name, _, value = entry.partition("=")
        try:
            lrs[name] = float(value)
        except ValueError:
            problems.append(f"--baseline-lr {entry!r} must look like METHOD=STEP_SIZE, e.g. pretrained=0.2")
    if problems:
        raise ConfigError(problems)
    return lrs


def _print_result(result) -> None:
    from metarl.evaluation import SPLIT_WORDS

    p = result.protocol
    first = next(iter(p.get("methods", {}).values()), {})
    sizes = (
        f"learned step sizes, × {p['later_lr_scale']:g} after the first step"
        if first.get("lr") == "learned"
        else f"step size {p['lr']} then {p['lr'] * p['later_lr_scale']:g}"
    )
    print(
        f"\n{result.env_id}: mean return over {len(result.tasks)} "
        f"{SPLIT_WORDS[p['split']]} tasks (± 95% CI), "
        f"{p['episodes_per_task']} episodes per step, {sizes}\n"
    )
    print(result.table())
    for method, details in p.get("methods", {}).items():
        if "learned_lr" in details:  # Meta-SGD
            lr = details["learned_lr"]
            print(
                f"\n{method}: learned inner step sizes (Meta-SGD), mean {lr['mean']:.4g}, std {lr['std']:.3g}, "
                f"range [{lr['min']:.4g}, {lr['max']:.4g}] (then × {p['later_lr_scale']:g} after the first step)"
            )
    print(
        f"\nresults: {p['out_dir']} (eval.json, eval.csv"
        + (", eval.png)" if (Path(p["out_dir"]) / "eval.png").exists() else "; pip install matplotlib for eval.png)")
    )


def _task_distribution_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"## Task distribution\n(.*?)(\n## |\Z)", doc, re.S)
    return " ".join(match.group(1).replace("``", "").split()) if match else "(no task distribution documented)"


def _envs(args: argparse.Namespace) -> int:
    from gymnasium.envs.registration import registry

    from metarl.errors import EnvError
    from metarl.make import make_env
    from metarl.tasks import ensure_registered, horizon_of

    ensure_registered("MetaRL/Navigation2D-v0")
    for env_id in sorted(i for i in registry if i.startswith("MetaRL/")):
        print(f"{env_id}")
        try:
            env = make_env(env_id)
        except EnvError as error:  # e.g. an optional extra that is not installed
            print(f"  unavailable   {error.__cause__ or error}")
            continue
        print(f"  horizon       {horizon_of(env)}")
        print(f"  observation   {env.observation_space}")
        print(f"  action        {env.action_space}")
        print(f"  tasks         {_task_distribution_doc(type(env.unwrapped))}")
        env.close()
    return 0


def _check_env(args: argparse.Namespace) -> int:
    from metarl.check import check_task_distribution, format_report
    from metarl.config import load_config
    from metarl.make import make_env

    if args.env is None and args.config is None:
        print("metarl check-env: error: give an environment id or --config FILE", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(args.kwargs) if args.kwargs is not None else {}
    except json.JSONDecodeError as error:
        print(f"metarl check-env: error: --kwargs is not valid JSON ({error}): {args.kwargs}", file=sys.stderr)
        return 2
    if not isinstance(kwargs, dict):
        print(f"metarl check-env: error: --kwargs must be a JSON object, got {args.kwargs}", file=sys.stderr)
        return 2
    env_id, horizon, make = args.env, None, None
    if args.config is not None:
        config = load_config(args.config)
        env_id = env_id or config.env.id
        kwargs, horizon = {**config.env.kwargs, **kwargs}, config.env.horizon
        # A config's task space (where this metarl version has them) is applied the way training applies it.
        task_space = getattr(config.env, "task_space", None)
        if task_space is not None and "task_space" in inspect.signature(make_env).parameters:
            make = functools.partial(make_env, env_id, kwargs, horizon, task_space=task_space)
    print(f"metarl check-env: {env_id}" + (f" (env section of {args.config})" if args.config else "") + "\n")
    results = check_task_distribution(env_id, kwargs, horizon, make=make)
    print(format_report(results))
    if not results[0].passed:  # the environment could not be built: a usage error
        return 2
    return 0 if all(r.status == "pass" for r in results) else 1


def _import_from_working_directory() -> None:
    """Let ``module:Id`` env ids name modules under the current directory, as ``python -m metarl`` does.

    The installed ``metarl`` script does not put the current directory on ``sys.path``; appending it
    (after everything else) makes ``env.id: experiments.my_env:My/Env-v0`` work from the project root
    with both, and in worker processes, which inherit ``sys.path``.
    """
    cwd = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.append(cwd)


def build_parser() -> argparse.ArgumentParser:
    from metarl.config import RESUMABLE_OVERRIDES
    from metarl.registry import OUTER_ALGORITHMS

    parser = argparse.ArgumentParser(
        prog="metarl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    algorithms = "\n".join(
        f"  {name:<6} {textwrap.fill(spec.summary, 90, subsequent_indent=' ' * 9)}\n         ({spec.reference})"
        for name, spec in OUTER_ALGORITHMS.items()
    )
    train = commands.add_parser(
        "train",
        parents=[common],
        help="meta-train a policy from a YAML config",
        description="Meta-train a policy with MAML. Writes a run directory with "
        "config.yaml, TensorBoard events, metrics.jsonl and checkpoints/.",
        epilog=f"outer algorithms (--set outer.algo=NAME; default trpo):\n{algorithms}\n\n"
        "inner loop: --set inner.estimator=reinforce|lvc|dice (default: the algorithm's), "
        "--set inner.learn_lr=true (Meta-SGD: learned per-parameter step sizes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", nargs="?", help="YAML config, e.g. experiments/navigation_2d.yaml")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its newest checkpoint, exactly as if it had not stopped (its own "
        f"config; --iterations N extends a finished run; --set may change only {', '.join(RESUMABLE_OVERRIDES)})",
    )
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set inner.lr=0.05 (repeatable)",
    )
    train.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    train.add_argument("--iterations", type=int, help="shorthand for --set train.iterations=N")
    train.add_argument("--logdir", help="parent directory of runs (default: runs)")
    train.add_argument("--run-name", help="name of the run directory (default: <env>__seed<N>__<time>)")
    train.add_argument(
        "--algo",
        choices=["maml", "pretrain", "oracle"],
        help="maml (default): meta-train for adaptation. The MAML paper's baselines, with the same outer "
        "optimiser and env steps per iteration but no inner loop: pretrain, one policy for all tasks "
        "(multi-task policy gradient); oracle, a policy that also observes the task. Shorthand for "
        "--set train.algo=...",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="if the run directory (--run-name) exists, delete it and start again (default: refuse, and say how "
        "to resume it)",
    )
    train.add_argument(
        "--trust-module",
        action="append",
        metavar="MODULE",
        help="with --resume: let the run's env.id import MODULE (for env ids of the form 'module:Name'). A run "
        "directory is data and may come from elsewhere, so metarl imports no module it names unless told to; "
        "registered Gymnasium ids need nothing (repeatable)",
    )
    train.add_argument("--evaluate", action="store_true", help="evaluate on the held-out tasks after training")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="adaptation curve of a trained policy on held-out tasks",
        description="Adapt a trained policy on held-out tasks for K steps and "
        "report the mean return after 0..K steps with 95% confidence intervals.",
    )
    evaluate.add_argument("run", help="run directory or checkpoint file")
    evaluate.add_argument(
        "--checkpoint",
        choices=["newest", "best"],
        default="newest",
        help="for a run directory: its newest checkpoint (default), or best.pt (the θ with the highest "
        "post-adaptation return on training tasks)",
    )
    evaluate.add_argument("--tasks", type=int, help="number of held-out tasks (default: config, 40)")
    evaluate.add_argument("--adapt-steps", type=int, help="adaptation steps K (default: config, 3)")
    evaluate.add_argument("--episodes", type=int, help="episodes per task per step (default: config)")
    evaluate.add_argument("--seed", type=int, help="seed of the sampling noise (default: config)")
    evaluate.add_argument(
        "--set",
        action="append",
        metavar="evaluation.KEY=VALUE",
        help="override a setting of the evaluation protocol, e.g. --set evaluation.lr=0.5 --set "
        "evaluation.later_lr_scale=0.3 (repeatable; only evaluation.*: the rest belongs to the trained policy)",
    )
    evaluate.add_argument(
        "--split",
        choices=["test", "ood", "train"],
        default="test",
        help="test: held-out tasks (a benchmark's test list); ood: tasks outside the training distribution; "
        "train: training tasks (a benchmark's train list), for meta-train figures (default: test)",
    )
    evaluate.add_argument(
        "--batch-unit",
        choices=["episodes", "steps"],
        help="count each step's batch in episodes, or in steps of back-to-back episodes as the MAML "
        "paper (default: evaluation.batch_unit of the config)",
    )
    evaluate.add_argument(
        "--tasks-file",
        help="JSON or YAML list of tasks to evaluate on instead of a split "
        "(e.g. experiments/navigation_2d_paper_goals.json)",
    )
    evaluate.add_argument(
        "--baselines",
        nargs="*",
        metavar="METHOD",
        help="also evaluate these on the same tasks, through the same protocol: random (a freshly "
        "initialised policy, adapted the same way) and NAME=RUN for other runs of the same task family, "
        "e.g. pretrained=runs/nav_pretrain oracle=runs/nav_oracle fomaml=runs/nav_fomaml (an oracle run is "
        "evaluated without adaptation); default: the run's evaluation.baselines, none if given without methods",
    )
    evaluate.add_argument(
        "--baseline-lr",
        nargs="+",
        metavar="METHOD=LR",
        help="first adaptation step size for a method, e.g. pretrained=0.2 random=1.0 (default: the "
        "evaluation step size for all; the MAML paper tuned the baselines' own)",
    )
    evaluate.add_argument(
        "--video",
        type=int,
        default=0,
        metavar="N",
        help='record an episode before and after adaptation for N tasks (needs pip install "metarl[video]" '
        "and an environment that renders rgb_array frames; skipped with a message otherwise)",
    )
    evaluate.add_argument("--out", help="output directory (default: <run>/eval, or <run>/eval_ood)")
    evaluate.add_argument(
        "--trust-module",
        action="append",
        metavar="MODULE",
        help="let a checkpoint's env.id import MODULE (for env ids of the form 'module:Name', e.g. "
        "experiments.custom_env_example). A checkpoint is data and may come from elsewhere, so metarl imports no "
        "module it names unless told to; registered Gymnasium ids need nothing (repeatable)",
    )
    evaluate.set_defaults(func=_evaluate)

    envs = commands.add_parser("envs", parents=[common], help="list the task families and their task distributions")
    envs.set_defaults(func=_envs)

    check = commands.add_parser(
        "check-env",
        parents=[common],
        help="check that an environment works as a task distribution",
        description="Check an environment against metarl's task protocol and Gymnasium's API: it builds, "
        "samples tasks reproducibly from the caller's generator, its tasks round-trip through JSON, setting a "
        "task changes its behaviour and survives reset and pickling, and the task is not in the observation. "
        "Prints PASS/FAIL per check with the fix; exit status 0 when all pass, 1 when one fails, 2 when the "
        "environment cannot be built.",
    )
    check.add_argument(
        "env",
        nargs="?",
        help="Gymnasium id (MetaRL/Navigation2D-v0), 'module:Id' (importing module registers Id), or an entry "
        "point 'package.module:EnvClass' (default: env.id of --config)",
    )
    check.add_argument(
        "--config", help="take env.id, env.kwargs, env.horizon and env.task_space from this metarl YAML config"
    )
    check.add_argument(
        "--kwargs", metavar="JSON", help="constructor arguments as a JSON object, e.g. '{\"goal_high\": 1.0}'"
    )
    check.set_defaults(func=_check_env)
    return parser


def _short_warning(command: str, default: Callable[..., None]) -> Callable[..., None]:
    """metarl's own warnings as one line, ``metarl train: warning: ...``; others as Python shows them."""
    package = Path(__file__).resolve().parent

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any) -> None:
        if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(package):
            print(f"metarl {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, *args)

    return show


# What each command loads before it starts; torch and MuJoCo initialise C++ code that a Ctrl-C
# cannot interrupt cleanly (seen: "terminate called after throwing ... KeyboardInterrupt", an abort).
_START_UP_IMPORTS = {
    "train": ("torch", "mujoco", "metarl.training", "metarl.evaluation"),
    "evaluate": ("torch", "mujoco", "metarl.evaluation"),
    "envs": ("torch", "mujoco", "metarl.tasks"),
    "check-env": ("torch", "mujoco", "metarl.check"),
}


def _imports_before_interrupts(modules: Sequence[str]) -> None:
    """Import `modules` with Ctrl-C held back until they are loaded, then act on it (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        for module in modules:
            importlib.import_module(module)
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    _import_from_working_directory()
    try:
        _imports_before_interrupts(_START_UP_IMPORTS[args.command])
        with warnings.catch_warnings():
            warnings.showwarning = _short_warning(args.command, warnings.showwarning)
            return args.func(args)
    except MetarlError as error:
        if args.debug:
            if getattr(error, "details", ""):  # e.g. the tracebacks of worker processes
                print(error.details, file=sys.stderr)
            raise
        print(f"metarl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print("\ninterrupted" + (f" by {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return 143 if str(interrupt) == "SIGTERM" else 130


if __name__ == "__main__":
    sys.exit(main())
