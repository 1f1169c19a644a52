"""No-code task spaces: parsing and its errors, distributions, the four apply kinds, the task
protocol (reset, pickling, vector envs, splits) and a tiny train + evaluate from YAML."""

import contextlib
import io
import json
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from metarl.cli import main
from metarl.config import ConfigError, config_from_dict, load_config
from metarl.errors import EnvError
from metarl.make import env_factory, make_env, make_vector_env
from metarl.task_space import TaskSpace
from metarl.task_space_env import TaskSpaceEnv
from metarl.tasks import TaskSplits, sample_tasks

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("pendulum_gravity_mass.yaml", "hopper_masses_friction.yaml", "halfcheetah_target_velocity_yaml.yaml")

PENDULUM = {
    "g": {
        "distribution": "uniform",
        "low": 5.0,
        "high": 15.0,
        "ood": {"low": 15.0, "high": 20.0},
        "apply": {"kwarg": "g"},
    },
    "m": {"distribution": "log_uniform", "low": 0.5, "high": 2.0, "apply": {"attribute": "m"}},
}
HOPPER = {
    "torso": {
        "distribution": "log_uniform",
        "low": 0.5,
        "high": 2.0,
        "apply": {"model_field": "body_mass", "names": ["torso"]},
    },
    "friction": {
        "distribution": "uniform",
        "low": 0.5,
        "high": 1.5,
        "apply": {"model_field": "geom_friction", "column": 0},
    },
    "thigh_damping": {
        "distribution": "uniform",
        "low": 0.1,
        "high": 2.0,
        "apply": {"model_field": "dof_damping", "names": ["thigh_joint"], "mode": "set"},
    },
}
VELOCITY = {
    "velocity": {
        "distribution": "uniform",
        "low": 0.0,
        "high": 2.0,
        "apply": {"reward_goal": {"info_key": "x_velocity", "replace": "reward_forward"}},
    }
}


def uniform(apply, low=1.0, high=5.0):
    return {"p": {"distribution": "uniform", "low": low, "high": high, "apply": apply}}


def problems_of(task_space, env_id="Pendulum-v1"):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"env": {"id": env_id, "task_space": task_space}})
    return error.value.problems


def build_error(env_id, task_space):
    with pytest.raises(ConfigError) as error:
        make_env(env_id, task_space=task_space)
    return "\n".join(error.value.problems)


# --- parsing and validation at config load


def test_parsing_keeps_declared_order_and_centres():
    space = TaskSpace.parse(PENDULUM)
    assert space.names == ("g", "m")
    assert space.has_ood
    assert space.default_task() == {"g": 10.0, "m": pytest.approx(1.0)}
    assert [p.apply.kind for p in space.parameters] == ["kwarg", "attribute"]
    ood = space.parameters[0].ood
    assert (ood.kind, ood.low, ood.high) == ("uniform", 15.0, 20.0)
    config = config_from_dict({"env": {"id": "Pendulum-v1", "task_space": PENDULUM}}, ["env.task_space.g.low=6"])
    assert config.env.task_space["g"]["low"] == 6
    assert config.env.task_space["m"] == PENDULUM["m"]


