"""Success rate per task class after 0..K adaptation steps, from a `metarl evaluate` result.

    python scripts/success_by_class.py RUN/eval/eval.json [--method maml]

For benchmarks whose tasks carry a class name (Meta-World ML10/ML45: ``env_name``): the mean over
each class's evaluated tasks of the per-task success rate, in the order the classes first appear.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def success_by_class(result: dict, method: str) -> dict[str, tuple[int, list[float]]]:
    """Class name → (number of tasks, mean success after 0, 1, …, K steps)."""
    per_task = result["per_task_metrics"]["success"][method]
    by_class: dict[str, list[list[float]]] = defaultdict(list)
    for task, success in zip(result["tasks"], per_task, strict=True):
        by_class[task["env_name"]].append(success)
    return {
        name: (len(rows), [sum(row[k] for row in rows) / len(rows) for k in range(len(rows[0]))])
        for name, rows in by_class.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_json", type=Path, help="eval.json written by metarl evaluate")
    parser.add_argument("--method", default="maml", help="which evaluated method (default: maml)")
    args = parser.parse_args()
    try:
        result = json.loads(args.eval_json.read_text())
    except (OSError, ValueError) as error:
        parser.error(f"cannot read {args.eval_json} ({error}): give the eval.json that metarl evaluate wrote")
    if not isinstance(result, dict) or "tasks" not in result:
        parser.error(f"{args.eval_json} is not an eval.json written by metarl evaluate (no 'tasks')")
    if "success" not in result.get("per_task_metrics", {}):
        parser.error(f"{args.eval_json} has no success rates (the family's steps report no info['success'])")
    if args.method not in result["per_task_metrics"]["success"]:
        methods = ", ".join(result["per_task_metrics"]["success"])
        parser.error(f"{args.eval_json} has no method {args.method!r}; it has: {methods}")
    table = success_by_class(result, args.method)
    steps = len(next(iter(table.values()))[1])
    print(f"{'task class':<28}{'tasks':>6}" + "".join(f"{f'{k} steps':>10}" for k in range(steps)))
    for name, (count, means) in table.items():
        print(f"{name:<28}{count:>6}" + "".join(f"{100 * m:>9.0f}%" for m in means))


if __name__ == "__main__":
    main()
