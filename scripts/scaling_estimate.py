"""Meta-iteration time on a Ray cluster of N machines like this one, from measured parts.

    python scripts/scaling_estimate.py experiments/results/ray/benchmark_ant_vel.json \\
        experiments/results/ray/benchmark_metaworld_ml10.json --nodes 1 4 16

Each input is a ``benchmark.py --backends`` result measured on this machine: the Ray run's
per-iteration phases, its env steps and Ray's overhead per iteration. For ``N`` nodes of ``cores``
CPUs (one actor per CPU), a sampling call takes the slowest actor's share of whole tasks at the
measured per-actor rate, plus the measured Ray overhead per call; the learner's phases
(advantages, inner adaptation, outer step, logging) stay as measured, since one learner computes
them whatever the cluster:

    iteration(N) = calls × (ceil(B / A) × E × steps per episode / actor rate + overhead per call) + learner
    A = N × cores

An estimate, not a measurement: it assumes actors on other machines run at this machine's rate and
that Ray's per-call overhead does not grow with the number of actors.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

LEARNER = ("advantages_s", "adapt_s", "outer_s", "log_s")


def parts_of(path: Path) -> dict[str, Any]:
    """Per-actor rate, Ray overhead per call, learner seconds and sizes of one measured run."""
    data = json.loads(path.read_text())
    ray = data["backends"]["ray"]["median"]
    config = data["config_sizes"]
    overhead = data["ray_per_iteration"]["ray_overhead_s"]
    calls = config["calls"]
    busy_per_call = (ray["sample_s"] - overhead) / calls
    steps_per_call = ray["env_steps"] / calls
    return {
        "name": data["config"],
        "actor_steps_per_s": steps_per_call / data["cores"] / busy_per_call,
        "overhead_per_call_s": overhead / calls,
        "learner_s": {phase: ray.get(phase, 0.0) for phase in LEARNER},
        "steps_per_episode": steps_per_call / (config["tasks"] * config["episodes"]),
        **config,
    }


def estimate(parts: dict[str, Any], nodes: int, cores: int) -> dict[str, float]:
    actors = nodes * cores
    tasks_per_actor = math.ceil(parts["tasks"] / actors)
    call_s = tasks_per_actor * parts["episodes"] * parts["steps_per_episode"] / parts["actor_steps_per_s"]
    sampling = parts["calls"] * (call_s + parts["overhead_per_call_s"])
    learner = sum(parts["learner_s"].values())
    return {
        "nodes": nodes,
        "actors": actors,
        "sampling_s": sampling,
        "learner_s": learner,
        "iteration_s": sampling + learner,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measurements", nargs="+", type=Path, help="results of benchmark.py --backends")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--cores", type=int, default=2, help="CPUs per node (this machine: 2)")
    parser.add_argument("--out", type=Path, help="write the estimates as JSON here")
    args = parser.parse_args()
    results = []
    print(f"meta-iteration on N nodes of {args.cores} CPUs, one Ray actor per CPU (estimate from measured parts)")
    print(
        "| config | per-actor env steps/s | Ray overhead per call | learner | "
        + " | ".join(f"{n} node{'s' if n > 1 else ''}" for n in args.nodes)
        + " |"
    )
    print("| --- " * (4 + len(args.nodes)) + "|")
    for path in args.measurements:
        parts = parts_of(path)
        rows = [estimate(parts, n, args.cores) for n in args.nodes]
        results.append({"parts": parts, "estimates": rows})
        cells = " | ".join(f"{r['iteration_s']:.1f} s ({r['sampling_s']:.1f} sampling)" for r in rows)
        print(
            f"| {parts['name']} ({parts['tasks']} × {parts['episodes']} × {parts['steps_per_episode']:.0f}) | "
            f"{parts['actor_steps_per_s']:,.0f} | {parts['overhead_per_call_s']:.2f} s | "
            f"{sum(parts['learner_s'].values()):.1f} s | {cells} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
