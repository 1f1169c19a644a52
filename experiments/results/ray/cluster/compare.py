"""Compare the runs of run.sh: every logged number but timings and Ray's own counters."""

import json
import sys
from pathlib import Path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def learned(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(("time/", "sampler/"))}


out = Path(sys.argv[1])
pairs = [
    ("halfcheetah_vel_quick_ray", "halfcheetah_vel_quick_local"),
    ("ant_vel_ray", "ant_vel_local"),
    ("ant_vel_local_again", "ant_vel_local"),
]
for a, b in pairs:
    ma, mb = metrics(out / a), metrics(out / b)
    equal = len(ma) == len(mb) and all(learned(x) == learned(y) for x, y in zip(ma, mb, strict=True))
    print(f"{a} against {b}, {len(ma)} iterations: every logged number equal: {equal}")
    for x, y in zip(ma, mb, strict=False):
        overhead = (
            f"  Ray overhead (cumulative) {x['sampler/ray_overhead_s']:.3f} s" if "sampler/ray_overhead_s" in x else ""
        )
        print(
            f"  it {x['iteration']} post-adaptation return {x['returns/post_adaptation']:.6f} / "
            f"{y['returns/post_adaptation']:.6f}  s/it {x['time/iteration_s']:.2f} / {y['time/iteration_s']:.2f}"
            f"{overhead}"
        )
