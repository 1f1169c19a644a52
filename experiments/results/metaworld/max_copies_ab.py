"""The free-running sampler at ML1 sizes with `env.max_copies` 40 (Meta-World's default: 20 copies
per slice, 2 tasks a round) against 20 (10 per slice, 1 task a round), alternated N times, each
measurement in a fresh process (`scripts/benchmark.py`'s `sampler_rate`: the second of two calls
timed, peak memory of the process and its worker).

    python experiments/results/metaworld/max_copies_ab.py reach 4
"""

import sys
from pathlib import Path

import numpy as np

from metarl.config import load_config

root = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(root / "scripts"))  # importable by name: the spawned children unpickle its functions
import benchmark  # noqa: E402

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    results: dict[int, list[dict]] = {40: [], 20: []}
    for repeat in range(repeats):
        for copies in (40, 20) if repeat % 2 == 0 else (20, 40):
            config = load_config(root / f"experiments/metaworld_ml1_{name}.yaml", [f"env.max_copies={copies}"])
            results[copies].append(benchmark.in_child_process(benchmark.sampler_rate, config.to_dict(), 2))
    for copies, runs in results.items():
        rates = [run["env_steps_per_s"] for run in runs]
        memory = [run["total_peak_rss_mib"] for run in runs]
        print(
            f"{name} env.max_copies={copies}: " + " ".join(f"{r:,.0f}" for r in rates) + f" env steps/s, median "
            f"{np.median(rates):,.0f}; peak memory with the worker {np.median(memory):,.0f} MiB"
        )
