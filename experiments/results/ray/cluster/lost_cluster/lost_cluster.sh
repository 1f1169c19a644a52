set -x
export RAY_AUTH_MODE=token
R=/work/main/.venv/bin
$R/ray start --head --port 6390 --num-cpus 1 --include-dashboard=false --disable-usage-stats > head.log 2>&1
date +%s.%N > t0
RAY_ADDRESS=127.0.0.1:6390 $R/metarl train /work/main/experiments/smoke.yaml --set env.backend=ray --set env.workers=1 --set train.num_threads=1 --iterations 100000 --set train.checkpoint_every=50 --logdir /tmp/lost/runs --run-name r --overwrite --no-progress > train.log 2>&1 &
P=$!
sleep 25
date +%s.%N > t1
$R/ray stop --force > stop.log 2>&1
wait $P; echo "rc=$?" >> train.log
date +%s.%N > t2
