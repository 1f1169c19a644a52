"""Meta-World families: the benchmark's own splits, success from its infos, workers, rounds, resume."""

import json
import pickle
import weakref

import metaworld
import numpy as np
import pytest
import torch

from envs.metaworld import ManipulationTask, MetaWorldEnv
from metarl.check import check_task_distribution
from metarl.config import load_config
from metarl.functional import parameters_of
from metarl.make import env_factory
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits, task_key
from metarl.training import resume, train
from metarl.workers import KeyedSyncVectorEnv

ML1 = "MetaRL/ML1-v0"
REACH = {"env_name": "reach-v3"}
TINY = [
    f"env.id={ML1}",
    "env.kwargs={env_name: reach-v3}",
    "env.horizon=10",
    "inner.episodes_per_task=2",
    "outer.tasks_per_batch=3",
    "policy.hidden_sizes=[16]",
    "train.num_threads=1",
    "train.checkpoint_every=2",
    "evaluation.num_tasks=3",
    "evaluation.episodes_per_task=2",
]


def rand_vecs(tasks):
    return [tuple(float(v) for v in pickle.loads(t.data)["rand_vec"]) for t in tasks]


def test_ml1_lists_are_the_benchmark_s_train_and_test_goals_and_never_mix():
    env = MetaWorldEnv("ML1", "reach-v3", seed=0)
    lists = env.task_lists()
    benchmark = metaworld.ML1("reach-v3", seed=0)
    assert [t.rand_vec for t in lists["train"]] == rand_vecs(benchmark.train_tasks)
    assert [t.rand_vec for t in lists["test"]] == rand_vecs(benchmark.test_tasks)
    assert len(lists["train"]) == len(lists["test"]) == 50
    splits = TaskSplits(env, train_seed=0, test_seed=1, num_test=50)
    trained = {task_key(t) for _ in range(30) for t in splits.sample_train(20)}
    assert trained == {task_key(t) for t in lists["train"]}  # all 50 train goals, none of the test goals
    assert {task_key(t) for t in splits.test} == {task_key(t) for t in lists["test"]}


def test_ml10_holds_out_the_benchmark_s_test_classes():
    env = MetaWorldEnv("ML10", seed=0)
    lists = env.task_lists()
    train_classes = {t.env_name for t in lists["train"]}
    test_classes = {t.env_name for t in lists["test"]}
    assert train_classes == set(metaworld.env_dict.ML10_V3["train"]) and len(lists["train"]) == 500
    assert test_classes == set(metaworld.env_dict.ML10_V3["test"]) and len(lists["test"]) == 250
    env.task = lists["test"][0]  # switching the task class rebuilds Meta-World's environment
    observation, _ = env.reset(seed=0)
    assert observation.shape == (39,) and np.all(observation[36:39] == 0)  # the goal is hidden


def test_check_env_passes_and_names_the_observed_object_position():
    results = check_task_distribution(ML1, REACH, horizon=20)
    assert all(r.status == "pass" for r in results), [(r.name, r.message) for r in results if r.status != "pass"]
    observed = next(r for r in results if r.name == "task_not_observed")
    assert any("object's pose" in note for note in observed.notes)


def test_a_pickled_env_is_rebuilt_from_its_task_and_behaves_the_same():
    env = MetaWorldEnv("ML1", "push-v3", seed=0)
    env.task = env.task_lists()["test"][3]
    copy = pickle.loads(pickle.dumps(env))
    assert len(pickle.dumps(env)) < 10_000  # class and task, not Meta-World's 42 MB
    actions = np.random.default_rng(0).uniform(-1, 1, (15, 4)).astype(np.float32)
    rollouts = []
    for each in (env, copy):
        observations = [each.reset(seed=3)[0]]
        observations += [each.step(a)[0] for a in actions]
        rollouts.append(np.stack(observations))
    np.testing.assert_array_equal(rollouts[0], rollouts[1])


def test_copies_of_one_task_share_its_model_and_run_as_on_models_of_their_own(monkeypatch):
    import envs.metaworld as module

    def run(name):  # 4 copies of 2 tasks, then the tasks swapped among the copies
        envs = [MetaWorldEnv("ML1", name, seed=0) for _ in range(4)]
        train = envs[0].task_lists()["train"]
        actions = np.random.default_rng(0).uniform(-1, 1, (2, 25, 4, 4))
        observations, sims = [], []
        for r, tasks in enumerate([(0, 0, 1, 1), (1, 1, 0, 0)]):
            old = [env._sim.data for env in envs]
            for env, task in zip(envs, tasks, strict=True):
                env.task = train[task]
            observations.append([env.reset(seed=i)[0] for i, env in enumerate(envs)])
            for t in range(25):
                observations.append([env.step(actions[r, t, i])[0] for i, env in enumerate(envs)])
            sims.append([env._sim for env in envs])
            for env, data in zip(envs, old, strict=True):  # no view into the data a copy left behind
                views = [v for v in vars(env._sim).values() if isinstance(v, np.ndarray)]
                assert not any(np.shares_memory(v, data.xpos) for v in views if data is not env._sim.data)
        return np.array(observations), sims

    for name in ("push-v3", "door-open-v3"):  # a goal site; a door body placed by the task
        shared, sims = run(name)
        assert sims[0][0].model is sims[0][1].model and sims[0][0].model is not sims[0][2].model
        assert sims[0][0].data is not sims[0][1].data
        with monkeypatch.context() as patch:
            patch.setattr(module, "_SHARED_MODELS", weakref.WeakValueDictionary())
            patch.setattr(module, "_share", lambda key, make: make())  # every copy on a model of its own
            private, sims = run(name)
        assert sims[0][0].model is not sims[0][1].model
        np.testing.assert_array_equal(shared, private)


