"""Plot the return curves of one or more runs from their metrics.jsonl.

python scripts/plot_training.py runs/<run> [runs/<other> ...] --out training.png
python scripts/plot_training.py trpo=runs/nav_trpo_s0 trpo=runs/nav_trpo_s1 promp=runs/nav_promp_s0 \\
    --against env_steps wall_clock --post-only --out curves.png

Runs given as ``LABEL=RUN`` share a colour per label (several seeds of one algorithm). ``--against``
picks the x-axes, one panel each: ``iteration``, ``env_steps`` (cumulative environment steps) or
``wall_clock`` (cumulative training seconds: iterations, logging and checkpointing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AXES = {
    "iteration": "meta-iteration",
    "env_steps": "environment steps",
    "wall_clock": "training time (s, 2 CPU cores)",
}


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def x_values(metrics: list[dict[str, float]], axis: str) -> list[float]:
    if axis == "iteration":
        return [m["iteration"] for m in metrics]
    if axis == "env_steps":
        return [m.get("time/env_steps", 0.0) for m in metrics]
    total, values = 0.0, []
    for m in metrics:
        total += m.get("time/iteration_s", 0.0) + m.get("time/previous_log_s", 0.0)
        values.append(total)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, or LABEL=RUN")
    parser.add_argument("--out", type=Path, default=Path("training.png"))
    parser.add_argument(
        "--against", nargs="+", choices=list(AXES), default=["iteration"], help="x-axes, one panel each"
    )
    parser.add_argument("--post-only", action="store_true", help="plot only the post-adaptation return")
    args = parser.parse_args()

    labelled = [
        (entry.partition("=")[0], Path(entry.partition("=")[2])) if "=" in entry else (None, Path(entry))
        for entry in args.runs
    ]
    colours: dict[str, str] = {}
    fig, panels = plt.subplots(1, len(args.against), figsize=(6 * len(args.against), 3.8), squeeze=False)
    for panel, axis in zip(panels[0], args.against, strict=True):
        shown = set()
        for label, run_dir in labelled:
            metrics = read_metrics(run_dir)
            x = x_values(metrics, axis)
            name = label or (run_dir.name if len(labelled) > 1 else "")
            series = [("post-adaptation", "returns/post_adaptation", "-")]
            if not args.post_only:
                series.insert(0, ("pre-adaptation", "returns/pre_adaptation", ":"))
            for kind, key, style in series:
                key_label = f"{name} {kind}".strip() if not args.post_only else name or kind
                colour = colours.setdefault(key_label, f"C{len(colours)}")
                panel.plot(
                    x,
                    [m[key] for m in metrics],
                    style,
                    color=colour,
                    linewidth=1.2,
                    label=key_label if key_label not in shown else None,
                )
                shown.add(key_label)
        panel.set_xlabel(AXES[axis])
        panel.set_ylabel("mean episode return (training tasks)")
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
