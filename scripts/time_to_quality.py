"""How long until a run adapts as well as a target? Evaluates every checkpoint of a training run.

    python scripts/time_to_quality.py RUN [RUN ...] --threshold -11.7 [--steps 1] [--out FILE.json]

Each run is trained with frequent checkpoints kept (``--set train.checkpoint_every=5 --set
train.keep_checkpoints=100``). Every ``iter_<N>.pt`` is evaluated with the run's own protocol on
its held-out tasks (``metarl.evaluate``, adaptation steps up to ``--steps``); the first iteration
whose return after ``--steps`` steps reaches ``--threshold`` is reported with the wall-clock
training time up to it (the sum of ``time/iteration_s`` and ``time/previous_log_s`` in
``metrics.jsonl``: sampling, outer steps, logging and checkpointing) and the env steps used.
Evaluation itself is not counted.

One checkpoint's return on a few dozen tasks is noisy (±2 over 40 navigation goals after one
step), and the more checkpoints are evaluated, the earlier one of them crosses the threshold by
chance. ``--window K`` also reports the first iteration whose trailing mean over the last K
checkpoints reaches it: a crossing that holds.

    python scripts/time_to_quality.py RUN --threshold -11.7 --window 5

``--plot FILE.png`` draws every run's return against training time, with the threshold. A JSON
file written by ``--out`` may stand in for run directories (its curves are not evaluated again).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from metarl.evaluation import evaluate


def training_seconds(run: Path) -> dict[int, float]:
    """Cumulative wall-clock training time after each iteration."""
    total, seconds = 0.0, {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        metrics = json.loads(line)
        total += metrics.get("time/iteration_s", 0.0) + metrics.get("time/previous_log_s", 0.0)
        seconds[metrics["iteration"]] = total
    return seconds


def env_steps(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {m["iteration"]: m.get("time/env_steps", 0.0) for m in lines}


def first_reaching(curve: list[dict], threshold: float, window: int = 1) -> dict | None:
    """The first point of `curve` whose return, averaged with the ``window - 1`` points before it,
    reaches `threshold` (``window=1``: its own return); None if none does."""
    for i in range(window - 1, len(curve)):
        if sum(p["return"] for p in curve[i - window + 1 : i + 1]) / window >= threshold:
            return curve[i]
    return None


def time_to_quality(run: Path, threshold: float, steps: int, stop_at_first: bool = False, window: int = 1) -> dict:
    """Return after `steps` steps of every checkpoint, the first that reaches `threshold`, and the
    first whose trailing mean over `window` checkpoints reaches it."""
    checkpoints = sorted((run / "checkpoints").glob("iter_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem)))
    seconds, used = training_seconds(run), env_steps(run)
    curve: list[dict] = []
    for checkpoint in checkpoints:
        iteration = int(re.sub(r"\D", "", checkpoint.stem))
        with tempfile.TemporaryDirectory() as out:
            result = evaluate(checkpoint, adapt_steps=steps, out_dir=out)
        mean = result.summary()[next(iter(result.returns))][steps][0]
        point = {"iteration": iteration, "return": mean, "seconds": seconds[iteration], "env_steps": used[iteration]}
        curve.append(point)
        print(f"  {run.name} iteration {iteration:4d}: {mean:8.2f} after {steps} step(s), {point['seconds']:7.1f} s")
        if stop_at_first and first_reaching(curve, threshold, window) is not None:
            break
    return summary({"run": str(run), "steps": steps, "curve": curve}, threshold, window)


def summary(result: dict, threshold: float, window: int) -> dict:
    """`result` (a run's curve) with its first checkpoint at `threshold` and its first trailing mean there."""
    return {
        **result,
        "threshold": threshold,
        "reached": first_reaching(result["curve"], threshold),
        "window": window,
        "reached_window": first_reaching(result["curve"], threshold, window),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run directories with iter_*.pt checkpoints (or JSON files from --out)"
    )
    parser.add_argument("--threshold", type=float, required=True, help="return to reach, e.g. -11.7")
    parser.add_argument("--steps", type=int, default=1, help="adaptation steps after which the return counts")
    parser.add_argument(
        "--stop-at-first",
        action="store_true",
        help="evaluate no checkpoint after the first that reaches it (its window's mean, with --window)",
    )
    parser.add_argument(
        "--window", type=int, default=1, help="also report the first trailing mean of this many checkpoints to reach it"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="draw the returns against training time into this PNG")
    args = parser.parse_args()
    if args.window < 1:
        parser.error(f"--window must be at least 1, got {args.window}")
    results = []
    for source in args.runs:
        try:
            results += _load(source, args)
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(
                f"cannot read {source} ({error}): give a run directory with metrics.jsonl and checkpoints/, "
                "or a JSON file written by --out"
            )
    print(f"\nfirst checkpoint with a return >= {args.threshold} after {args.steps} step(s):")
    for r in results:
        print(f"  {Path(r['run']).name}: {_where(r['reached'])}")
    if args.window > 1:
        print(f"first trailing mean of {args.window} checkpoints >= {args.threshold}:")
        for r in results:
            print(f"  {Path(r['run']).name}: {_where(r['reached_window'])}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"written to {args.out}")
    if args.plot:
        plot(results, args.threshold, args.plot)
        print(f"plotted to {args.plot}")


def plot(results: list[dict], threshold: float, path: Path) -> None:
    """Each run's return after the steps against its training time, and the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for r in results:
        curve = r["curve"]
        axes.plot([p["seconds"] for p in curve], [p["return"] for p in curve], label=Path(r["run"]).name, lw=1.2)
    axes.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    axes.set_xlabel("training time (s)")
    axes.set_ylabel(f"return after {results[0]['steps']} step(s), held-out tasks")
    low = min(threshold, *(p["return"] for r in results for p in r["curve"][len(r["curve"]) // 5 :]))
    axes.set_ylim(low - 1, max(p["return"] for r in results for p in r["curve"]) + 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def _load(source: Path, args: argparse.Namespace) -> list[dict]:
    """A run directory's result (evaluating its checkpoints), or the results of a JSON file from ``--out``."""
    if source.suffix == ".json":
        return [summary(result, args.threshold, args.window) for result in json.loads(source.read_text())]
    return [time_to_quality(source, args.threshold, args.steps, args.stop_at_first, args.window)]


def _where(point: dict | None) -> str:
    if point is None:
        return "not reached"
    return f"iteration {point['iteration']}, {point['seconds']:.1f} s of training, {point['env_steps']:,.0f} env steps"


if __name__ == "__main__":
    main()