def test_copies_stepped_together_compute_their_quaternions_at_once_and_step_as_alone(monkeypatch):
    import envs.metaworld as module

    shapes = []  # of the matrices metarl hands scipy
    from_matrix = module.Rotation.from_matrix
    monkeypatch.setattr(module.Rotation, "from_matrix", lambda m: shapes.append(np.shape(m)) or from_matrix(m))

    def run(name, together):  # 3 copies of 2 tasks, 20 steps of random actions
        factory = env_factory(ML1, {"env_name": name}, 20)
        vector = KeyedSyncVectorEnv([factory] * 3, ["success"]) if together else None
        copies = vector.envs if together else [factory() for _ in range(3)]
        train = copies[0].unwrapped.task_lists()["train"]
        for i, env in enumerate(copies):
            env.unwrapped.task = train[i // 2]
        actions = np.random.default_rng(0).uniform(-1, 1, (20, 3, 4))
        if together:
            steps = [vector.reset(seed=0)[0], *(vector.step(a)[:2] for a in actions)]
        else:
            steps = [np.array([env.reset(seed=i)[0] for i, env in enumerate(copies)])]
            for a in actions:
                results = [env.step(action)[:2] for env, action in zip(copies, a, strict=True)]
                steps.append(tuple(np.array(values) for values in zip(*results, strict=True)))
        return [np.asarray(x) for step in steps for x in (step if isinstance(step, tuple) else (step,))]

    for name in ("push-v3", "stick-pull-v3"):  # a quaternion from scipy; from scipy and a constant one
        alone = run(name, together=False)
        assert set(shapes) == {(3, 3)}  # a call per copy and step (Meta-World's own)
        shapes.clear()
        together = run(name, together=True)
        assert shapes.count((3, 3, 3)) == 20  # one call per step of the 3 copies (resets compute their own)
        shapes.clear()
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_array_equal(a, b)  # observations (the previous frame too) and rewards


def test_success_comes_from_meta_world_s_infos_and_from_workers():
    env = MetaWorldEnv("ML1", "reach-v3", seed=0)
    tasks = env.task_lists()["train"][:3]
    policy = GaussianMLPPolicy(39, 4, [16])
    results = []
    for workers in (None, 2):
        sampler = Sampler(ML1, episodes_per_task=2, env_kwargs=REACH, horizon=30, seed=1, workers=workers)
        torch.manual_seed(0)
        results.append(sampler.sample(policy, parameters_of(policy), tasks))
        sampler.close()
    assert set(results[0].metrics) == {"success"}
    assert torch.equal(results[0].metrics["success"], results[1].metrics["success"])
    assert torch.equal(results[0].observations, results[1].observations)


def test_rounds_on_bounded_copies_equal_all_copies_for_meta_world():
    tasks = MetaWorldEnv("ML1", "reach-v3", seed=0).task_lists()["train"][:5]
    policy = GaussianMLPPolicy(39, 4, [16])
    runs = []
    for copies in (None, 4):
        sampler = Sampler(ML1, episodes_per_task=2, env_kwargs=REACH, horizon=12, seed=2, max_copies=copies)
        torch.manual_seed(0)
        runs.append(sampler.sample(policy, parameters_of(policy), tasks))
        assert max(e.num_envs for e in sampler._vector_envs.values()) == (copies or 10)
        sampler.close()
    for field in ("observations", "actions", "rewards", "log_probs", "mask"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field


def test_a_json_task_sets_the_same_goal():
    env = MetaWorldEnv("ML1", "reach-v3", seed=0)
    task = env.task_lists()["test"][7]
    env.task = json.loads(json.dumps({"env_name": task.env_name, "rand_vec": list(task.rand_vec)}))
    assert env.task == task and isinstance(env.task, ManipulationTask)
    with pytest.raises(ValueError, match="not part of ML1 reach-v3"):
        env.task = ManipulationTask("push-v3", task.rand_vec)


def test_training_on_ml1_is_deterministic_and_resumes_bit_identically(tmp_path):
    settings = [*TINY, f"train.logdir={tmp_path}"]
    full = train(load_config(None, [*settings, "train.run_name=full", "train.iterations=4"]), progress=False)
    workers = train(
        load_config(None, [*settings, "train.run_name=w", "train.iterations=4", "env.workers=2"]), progress=False
    )
    part = train(load_config(None, [*settings, "train.run_name=part", "train.iterations=2"]), progress=False)
    resume(part, ["train.iterations=4"], progress=False)

    def results(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in lines]

    assert results(part) == results(full) == results(workers)
    assert "success/post_adaptation" in results(full)[0]


def test_switching_task_classes_hands_freed_memory_back_every_few_rebuilds(monkeypatch):
    import envs.metaworld as module

    trims = []
    monkeypatch.setattr(module, "_malloc_trim", lambda: trims.append)
    monkeypatch.setattr(module, "_freed_since_trim", 0)
    monkeypatch.setattr(module, "FREED_MODELS_PER_TRIM", 3)
    env = MetaWorldEnv("ML10", seed=0)
    tasks = env.task_lists()["train"]
    first, other = tasks[0], next(t for t in tasks if t.env_name != tasks[0].env_name)
    env.task = first  # built
    for task in [other, first, other, first, other, first, first]:  # 6 rebuilds, then the same class
        env.task = task
    assert trims == [0, 0]  # malloc_trim(0) after rebuilds 3 and 6
    env.close()