@pytest.mark.parametrize(
    ("task_space", "message"),
    [
        (uniform({"kwarg": "g"}, 15.0, 5.0), "'env.task_space.p.low' must be <= high (got 15 > 5)"),
        (
            {"p": {"distribution": "gauss", "low": 0, "high": 1, "apply": {"kwarg": "g"}}},
            "'env.task_space.p.distribution' must be one of uniform, log_uniform, normal, choice; got 'gauss'",
        ),
        ({"p": {"low": 0, "high": 1, "apply": {"kwarg": "g"}}}, "'env.task_space.p.distribution' is missing"),
        (
            {"p": {"distribution": "uniform", "low": 0, "apply": {"kwarg": "g"}}},
            "'env.task_space.p.high' is missing (distribution 'uniform' needs low, high)",
        ),
        (
            {"p": {"distribution": "uniform", "low": 0, "high": 1, "hihg": 2, "apply": {"kwarg": "g"}}},
            "unknown key 'env.task_space.p.hihg' (did you mean 'high'?)",
        ),
        (
            {"p": {"distribution": "uniform", "low": 0, "high": 1, "std": 2, "apply": {"kwarg": "g"}}},
            "'env.task_space.p.std' is not used by distribution 'uniform' (it takes low, high)",
        ),
        (
            {"p": {"distribution": "uniform", "low": "a", "high": 1, "apply": {"kwarg": "g"}}},
            "'env.task_space.p.low' must be a finite number, got 'a'",
        ),
        (
            {"p": {"distribution": "log_uniform", "low": 0, "high": 1, "apply": {"kwarg": "g"}}},
            "'env.task_space.p.low' must be positive for distribution 'log_uniform' (got 0)",
        ),
        (
            {"p": {"distribution": "normal", "mean": 3, "std": 1, "low": 0, "high": 2, "apply": {"kwarg": "g"}}},
            "'env.task_space.p.mean' must lie in [low, high] (got 3 outside [0, 2])",
        ),
        (
            {"p": {"distribution": "choice", "values": [1, 2], "weights": [1], "apply": {"kwarg": "g"}}},
            "'env.task_space.p.weights' must be 2 non-negative numbers",
        ),
        (
            {
                "p": {
                    "distribution": "uniform",
                    "low": 0,
                    "high": 1,
                    "ood": {"low": 3, "high": 2},
                    "apply": {"kwarg": "g"},
                }
            },
            "'env.task_space.p.ood.low' must be <= high (got 3 > 2)",
        ),
        (
            {"p": {"distribution": "uniform", "low": 0, "high": 1}},
            "'env.task_space.p.apply' is missing: say how the value reaches the environment "
            "(one of kwarg, attribute, model_field, reward_goal)",
        ),
        (
            uniform({"kwargs": "g"}),
            "'env.task_space.p.apply' must name exactly one apply kind of kwarg, attribute, model_field, "
            "reward_goal (got kwargs)",
        ),
        (uniform({"kwarg": "g", "mode": "set"}), "'env.task_space.p.apply.mode' is not used by apply kind 'kwarg'"),
        (
            uniform({"model_field": "body_mass", "names": ["a"], "indices": [1]}),
            "'env.task_space.p.apply' takes names or indices, not both",
        ),
        (
            uniform({"model_field": "body_mass", "mode": "add"}),
            "'env.task_space.p.apply.mode' must be one of scale, set",
        ),
        (uniform({"reward_goal": {"replace": "r"}}), "'env.task_space.p.apply.reward_goal' must be a mapping"),
        ({}, "'env.task_space' must be a non-empty mapping"),
        (
            {**uniform({"kwarg": "g"}), "q": uniform({"kwarg": "g"})["p"]},
            "'env.task_space.q.apply' sets the same kwarg as 'env.task_space.p'",
        ),
    ],
)
def test_config_errors_name_the_key(task_space, message):
    problems = problems_of(task_space)
    assert any(message in p for p in problems), problems


def test_config_errors_are_reported_together():
    problems = problems_of({"a": uniform({"kwarg": "g"}, 3.0, 1.0)["p"], "b": {"distribution": "x", "apply": {}}})
    assert len(problems) == 3, problems


