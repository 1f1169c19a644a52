#!/usr/bin/env bash
# Ray backend against a real cluster: a head started by `ray start --head` (its own processes, not
# ray.init() in the driver), HalfCheetahVel quick and AntVel for 3 iterations with seed 0 on it,
# the same locally (AntVel twice), then every logged number compared (compare.py).
# Usage: bash experiments/results/ray/cluster/run.sh OUT_DIR; stop the head afterwards with `ray stop`.
set -euo pipefail
out=$1
mkdir -p "$out"
export RAY_AUTH_MODE=token  # ray start's token authentication; the driver sends the token with it
ray start --head --port 6379 --num-cpus 2 --include-dashboard=false --disable-usage-stats
ray status > "$out/ray_status.txt"
for config in halfcheetah_vel_quick ant_vel; do
    RAY_ADDRESS=127.0.0.1:6379 metarl train "experiments/$config.yaml" --set env.backend=ray --set env.workers=2 \
        --iterations 3 --logdir "$out" --run-name "${config}_ray" --no-progress > "$out/${config}_ray.log" 2>&1
    metarl train "experiments/$config.yaml" --iterations 3 --logdir "$out" --run-name "${config}_local" \
        --no-progress > "$out/${config}_local.log" 2>&1
done
metarl train experiments/ant_vel.yaml --iterations 3 --logdir "$out" --run-name ant_vel_local_again \
    --no-progress > "$out/ant_vel_local_again.log" 2>&1
python "$(dirname "$0")/compare.py" "$out" | tee "$out/summary.txt"
