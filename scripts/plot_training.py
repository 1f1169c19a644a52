"""Plot the pre- and post-adaptation return curves of one or more runs from their metrics.jsonl.

python scripts/plot_training.py runs/<run> [runs/<other> ...] --out training.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=Path("training.png"))
    args = parser.parse_args()

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for run_dir in args.runs:
        metrics = read_metrics(run_dir)
        iterations = [m["iteration"] for m in metrics]
        label = run_dir.name if len(args.runs) > 1 else ""
        ax.plot(iterations, [m["returns/pre_adaptation"] for m in metrics], label=f"{label} pre-adaptation".strip())
        ax.plot(iterations, [m["returns/post_adaptation"] for m in metrics], label=f"{label} post-adaptation".strip())
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean episode return (training tasks)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