@pytest.mark.parametrize(
    ("env_id", "task_space", "message"),
    [
        (
            "Pendulum-v1",
            uniform({"kwarg": "gg"}),
            "'env.task_space.p.apply.kwarg': Pendulum-v1 has no constructor argument 'gg' (it takes: render_mode, g)",
        ),
        ("HalfCheetah-v5", uniform({"kwarg": "forward_weight"}), "has no constructor argument 'forward_weight'"),
        (
            "Pendulum-v1",
            uniform({"attribute": "mm"}),
            "'env.task_space.p.apply.attribute': the unwrapped env (PendulumEnv) has no attribute 'mm' "
            "(did you mean m?)",
        ),
        (
            "Pendulum-v1",
            uniform({"model_field": "body_mass"}),
            "'body_mass' is a MuJoCo model field, but PendulumEnv has no MuJoCo model",
        ),
        (
            "Hopper-v5",
            uniform({"model_field": "body_mas"}),
            "no floating-point field 'body_mas' (did you mean body_mass",
        ),
        (
            "Hopper-v5",
            uniform({"model_field": "body_mass", "names": ["torsoo"]}),
            "the model has no body named 'torsoo' (its bodies: world, torso, thigh, leg, foot)",
        ),
        (
            "Hopper-v5",
            uniform({"model_field": "dof_damping", "names": ["knee"]}),
            "no joint named 'knee' (its joints: rootx, rootz, rooty, thigh_joint, leg_joint, foot_joint)",
        ),
        ("Hopper-v5", uniform({"model_field": "body_mass", "indices": [9]}), "indices [9] are out of range"),
        ("Hopper-v5", uniform({"model_field": "body_mass", "column": 1}), "column needs a 2-D field"),
        (
            "Hopper-v5",
            uniform({"model_field": "body_mass", "names": ["world"]}),
            "'env.task_space.p' has no effect: body_mass is the same for p=1 and 5",
        ),
        (
            "Pendulum-v1",
            uniform({"attribute": "screen_dim"}, 100, 200),
            "'env.task_space.p' has no effect: p=100 and 200 give the same 20-step rollout",
        ),
        (
            "HalfCheetah-v5",
            uniform({"reward_goal": {"info_key": "x_speed"}}),
            "'env.task_space.p.apply.reward_goal.info_key': HalfCheetah-v5's step info has no key 'x_speed' "
            "(it has: x_position, x_velocity, reward_forward, reward_ctrl)",
        ),
    ],
)
def test_build_errors_name_the_parameter(env_id, task_space, message):
    assert message in build_error(env_id, task_space)


# --- distributions


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ({"distribution": "uniform", "low": -1.0, "high": 2.0}, lambda v: -1.0 <= v.min() and v.max() <= 2.0),
        ({"distribution": "log_uniform", "low": 0.25, "high": 4.0}, lambda v: 0.25 <= v.min() and v.max() <= 4.0),
        (
            {"distribution": "normal", "mean": 1.0, "std": 2.0, "low": 0.0, "high": 1.5},
            lambda v: 0.0 <= v.min() and v.max() <= 1.5,
        ),
        ({"distribution": "choice", "values": [1, 2.5, 7]}, lambda v: set(v) == {1, 2.5, 7}),
        ({"distribution": "choice", "values": [1, 2, 3], "weights": [0, 1, 3]}, lambda v: set(v) == {2, 3}),
    ],
)
def test_distributions_stay_in_bounds_and_are_reproducible(spec, check):
    space = TaskSpace.parse({"p": {**spec, "apply": {"attribute": "m"}}})
    draws = np.array([t["p"] for t in space.sample(400, np.random.default_rng(5))])
    assert check(draws)
    assert space.sample(400, np.random.default_rng(5)) == space.sample(400, np.random.default_rng(5))
    assert space.sample(20, np.random.default_rng(5)) != space.sample(20, np.random.default_rng(6))
    assert all(json.loads(json.dumps(t)) == t for t in space.sample(5, np.random.default_rng(0)))


def test_log_uniform_is_uniform_in_log_and_choice_weights_hold():
    space = TaskSpace.parse(
        {
            "a": {"distribution": "log_uniform", "low": 0.1, "high": 10.0, "apply": {"attribute": "m"}},
            "b": {"distribution": "choice", "values": [0, 1], "weights": [1, 3], "apply": {"attribute": "g"}},
        }
    )
    tasks = space.sample(4000, np.random.default_rng(0))
    logs = np.log10([t["a"] for t in tasks])
    assert abs(np.mean(logs)) < 0.05 and abs(np.mean(logs < 0) - 0.5) < 0.03
    assert abs(np.mean([t["b"] for t in tasks]) - 0.75) < 0.03
    assert isinstance(tasks[0]["b"], int)


