"""The sampler's env steps/s on one ML1 meta-batch in three modes, alternated, next to the
all-cores ``env.step`` limit measured between them (run alone on the host).

    python experiments/results/metaworld/free_running/alternate.py reach-v3 3

Modes: free-running slices with the training process stepping one (``env.free_running: true``,
the default), free-running slices in two worker processes (``env.step_in_parent: false``), and
the lockstep of before (``env.free_running: false``).
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "scripts"))

import benchmark  # noqa: E402

from metarl.config import load_config  # noqa: E402

MODES = {
    "free, parent steps a slice": (True, True),
    "free, 2 worker processes": (False, True),
    "lockstep": (True, False),
}

if __name__ == "__main__":
    task, repeats = (sys.argv[1] if len(sys.argv) > 1 else "reach-v3"), int(sys.argv[2]) if len(sys.argv) > 2 else 3
    config = load_config(f"experiments/metaworld_ml1_{task.removesuffix('-v3')}.yaml", [])
    rates: dict[str, list[float]] = {name: [] for name in [*MODES, "limit"]}
    memory: dict[str, list[float]] = {name: [] for name in MODES}
    copies = benchmark.copies_per_worker(config)
    for repeat in range(repeats):
        limit = benchmark.env_step_rates(config, 6000, copies)[f"env_step_all_cores_{copies}_copies_each"]
        rates["limit"].append(limit)
        for name, (in_parent, free) in MODES.items():
            result = benchmark.in_child_process(
                benchmark.sampler_rate, config.to_dict(), benchmark.CORES, "local", in_parent, free
            )
            rates[name].append(result["env_steps_per_s"])
            memory[name].append(result["total_peak_rss_mib"])
            print(
                f"{task} round {repeat}: {name:<28} {result['env_steps_per_s']:7,.0f} env steps/s "
                f"({result['env_steps_per_s'] / limit:.2f} x the limit {limit:,.0f}), "
                f"{result['total_peak_rss_mib']:,.0f} MiB",
                flush=True,
            )
    limit = statistics.median(rates["limit"])
    print(f"\n{task}, medians of {repeats}: all-cores env.step with {copies} copies each {limit:,.0f} env steps/s")
    for name in MODES:
        rate = statistics.median(rates[name])
        print(f"  {name:<28} {rate:7,.0f}  {rate / limit:.2f} x   peak {max(memory[name]):,.0f} MiB")
