"""The scripts under scripts/ run on the tiny config and write what their docstrings promise."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.yaml")


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_benchmark_measures_limits_sampler_phases_and_products(tmp_path):
    out = tmp_path / "bench.json"
    stdout = run_script(
        "benchmark.py", SMOKE, "--iterations", "2", "--env-steps", "300", "--rounds", "2", "--out", str(out)
    )
    result = json.loads(out.read_text())
    assert result["env"] == "MetaRL/Navigation2D-v0"
    rounds = result["alternated_rounds"]  # each sampler between two measurements of the limits, the middle one shared
    assert len(rounds) == 2 and rounds[1]["limits_before"] == rounds[0]["limits_after"]
    for r in rounds:
        around = (r["limits_before"]["env_step_all_cores"] + r["limits_after"]["env_step_all_cores"]) / 2
        assert r["sampler"] > 0 and r["env_step_all_cores"] == around > 0
    assert "before and after, 2 rounds" in stdout
    assert set(result["limits_env_steps_per_s"]) == {"env_step_1_process", "env_step_all_cores"}
    assert all(rate > 0 for rate in result["limits_env_steps_per_s"].values())
    for sample in result["sampler"].values():
        assert sample["env_steps"] == 3 * 4 * 20  # tasks x episodes x horizon of the smoke config
    median = result["meta_iteration"]["median"]
    assert median["env_steps"] == 2 * 3 * 4 * 20  # pre- and post-adaptation batches
    phases = sum(median[k] for k in ("sample_s", "advantages_s", "adapt_s", "outer_s", "log_s"))
    assert 0 < phases <= median["iteration_s"] * 1.001
    assert set(result["meta_iteration"]["curvature_product_s"]) == {"r_operator", "autograd", "r_operator_bfloat16"}
    assert result["matmul_gflops"]["matmul_gflops_float32"] > 0
    assert abs(sum(result["phase_shares"].values()) - 1) < 0.05
    assert "sampler / this" in stdout and "conjugate_gradient" in stdout


def test_curvature_estimates_compare_against_the_exact_solve(tmp_path):
    out = tmp_path / "estimates.json"
    run_script("curvature_estimates.py", SMOKE, "--iterations", "2", "--at", "1,2", "--out", str(out))
    iterations = json.loads(out.read_text())["iterations"]
    assert set(iterations) == {"1", "2"}
    for rows in iterations.values():
        assert set(rows) == {"exact", "bfloat16", "stride5", "bfloat16_stride5"}
        assert abs(rows["exact"]["efficiency"] - 1) < 1e-6 and abs(rows["exact"]["cosine"] - 1) < 1e-5
        for name in ("bfloat16", "stride5", "bfloat16_stride5"):
            assert 0 < rows[name]["efficiency"] < 1.2 and 0 < rows[name]["cosine"] < 1.0


def test_plot_training_draws_the_curves_of_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"iteration": i, "returns/pre_adaptation": -40.0 + i, "returns/post_adaptation": -30.0 + 2 * i}
        for i in range(1, 4)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "training.png"
    run_script("plot_training.py", str(run), "--out", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_side_by_side_times_one_run_and_two_at_once(tmp_path):
    out = tmp_path / "side_by_side.json"
    stdout = run_script("benchmark.py", SMOKE, "--side-by-side", "--iterations", "2", "--out", str(out))
    result = json.loads(out.read_text())
    for policy in ("PASSIVE", "ACTIVE"):
        runs = result["runs"][policy]
        assert runs["alone_s"] > 0 and len(runs["two_at_once_s"]) == 2
        assert runs["slowdown"] == [t / runs["alone_s"] for t in runs["two_at_once_s"]]
    assert "two at once" in stdout and "slowdown" in stdout


def test_benchmark_compares_outer_algorithms_side_by_side(tmp_path):
    out = tmp_path / "algorithms.json"
    stdout = run_script("benchmark.py", SMOKE, "--algorithms", "trpo,promp", "--iterations", "2", "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result["algorithms"]) == {"trpo", "promp"} and result["ratios_to_first"]["trpo"] == 1.0
    assert result["algorithms"]["trpo"]["median"]["conjugate_gradient_s"] > 0
    assert result["algorithms"]["promp"]["median"]["outer_s"] > 0
    assert "iteration / trpo" in stdout


def test_plot_training_draws_labelled_runs_against_env_steps_and_wall_clock(tmp_path):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        lines = [
            {
                "iteration": i,
                "returns/pre_adaptation": -40.0 + i,
                "returns/post_adaptation": -30.0 + 2 * i,
                "time/env_steps": 1000.0 * i,
                "time/iteration_s": 0.5,
                "time/previous_log_s": 0.01,
            }
            for i in range(1, 4)
        ]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        runs.append(f"{name}={run}")
    out = tmp_path / "curves.png"
    run_script("plot_training.py", *runs, "--against", "env_steps", "wall_clock", "--post-only", "--out", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_to_quality_finds_the_first_checkpoint_that_reaches_a_return(tmp_path):
    settings = ["train.checkpoint_every=1", "train.keep_checkpoints=10", "train.iterations=2", "train.num_threads=1"]
    args = [
        sys.executable,
        "-m",
        "metarl",
        "train",
        SMOKE,
        "--logdir",
        str(tmp_path),
        "--run-name",
        "r",
        "--no-progress",
    ]
    subprocess.run([*args, *(x for s in settings for x in ("--set", s))], check=True, capture_output=True, cwd=ROOT)
    out = tmp_path / "ttq.json"
    stdout = run_script("time_to_quality.py", str(tmp_path / "r"), "--threshold", "-1000", "--out", str(out))
    [result] = json.loads(out.read_text())
    assert [p["iteration"] for p in result["curve"]] == [1, 2]
    assert result["reached"]["iteration"] == 1 and result["reached"]["seconds"] > 0  # any return beats -1000
    assert "first checkpoint with a return >= -1000.0" in stdout


def test_time_to_quality_s_window_asks_for_a_crossing_that_holds():
    spec = importlib.util.spec_from_file_location("time_to_quality", ROOT / "scripts" / "time_to_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    returns = [-15.0, -11.0, -13.0, -12.0, -11.5, -11.0, -11.6]  # one lucky checkpoint, then a slow rise
    curve = [{"iteration": i + 1, "return": r} for i, r in enumerate(returns)]
    assert module.first_reaching(curve, -11.7)["iteration"] == 2
    assert module.first_reaching(curve, -11.7, window=3)["iteration"] == 6  # (-12 - 11.5 - 11) / 3 = -11.5
    assert module.first_reaching(curve, -11.7, window=3)["return"] == -11.0
    assert module.first_reaching(curve, -11.0, window=3) is None
    assert module.first_reaching(curve[:2], -20.0, window=3) is None  # fewer checkpoints than the window


def test_success_by_class_averages_each_class_s_tasks(tmp_path):
    result = {
        "tasks": [{"env_name": "door-close-v3"}, {"env_name": "reach-v3"}, {"env_name": "door-close-v3"}],
        "per_task_metrics": {"success": {"maml": [[0.0, 0.5], [0.2, 1.0], [0.4, 0.7]]}},
    }
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(result))
    lines = run_script("success_by_class.py", str(path)).splitlines()
    assert lines[1].split() == ["door-close-v3", "2", "20%", "60%"]  # (0 + 0.4) / 2, (0.5 + 0.7) / 2
    assert lines[2].split() == ["reach-v3", "1", "20%", "100%"]


def test_success_by_class_refuses_a_file_that_is_not_an_evaluation_in_one_line(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("garbage")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "scripts" / "success_by_class.py")
    result = subprocess.run([sys.executable, script, str(path)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot read {path}" in result.stderr and "metarl evaluate" in result.stderr


def test_benchmark_s_copies_limit_steps_as_many_copies_as_each_worker_holds():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    from metarl.config import load_config

    # ML1: 20 tasks x 10 episodes in rounds of 40 copies (4 tasks), split over one worker per core.
    ml1 = load_config(ROOT / "experiments" / "metaworld_ml1_reach.yaml")
    assert benchmark.copies_per_worker(ml1) == -(-40 // benchmark.CORES)
    assert benchmark.copies_per_worker(
        load_config(ROOT / "experiments" / "metaworld_ml1_reach.yaml", ["env.max_copies=20"])
    ) == -(-20 // benchmark.CORES)
    assert benchmark.copies_per_worker(load_config(SMOKE)) == 1  # 2D navigation: natively batched
    assert benchmark.env_step_rate("CartPole-v1", {}, 60, copies=3) > 0


def test_time_to_quality_rereads_its_json_and_plots_the_curves(tmp_path):
    curve = [{"iteration": i, "return": r, "seconds": 2.0 * i, "env_steps": 10.0 * i} for i, r in ((1, -14), (2, -11))]
    saved = tmp_path / "ttq.json"
    saved.write_text(json.dumps([{"run": "runs/a", "threshold": -12, "steps": 1, "curve": curve}]))
    out, png = tmp_path / "again.json", tmp_path / "ttq.png"
    stdout = run_script(
        "time_to_quality.py", str(saved), "--threshold", "-12.5", "--window", "2", "--out", str(out), "--plot", str(png)
    )
    [result] = json.loads(out.read_text())
    assert result["reached"]["iteration"] == 2 and result["reached_window"]["iteration"] == 2  # (-14 - 11) / 2 = -12.5
    assert "a: iteration 2, 4.0 s of training, 20 env steps" in stdout
    assert png.stat().st_size > 10_000


def test_time_to_quality_refuses_what_is_not_a_run_in_one_line(tmp_path):
    bad = tmp_path / "ttq.json"
    bad.write_text("garbage")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "scripts" / "time_to_quality.py")
    for source in (bad, tmp_path / "no_run"):
        result = subprocess.run(
            [sys.executable, script, str(source), "--threshold", "-1"], capture_output=True, text=True, env=env
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"cannot read {source}" in result.stderr and "a JSON file written by --out" in result.stderr
