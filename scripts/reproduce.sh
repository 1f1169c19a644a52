#!/usr/bin/env bash
# Re-run a recorded comparison of MAML with the MAML paper's baselines on one task family:
#
#   bash scripts/reproduce.sh navigation_2d|halfcheetah_dir|halfcheetah_vel [SEED]
#
# Trains, with the family's config and the same seed: MAML, first-order MAML, the pretrained policy
# (`--algo pretrain`) and the oracle (`--algo oracle`). Then evaluates all of them, and a random
# initialisation, on the run's 40 held-out tasks through the same protocol, and plots the training
# curves. Everything lands in runs/reproduce_<family>_seed<SEED>/, with record.json saying which
# commands ran, on what machine, and how long each took. The recorded results are in
# experiments/results/<family>_baselines/.
set -euo pipefail
cd "$(dirname "$0")/.."
family="${1:?usage: bash scripts/reproduce.sh navigation_2d|halfcheetah_dir|halfcheetah_vel [SEED]}"
seed="${2:-0}"
# Every method is evaluated at the config's step sizes. The baselines are also evaluated at their
# own step sizes: the MAML paper's for the cheetahs (pretrained 0.2 and random 1.0 for HalfCheetahDir,
# 0.02 and 0.1 for HalfCheetahVel); for 2D navigation, the best of a sweep (experiments/results).
case "$family" in
  navigation_2d) config=experiments/navigation_2d.yaml; pretrained_lr=0.1; random_lr=1.0 ;;
  halfcheetah_dir) config=experiments/halfcheetah_dir_quick.yaml; pretrained_lr=0.2; random_lr=1.0 ;;
  halfcheetah_vel) config=experiments/halfcheetah_vel_quick.yaml; pretrained_lr=0.02; random_lr= ;;  # 0.1: the default
  *) echo "unknown family '$family'; choose navigation_2d, halfcheetah_dir or halfcheetah_vel" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -e ".[plot]"; }
metarl=(.venv/bin/python -m metarl)
out="runs/reproduce_${family}_seed${seed}"
mkdir -p "$out"
record="$out/record.tsv"
[ -f "$record" ] || printf 'name\tseconds\tcommand\n' > "$record"

timed() {  # timed NAME COMMAND...: run it, append its wall time to the record
  local name=$1 start
  shift
  start=$(date +%s.%N)
  "$@"
  printf '%s\t%.1f\t%s\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" "$*" >> "$record"
}

train_once() {  # train_once NAME ARGS...: a run that already finished is kept (delete it to retrain)
  local name=$1
  shift
  if [ -f "$out/$name/checkpoints/final.pt" ]; then echo "$out/$name: already trained"; return; fi
  timed "$name" "${metarl[@]}" train "$config" --seed "$seed" --logdir "$out" --no-progress --run-name "$name" "$@"
}
train_once maml
train_once fomaml --set inner.first_order=true
train_once pretrain --algo pretrain
train_once oracle --algo oracle
baselines=(random "pretrained=$out/pretrain" "oracle=$out/oracle" "fomaml=$out/fomaml" "pretrained($pretrained_lr)=$out/pretrain")
lrs=("pretrained($pretrained_lr)=$pretrained_lr")
if [ -n "$random_lr" ]; then baselines+=("random($random_lr)=random"); lrs+=("random($random_lr)=$random_lr"); fi
baselines+=(--baseline-lr "${lrs[@]}")
timed evaluate "${metarl[@]}" evaluate "$out/maml" --baselines "${baselines[@]}" --out "$out/eval"
if [ "$family" = navigation_2d ]; then
  timed evaluate_paper_goals "${metarl[@]}" evaluate "$out/maml" --baselines "${baselines[@]}" \
    --tasks-file experiments/navigation_2d_paper_goals.json --out "$out/eval_paper_goals"
fi
.venv/bin/python scripts/plot_training.py "$out/maml" "$out/fomaml" "$out/pretrain" "$out/oracle" \
  --out "$out/training.png"
{ uname -srm; nproc; grep -m1 'model name' /proc/cpuinfo || true; .venv/bin/python -c \
  'import torch, mujoco, gymnasium; print("torch", torch.__version__, "mujoco", mujoco.__version__, "gymnasium", gymnasium.__version__)'
} > "$out/machine.txt"
cat "$record"
echo "results: $out/eval (eval.json, eval.csv, eval.png), training curves: $out/training.png"
