#!/usr/bin/env bash
# Re-run the recorded 2D-navigation result (experiments/results/navigation_2d/): meta-train with the
# paper config, evaluate on the 40 held-out goals (and on 200 goals, and on the paper's own 40 goals),
# and plot the training curves.
#   bash scripts/reproduce_navigation.sh [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-0}"
run="navigation_2d__seed${seed}"
[ -x .venv/bin/metarl ] || { python3 -m venv .venv && .venv/bin/pip install -e ".[plot]"; }
.venv/bin/metarl train experiments/navigation_2d.yaml --seed "$seed" --run-name "$run" --evaluate
.venv/bin/python scripts/plot_training.py "runs/$run" --out "runs/$run/training.png"
.venv/bin/metarl evaluate "runs/$run" --tasks 200 --out "runs/$run/200_tasks"
.venv/bin/metarl evaluate "runs/$run" --tasks-file experiments/navigation_2d_paper_goals.json --out "runs/$run/paper_goals"