# --- applying tasks


def test_kwarg_and_attribute_are_applied_and_the_env_rebuilt_only_when_a_kwarg_changes():
    env = make_env("Pendulum-v1", horizon=50, task_space=PENDULUM)
    assert (env.unwrapped.g, env.unwrapped.m) == (10.0, pytest.approx(1.0))
    env.task = {"g": 7.5, "m": 1.5}
    assert (env.unwrapped.g, env.unwrapped.m) == (7.5, 1.5)
    inner = env.unwrapped
    env.set_task({"g": 7.5, "m": 0.6})
    assert env.unwrapped is inner and inner.m == 0.6
    env.task = {"g": 12.0, "m": 0.6}
    assert env.unwrapped is not inner and (env.unwrapped.g, env.unwrapped.m) == (12.0, 0.6)
    assert env.get_task() == {"g": 12.0, "m": 0.6}
    assert env.spec.max_episode_steps == 50
    assert env.observation_space == gym.make("Pendulum-v1").observation_space  # the task is not observed


def test_model_fields_are_nominal_times_scale_without_drift():
    env = make_env("Hopper-v5", task_space=HOPPER)
    model = env.unwrapped.model
    nominal = gym.make("Hopper-v5").unwrapped.model
    torso = 1  # body ids: world, torso, thigh, leg, foot; thigh_joint is dof 3
    rng = np.random.default_rng(0)
    for task in [*env.sample_tasks(30, rng), {"torso": 1.7, "friction": 0.6, "thigh_damping": 0.3}]:
        env.task = task
    assert model.body_mass[torso] == nominal.body_mass[torso] * 1.7
    np.testing.assert_array_equal(np.delete(model.body_mass, torso), np.delete(nominal.body_mass, torso))
    np.testing.assert_array_equal(model.geom_friction[:, 0], nominal.geom_friction[:, 0] * 0.6)
    np.testing.assert_array_equal(model.geom_friction[:, 1:], nominal.geom_friction[:, 1:])
    assert model.dof_damping[3] == 0.3 and model.dof_damping[4] == nominal.dof_damping[4]
    # Indices select rows directly; two parameters on one field apply in order, both from the nominal value.
    both = {
        "a": {"distribution": "uniform", "low": 1, "high": 2, "apply": {"model_field": "body_mass", "indices": [2, 3]}},
        "b": {"distribution": "uniform", "low": 1, "high": 2, "apply": {"model_field": "body_mass", "indices": [3]}},
    }
    env = make_env("Hopper-v5", task_space=both)
    env.task = {"a": 2.0, "b": 1.5}
    env.task = {"a": 2.0, "b": 1.5}
    assert env.unwrapped.model.body_mass[2] == nominal.body_mass[2] * 2.0
    assert env.unwrapped.model.body_mass[3] == nominal.body_mass[3] * 2.0 * 1.5


