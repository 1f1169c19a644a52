"""Seeded runs are identical, whatever the process did before: the torch thread count is the run's own.

Sums split into one chunk per thread (conjugate gradient's dot products, reductions over more than
32,768 numbers), so the thread count sets the last bits of TRPO's step. A run computes with
``train.num_threads`` (null: this machine's CPUs, recorded); evaluation with one thread.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metarl.config import load_config
from metarl.evaluation import evaluate
from metarl.threads import available_cpus
from metarl.training import train

ROOT = Path(__file__).resolve().parent.parent
# Large enough that torch parallelises its sums (100x100 policy, 10 tasks x 10 episodes x 100 steps).
SIZES = [
    "policy.hidden_sizes=[100,100]",
    "inner.episodes_per_task=10",
    "outer.tasks_per_batch=10",
    "env.horizon=100",
    "train.iterations=2",
    "train.num_threads=null",
    "evaluation.num_tasks=4",
    "evaluation.episodes_per_task=4",
    "evaluation.adapt_steps=1",
]


def _train(logdir: Path, name: str) -> Path:
    config = load_config(
        ROOT / "experiments" / "smoke.yaml", [*SIZES, f"train.logdir={logdir}", f"train.run_name={name}"]
    )
    return train(config, progress=False)


def _numbers(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not k.startswith("time/")} for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config trained twice in one process, after the caller set torch to 1, then 2 threads."""
    logdir = tmp_path_factory.mktemp("runs")
    before = torch.get_num_threads()
    trained = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        trained[threads] = _train(logdir, f"after_{threads}_threads")
        assert torch.get_num_threads() == threads  # the caller's setting is restored
    torch.set_num_threads(before)
    return trained


def test_a_run_does_not_depend_on_the_thread_count_the_process_had(runs):
    assert _numbers(runs[1]) == _numbers(runs[2])


def test_the_run_records_the_thread_count_it_computed_with(runs):
    config = yaml.safe_load((runs[1] / "config.yaml").read_text())
    assert config["train"]["num_threads"] == available_cpus()


def test_evaluation_gives_the_same_digits_in_any_process_state(runs, tmp_path):
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(evaluate(runs[1], out_dir=tmp_path / f"eval_{threads}").returns["maml"])
    np.testing.assert_array_equal(results[0], results[1])
