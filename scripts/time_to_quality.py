"""How long until a run adapts as well as a target? Evaluates every checkpoint of a training run.

    python scripts/time_to_quality.py RUN [RUN ...] --threshold -11.7 [--steps 1] [--out FILE.json]

Each run is trained with frequent checkpoints kept (``--set train.checkpoint_every=5 --set
train.keep_checkpoints=100``). Every ``iter_<N>.pt`` is evaluated with the run's own protocol on
its held-out tasks (``metarl.evaluate``, adaptation steps up to ``--steps``); the first iteration
whose return after ``--steps`` steps reaches ``--threshold`` is reported with the wall-clock
training time up to it (the sum of ``time/iteration_s`` and ``time/previous_log_s`` in
``metrics.jsonl``: sampling, outer steps, logging and checkpointing) and the env steps used.
Evaluation itself is not counted.
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


def time_to_quality(run: Path, threshold: float, steps: int, stop_at_first: bool = False) -> dict:
    """Return after `steps` steps of every checkpoint, and the first that reaches `threshold`."""
    checkpoints = sorted((run / "checkpoints").glob("iter_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem)))
    seconds, used = training_seconds(run), env_steps(run)
    curve, reached = [], None
    for checkpoint in checkpoints:
        iteration = int(re.sub(r"\D", "", checkpoint.stem))
        with tempfile.TemporaryDirectory() as out:
            result = evaluate(checkpoint, adapt_steps=steps, out_dir=out)
        mean = result.summary()[next(iter(result.returns))][steps][0]
        point = {"iteration": iteration, "return": mean, "seconds": seconds[iteration], "env_steps": used[iteration]}
        curve.append(point)
        print(f"  {run.name} iteration {iteration:4d}: {mean:8.2f} after {steps} step(s), {point['seconds']:7.1f} s")
        if reached is None and mean >= threshold:
            reached = point
            if stop_at_first:
                break
    return {"run": str(run), "threshold": threshold, "steps": steps, "reached": reached, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with iter_*.pt checkpoints")
    parser.add_argument("--threshold", type=float, required=True, help="return to reach, e.g. -11.7")
    parser.add_argument("--steps", type=int, default=1, help="adaptation steps after which the return counts")
    parser.add_argument(
        "--stop-at-first", action="store_true", help="evaluate no checkpoint after the first that reaches it"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = [time_to_quality(run, args.threshold, args.steps, args.stop_at_first) for run in args.runs]
    print(f"\nfirst checkpoint with a return >= {args.threshold} after {args.steps} step(s):")
    for r in results:
        reached = r["reached"]
        where = (
            f"iteration {reached['iteration']}, {reached['seconds']:.1f} s of training, "
            f"{reached['env_steps']:,.0f} env steps"
            if reached
            else "not reached"
        )
        print(f"  {Path(r['run']).name}: {where}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
