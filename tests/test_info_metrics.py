"""Success rates (and other info metrics), rounds of episodes on bounded copies, and fixed task lists."""

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import metarl
from metarl.check import check_task_distribution
from metarl.config import ConfigError, load_config
from metarl.evaluation import evaluate
from metarl.functional import parameters_of
from metarl.info_metrics import InfoMetrics
from metarl.make import make_env
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits

COUNTING = "test_info_metrics:CountingEnv"
LISTED = "test_info_metrics:ListedEnv"


@dataclasses.dataclass(frozen=True)
class CountingTask:
    hit: int  # the step (1-based) at which info["success"] is 1
    stop: int  # the step after which the episode terminates


class CountingEnv(gym.Env):
    """Reports ``success`` = 1 at step `hit` only, ``score`` = the step number; terminates after
    step `stop`. Rewards follow the action, so the policy's noise shows in them."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.task = CountingTask(2, 4)
        self.t = 0

    @property
    def task(self) -> CountingTask:
        return self._task

    @task.setter
    def task(self, task) -> None:
        self._task = task if isinstance(task, CountingTask) else CountingTask(**task)

    def sample_tasks(self, n, rng):
        return [CountingTask(int(h), int(s)) for h, s in zip(rng.integers(1, 8, n), rng.integers(1, 8, n), strict=True)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, self.np_random.normal()], np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"success": float(self.t == self.task.hit), "score": float(self.t)}
        observation = np.array([self.t, self.np_random.normal()], np.float32)
        return observation, float(action[0]), self.t >= self.task.stop, False, info


class ListedEnv(CountingEnv):
    """A family with fixed train and test lists, as a benchmark declares them."""

    TRAIN = [CountingTask(h, 5) for h in range(1, 6)]
    TEST = [CountingTask(h, 6) for h in range(1, 4)]

    def task_lists(self):
        return {"train": list(self.TRAIN), "test": list(self.TEST)}

    def sample_tasks(self, n, rng):
        return [self.TRAIN[i] for i in rng.choice(len(self.TRAIN), n)]


def test_info_metrics_fold_a_hand_made_info_sequence():
    metrics = InfoMetrics({"success": "any", "a": "mean", "b": "sum", "c": "max", "d": "last"}, num_envs=3)
    alive = np.array([True, True, True])
    steps = [
        # copy 2 does not report "a" at step 0 (Gymnasium's "_a" mask); copy 1's episode ends after step 1
        {"success": [0.0, 0.0, 1.0], "a": [1.0, 2.0, 9.0], "_a": [True, True, False], "b": [1, 2, 3], "c": [1, 5, 2]},
        {"success": [0.0, 1.0, 0.0], "a": [3.0, 4.0, 5.0], "b": [1, 2, 3], "c": [4, 0, 2], "d": [7, 8, 9]},
        {"success": [1.0, 1.0, 0.0], "a": [5.0, 6.0, 7.0], "b": [1, 2, 3], "c": [2, 9, 1], "d": [1, 2, 3]},
    ]
    for t, infos in enumerate(steps):
        metrics.add(infos, alive.copy())
        if t == 1:
            alive[1] = False
    result = metrics.result()
    assert result["success"].tolist() == [1.0, 1.0, 1.0]
    assert result["a"].tolist() == [3.0, 3.0, 6.0]
    assert result["b"].tolist() == [3.0, 4.0, 9.0]
    assert result["c"].tolist() == [4.0, 5.0, 2.0]
    assert result["d"].tolist() == [1.0, 8.0, 3.0]
    assert set(InfoMetrics({"missing": "any"}, 2).result()) == set()


def test_info_metrics_make_room_for_more_steps_than_announced():
    rng = np.random.default_rng(0)
    steps = [{"x": rng.integers(0, 3, 4).astype(float), "_x": rng.random(4) < 0.7} for _ in range(11)]
    alive = [rng.random(4) < 0.8 for _ in range(11)]
    for how in ("any", "mean", "sum", "max", "last"):
        small, large = InfoMetrics({"x": how}, 4, steps=2), InfoMetrics({"x": how}, 4, steps=64)
        for infos, live in zip(steps, alive, strict=True):
            small.add(infos, live)
            large.add(infos, live)
        np.testing.assert_array_equal(small.result()["x"], large.result()["x"])
        for copy in range(4):  # against the definition, copy by copy
            pairs = zip(steps, alive, strict=True)
            seen = [infos["x"][copy] for infos, live in pairs if live[copy] and infos["_x"][copy]]
            fold = {"any": lambda v: float(any(v)), "mean": np.mean, "sum": sum, "max": max, "last": lambda v: v[-1]}
            expected = fold[how](seen) if seen else np.nan
            np.testing.assert_allclose(small.result()["x"][copy], expected, rtol=1e-12)


def sampler_for(env_id, **kwargs):
    kwargs = {"horizon": 6, "seed": 3, **kwargs}
    return Sampler(env_id, episodes_per_task=3, info_metrics={"success": "any", "score": "mean"}, **kwargs)


def test_sampled_episodes_carry_success_and_scores_as_the_steps_reported_them():
    tasks = [CountingTask(2, 4), CountingTask(5, 3), CountingTask(6, 9), CountingTask(1, 1)]
    sampler = sampler_for(COUNTING)
    policy = GaussianMLPPolicy(2, 1, [8])
    episodes = sampler.sample(policy, parameters_of(policy), tasks)
    lengths = [min(t.stop, 6) for t in tasks]  # horizon 6
    expected_success = [float(t.hit <= n) for t, n in zip(tasks, lengths, strict=True)]
    assert episodes.metrics["success"].tolist() == [[s] * 3 for s in expected_success]
    assert episodes.metrics["score"].tolist() == [[(n + 1) / 2] * 3 for n in lengths]
    assert episodes.mean_metrics["success"].tolist() == expected_success
    sampler.close()


def test_worker_processes_send_the_infos_back():
    tasks = [CountingTask(2, 4), CountingTask(5, 3), CountingTask(1, 6)]
    policy = GaussianMLPPolicy(2, 1, [8])
    results = []
    for workers in (None, 2):
        sampler = sampler_for(COUNTING, workers=workers)
        torch.manual_seed(0)
        results.append(sampler.sample(policy, parameters_of(policy), tasks))
        sampler.close()
    for name in ("success", "score"):
        assert torch.equal(results[0].metrics[name], results[1].metrics[name])
    assert torch.equal(results[0].rewards, results[1].rewards)


@pytest.mark.parametrize("env_id,max_copies", [(COUNTING, 6), (COUNTING, 7), ("MetaRL/Navigation2D-v0", 3)])
def test_rounds_on_bounded_copies_give_the_episodes_of_all_copies_at_once(env_id, max_copies):
    # Episodes of different lengths (COUNTING stops after 4, 2, 6, 1, 3 steps) and a last round that is not full.
    tasks = [CountingTask(2, s) for s in (4, 2, 6, 1, 3)]
    if env_id != COUNTING:
        tasks = make_env(env_id).unwrapped.sample_tasks(5, np.random.default_rng(0))
    runs = []
    for copies in (None, max_copies):
        sampler = Sampler(env_id, episodes_per_task=3, horizon=6, seed=5, max_copies=copies)
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(sampler.observation_space.shape[0], sampler.action_space.shape[0], [8])
        torch.manual_seed(1)
        episodes = sampler.sample(policy, parameters_of(policy), tasks)
        most_copies = max(envs.num_envs for envs in sampler._vector_envs.values())
        runs.append((episodes, torch.randn(3), most_copies))
        sampler.close()
    (full, after_full, copies_full), (rounds, after_rounds, copies_rounds) = runs
    assert copies_full == 15 and copies_rounds == (max_copies // 3) * 3
    assert torch.equal(full.mask, rounds.mask)
    for field in ("observations", "actions", "rewards", "log_probs"):
        a, b = getattr(full, field), getattr(rounds, field)
        mask = full.mask.reshape(*full.mask.shape, *([1] * (a.dim() - 3)))
        assert torch.equal(a * mask, b * mask), field
    assert torch.equal(after_full, after_rounds)  # torch's generator ends where the all-copies run's does


def train_run(tmp_path, name, *overrides):
    config = load_config(
        "experiments/smoke.yaml",
        [f"train.logdir={tmp_path}", f"train.run_name={name}", "train.iterations=2", *overrides],
    )
    run_dir = metarl.train(config, progress=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, [{k: v for k, v in m.items() if not k.startswith("time/")} for m in lines]


def test_training_with_rounds_of_copies_is_the_same_run(tmp_path):
    _, all_at_once = train_run(tmp_path, "all")
    _, in_rounds = train_run(tmp_path, "rounds", "env.max_copies=10")
    assert all_at_once == in_rounds


def test_training_logs_success_and_evaluation_reports_it_with_cis(tmp_path):
    run_dir, metrics = train_run(
        tmp_path,
        "counting",
        f"env.id={COUNTING}",
        "env.horizon=6",
        "env.info_metrics={success: any, score: max}",
        "evaluation.num_tasks=4",
        "evaluation.episodes_per_task=3",
    )
    assert {"success/pre_adaptation", "success/post_adaptation", "score/post_adaptation"} <= set(metrics[0])
    assert all(0.0 <= m["success/pre_adaptation"] <= 1.0 for m in metrics)
    result = evaluate(run_dir, trust_modules=["test_info_metrics"], adapt_steps=1)
    data = json.loads((run_dir / "eval" / "eval.json").read_text())
    record = data["summary"]["maml"][1]
    assert {"mean", "ci95", "success", "success_ci95", "score", "score_ci95"} <= set(record)
    # Each task's success rate is the share of its episodes that reached info["success"] = 1 at some step.
    tasks = [CountingTask(**t) for t in data["tasks"]]
    expected = [float(t.hit <= min(t.stop, 6)) for t in tasks]
    assert [row[0] for row in data["per_task_metrics"]["success"]["maml"]] == expected
    assert record["success"] == pytest.approx(np.mean(expected))
    assert set(data["gain_over_step_0"]) == {"return", "success", "score"}
    assert "success rate (± 95% CI):" in result.table()
    header = (run_dir / "eval" / "eval.csv").read_text().splitlines()[0]
    assert header == "method,task_index,task,step,return,score,success"


def test_too_few_copies_for_one_task_is_refused():
    with pytest.raises(ConfigError, match="env.max_copies"):
        load_config("experiments/smoke.yaml", ["env.max_copies=2"])


# ---- fixed task lists -------------------------------------------------------------------------


def test_a_family_with_fixed_lists_trains_on_its_train_list_and_holds_out_its_test_list():
    env = ListedEnv()
    splits = TaskSplits(env, train_seed=0, test_seed=1, num_test=40)
    assert splits.test == ListedEnv.TEST  # the whole test list, however many are asked for
    batches = [splits.sample_train(4) for _ in range(20)]
    assert all(len(set(batch)) == 4 for batch in batches)  # distinct within a meta-batch
    assert {t for batch in batches for t in batch} == set(ListedEnv.TRAIN)  # every training task is used
    assert len(splits.sample_train(8)) == 8  # more than the list: with replacement
    subset = TaskSplits(env, train_seed=0, test_seed=1, num_test=2).test
    assert len(subset) == 2 and set(subset) < set(ListedEnv.TEST)
    assert set(splits.evaluation_tasks("train", 3)) <= set(ListedEnv.TRAIN)


def test_holding_out_a_large_share_of_a_finite_distribution_warns():
    class FewGoals(CountingEnv):
        def sample_tasks(self, n, rng):
            return [CountingTask(int(h), 3) for h in rng.integers(1, 11, n)]  # 10 distinct tasks

    with pytest.warns(UserWarning, match=r"held-out tasks are \d of the 10 distinct tasks"):
        TaskSplits(FewGoals(), train_seed=0, test_seed=1, num_test=4).sample_train(2)


def test_check_env_checks_the_fixed_lists():
    results = {r.name: r for r in check_task_distribution(LISTED, horizon=6)}
    assert results["task_lists"].status == "pass"
    assert "5 train, 3 test tasks" in results["task_lists"].message
    ListedEnv.TEST.append(ListedEnv.TRAIN[0])
    try:
        results = {r.name: r for r in check_task_distribution(LISTED, horizon=6)}
    finally:
        ListedEnv.TEST.pop()
    assert (
        results["task_lists"].status == "fail" and "both the train and the test list" in results["task_lists"].message
    )


def test_training_never_samples_a_test_task_of_a_fixed_list(tmp_path):
    run_dir, _ = train_run(tmp_path, "listed", f"env.id={LISTED}", "env.horizon=6", "train.iterations=3")
    trained = {
        json.dumps(t, sort_keys=True)
        for line in (run_dir / "tasks.jsonl").read_text().splitlines()
        for t in json.loads(line)["tasks"]
    }
    held_out = {json.dumps(t, sort_keys=True) for t in json.loads((run_dir / "test_tasks.json").read_text())}
    assert trained <= {json.dumps(dataclasses.asdict(t), sort_keys=True) for t in ListedEnv.TRAIN}
    assert held_out == {json.dumps(dataclasses.asdict(t), sort_keys=True) for t in ListedEnv.TEST}


def test_a_smaller_call_reuses_the_bounded_vector_env_with_the_same_episodes():
    tasks = [CountingTask(2, s) for s in (4, 2, 6, 1, 3)]
    results = []
    for copies in (None, 6):
        sampler = Sampler(COUNTING, episodes_per_task=3, horizon=6, seed=5, max_copies=copies)
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(2, 1, [8])
        sampler.sample(policy, parameters_of(policy), tasks)
        built = list(sampler._vector_envs.values())
        results.append(sampler.sample(policy, parameters_of(policy), tasks[:1]))
        if copies is not None:  # not rebuilt for one task: the 6-copy env runs it, filled up
            assert list(sampler._vector_envs.values()) == built and built[0].num_envs == 6
        sampler.close()
    full, bounded = results
    assert torch.equal(full.mask, bounded.mask)
    assert torch.equal(full.actions * full.mask[..., None], bounded.actions * bounded.mask[..., None])