def test_reward_goal_replaces_the_forward_term():
    env = make_env("HalfCheetah-v5", task_space=VELOCITY)
    plain = gym.make("HalfCheetah-v5")
    env.task = {"velocity": 1.25}
    env.reset(seed=3)
    plain.reset(seed=3)
    for action in np.random.default_rng(0).uniform(-1, 1, size=(5, 6)).astype(np.float32):
        obs, reward, _, _, info = env.step(action)
        plain_obs, plain_reward, _, _, plain_info = plain.step(action)
        np.testing.assert_array_equal(obs, plain_obs)
        expected = plain_reward - plain_info["reward_forward"] - abs(plain_info["x_velocity"] - 1.25)
        assert reward == pytest.approx(expected, abs=1e-12)
        assert reward == pytest.approx(info["reward_ctrl"] - abs(info["x_velocity"] - 1.25), abs=1e-6)
        assert info["reward_goal"] == -abs(plain_info["x_velocity"] - 1.25)
    # Without replace the goal term is added to the env's own reward.
    env = make_env(
        "HalfCheetah-v5",
        task_space={"v": {**VELOCITY["velocity"], "apply": {"reward_goal": {"info_key": "x_velocity"}}}},
    )
    env.task = {"v": 0.5}
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(6, np.float32))
    assert reward == pytest.approx(info["reward_forward"] + info["reward_ctrl"] - abs(info["x_velocity"] - 0.5))


# --- the task protocol


def test_plain_reset_keeps_the_task_and_options_set_it():
    env = make_env("Pendulum-v1", task_space=PENDULUM)
    env.task = {"g": 6.0, "m": 0.7}
    _, info = env.reset(seed=0)
    assert info["task"] == {"g": 6.0, "m": 0.7}
    env.step(np.zeros(1, np.float32))
    _, info = env.reset()
    assert info["task"] == env.task == {"g": 6.0, "m": 0.7} and env.unwrapped.m == 0.7
    _, info = env.reset(options={"task": {"g": 9.0, "m": 1.1}})
    assert info["task"] == {"g": 9.0, "m": 1.1} and (env.unwrapped.g, env.unwrapped.m) == (9.0, 1.1)
    for bad, error in [({"g": 9.0}, ValueError), ({"g": 1, "m": 1, "l": 1}, ValueError), (3.0, TypeError)]:
        with pytest.raises(error):
            env.task = bad
    with pytest.raises(ValueError, match="'m' must be a finite number"):
        env.task = {"g": 9.0, "m": float("nan")}


def test_pickling_keeps_the_task_and_the_model():
    env = make_env("Hopper-v5", horizon=30, task_space=HOPPER)
    env.task = {"torso": 1.9, "friction": 0.7, "thigh_damping": 1.5}
    copy = pickle.loads(pickle.dumps(env))
    assert copy.task == env.task
    np.testing.assert_array_equal(copy.unwrapped.model.body_mass, env.unwrapped.model.body_mass)
    np.testing.assert_array_equal(copy.unwrapped.model.geom_friction, env.unwrapped.model.geom_friction)
    assert copy.spec.max_episode_steps == 30
    pendulum = make_env("Pendulum-v1", task_space=PENDULUM)
    pendulum.task = {"g": 13.0, "m": 0.8}
    copy = pickle.loads(pickle.dumps(pendulum))
    assert copy.task == {"g": 13.0, "m": 0.8} and (copy.unwrapped.g, copy.unwrapped.m) == (13.0, 0.8)
    # The worker-process factory carries the task space.
    factory = pickle.loads(pickle.dumps(env_factory("Pendulum-v1", None, 40, PENDULUM)))
    built = factory()
    assert isinstance(built, TaskSpaceEnv) and built.space.names == ("g", "m") and built.spec.max_episode_steps == 40


def test_vector_env_gives_each_copy_its_task():
    envs = make_vector_env("Pendulum-v1", 4, horizon=10, task_space=PENDULUM)
    assert isinstance(envs, SyncVectorEnv) and envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    tasks = [{"g": 5.0 + i, "m": 1.0} for i in range(4)]
    envs.set_attr("task", tasks)
    assert list(envs.get_attr("task")) == tasks
    assert [e.unwrapped.g for e in envs.envs] == [5.0, 6.0, 7.0, 8.0]
    # HalfCheetah's batched vector env is not used: the task space needs the wrapper on every copy.
    cheetahs = make_vector_env("HalfCheetah-v5", 2, horizon=10, task_space=VELOCITY)
    assert isinstance(cheetahs, SyncVectorEnv) and all(isinstance(e, TaskSpaceEnv) for e in cheetahs.envs)


