"""The 2-worker sampler at ML1 sizes in three settings, each timed between two measurements of the
all-cores `env.step` limit (one process per core, one copy each), alternated over N rounds.

    python experiments/results/metaworld/sampler_variants.py experiments/metaworld_ml1_reach.yaml 5

- default: the training process steps one slice of the copies itself (env.step_in_parent), 40
  copies in all (env.max_copies, 20 per process);
- two workers: env.step_in_parent false, the training process only waits (20 copies per worker);
- max_copies 20: the default with 10 copies per process (twice as many rounds).

Each sampler run is `scripts/benchmark.py`'s (a fresh process, one meta-batch of 20 tasks x 10
episodes x 500 steps, the second call timed, peak memory with its workers); its ratio is to the
mean of the limits measured just before and just after it, so that a drift of the host's speed
within a round does not fall on one side. The order of the settings turns from round to round.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import benchmark  # noqa: E402  (scripts/benchmark.py)

from metarl.config import load_config  # noqa: E402

SETTINGS = {
    "default": ([], True),
    "two workers": ([], False),
    "max_copies 20": (["env.max_copies=20"], True),
}

if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "experiments/metaworld_ml1_reach.yaml"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    configs = {key: load_config(path, sets) for key, (sets, _) in SETTINGS.items()}
    name = configs["default"].env.kwargs.get("env_name", configs["default"].env.id)
    limit_config = configs["default"]

    def limit() -> float:
        return benchmark.env_step_rates(limit_config, 10000)["env_step_all_cores"]

    ratios: dict[str, list[float]] = {key: [] for key in SETTINGS}
    memory: dict[str, list[float]] = {key: [] for key in SETTINGS}
    before = limit()
    for r in range(rounds):
        order = list(SETTINGS)[r % len(SETTINGS) :] + list(SETTINGS)[: r % len(SETTINGS)]
        for key in order:
            in_parent = SETTINGS[key][1]
            sample = benchmark.in_child_process(benchmark.sampler_rate, configs[key].to_dict(), 2, "local", in_parent)
            after = limit()
            ratio = sample["env_steps_per_s"] / ((before + after) / 2)
            ratios[key].append(ratio)
            memory[key].append(sample["total_peak_rss_mib"])
            print(
                f"round {r + 1} {key:<14} {sample['env_steps_per_s']:7,.0f} env steps/s between limits "
                f"{before:7,.0f} and {after:7,.0f}: {ratio:.2f}; {sample['total_peak_rss_mib']:,.0f} MiB",
                flush=True,
            )
            before = after
    for key in SETTINGS:
        each = " ".join(f"{x:.2f}" for x in ratios[key])
        print(
            f"{name} {key:<14} ratios {each}   median {np.median(ratios[key]):.2f}, "
            f"peak memory with the workers {np.median(memory[key]):,.0f} MiB"
        )