def test_splits_hold_out_dict_tasks_and_ood_needs_a_declared_range():
    env = make_env("Pendulum-v1", task_space=PENDULUM)
    splits = TaskSplits(env, train_seed=0, test_seed=1, num_test=5)
    assert splits.test == sample_tasks(env, 5, np.random.default_rng([1, 1]))
    train = [t for _ in range(5) for t in splits.sample_train(10)]
    assert not any(t in splits.test for t in train)
    assert all(15.0 <= t["g"] <= 20.0 and 0.5 <= t["m"] <= 2.0 for t in splits.ood(20))
    no_ood = make_env("Pendulum-v1", task_space={"m": PENDULUM["m"]})
    with pytest.raises(EnvError, match="defines no out-of-distribution split"):
        TaskSplits(no_ood, 0, 1, 2).ood(3)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_configs_build(name):
    config = load_config(ROOT / "experiments" / name)
    env = make_env(config.env.id, config.env.kwargs, config.env.horizon, config.env.task_space)
    tasks = env.sample_tasks(3, np.random.default_rng(0))
    env.task = tasks[0]
    assert env.reset(seed=0)[1]["task"] == tasks[0]


# --- end to end


def test_train_and_evaluate_from_yaml(tmp_path):
    config = tmp_path / "pendulum.yaml"
    config.write_text(
        "env:\n  id: Pendulum-v1\n  horizon: 10\n  task_space:\n"
        "    g: {distribution: uniform, low: 5.0, high: 15.0, ood: {low: 15.0, high: 20.0}, apply: {kwarg: g}}\n"
        "    m: {distribution: log_uniform, low: 0.5, high: 2.0, apply: {attribute: m}}\n"
        "policy: {hidden_sizes: [8]}\ninner: {episodes_per_task: 2}\nouter: {tasks_per_batch: 2}\n"
        "train: {iterations: 2, num_threads: 1}\nevaluation: {num_tasks: 3, adapt_steps: 1, episodes_per_task: 2}\n"
    )
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(
                ["train", str(config), "--logdir", str(tmp_path), "--run-name", "r", "--evaluate", "--no-progress"]
            )
            code_ood = main(["evaluate", str(tmp_path / "r"), "--split", "ood"])
    finally:
        torch.set_num_threads(threads)
    assert (code, code_ood) == (0, 0), out.getvalue()
    run = tmp_path / "r"
    test_tasks = json.loads((run / "test_tasks.json").read_text())
    assert len(test_tasks) == 3 and all(set(t) == {"g", "m"} for t in test_tasks)
    logged = [json.loads(line) for line in (run / "tasks.jsonl").read_text().splitlines()]
    assert [len(line["tasks"]) for line in logged] == [2, 2]
    assert not any(t in test_tasks for line in logged for t in line["tasks"])
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["tasks"] == test_tasks and len(result["summary"]["maml"]) == 2
    assert all(np.isfinite(s["mean"]) for s in result["summary"]["maml"])
    ood = json.loads((run / "eval_ood" / "eval.json").read_text())
    assert all(15.0 <= t["g"] <= 20.0 for t in ood["tasks"])


def test_build_errors_reach_the_cli_as_a_clean_message(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "env:\n  id: Pendulum-v1\n  task_space:\n"
        "    m: {distribution: uniform, low: 1, high: 2, apply: {attribute: mass}}\n"
    )
    assert main(["train", str(config), "--logdir", str(tmp_path), "--no-progress"]) == 2
    assert "has no attribute 'mass'" in capsys.readouterr().err
    config.write_text("env:\n  id: Pendulum-v1\n  task_space:\n    m: {distribution: uniform, low: 2, high: 1}\n")
    assert main(["train", str(config), "--logdir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'env.task_space.m.low' must be <= high (got 2 > 1)" in err and "'env.task_space.m.apply' is missing" in err
