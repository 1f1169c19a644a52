"""metarl.config: YAML loading, overrides, validation that reports every problem, round trips."""

import re
from pathlib import Path

import pytest
import yaml

from metarl.config import (
    Config,
    ConfigError,
    EnvConfig,
    EvaluationConfig,
    InnerConfig,
    OuterConfig,
    PolicyConfig,
    config_from_dict,
    load_config,
    parse_overrides,
)

ROOT = Path(__file__).resolve().parent.parent


def test_defaults():
    config = load_config()
    assert config == Config()
    assert config.env == EnvConfig(id="MetaRL/Navigation2D-v0", kwargs={}, horizon=None)
    assert config.policy.hidden_sizes == [64, 64]
    assert config.policy.activation == "tanh"
    assert config.inner.lr == 0.1
    assert config.inner.steps == 1
    assert config.outer.algo == "trpo"
    assert config.outer.max_kl == 0.01
    assert config.train.iterations == 500
    assert config.evaluation.num_tasks == 40
    assert config.evaluation.lr is None


def test_navigation_experiment():
    config = load_config(ROOT / "experiments" / "navigation_2d.yaml")
    assert config.env.id == "MetaRL/Navigation2D-v0"
    assert config.env.horizon is None
    assert config.policy == PolicyConfig(
        hidden_sizes=[100, 100], activation="relu", init_std=1.0, action_scaling="normalize"
    )
    assert config.inner == InnerConfig(lr=0.5, steps=1, episodes_per_task=20, first_order=False)
    assert config.outer.algo == "trpo"
    assert config.outer.tasks_per_batch == 20
    assert config.outer.max_kl == 0.01
    assert config.outer.cg_iters == 10
    assert config.outer.cg_damping == 1e-5
    assert config.outer.ls_max_steps == 15
    assert config.outer.ls_backtrack_ratio == 0.8
    assert config.advantages.gamma == 0.99
    assert config.advantages.gae_lambda == 1.0
    assert config.advantages.normalize is True
    assert config.train.iterations == 100
    assert config.train.checkpoint_every == 25
    assert config.env.batch_unit == "steps"
    assert config.evaluation == EvaluationConfig(
        num_tasks=40, adapt_steps=3, episodes_per_task=40, lr=0.5, later_lr_scale=0.5, seed=1, batch_unit="steps"
    )


def test_smoke_experiment():
    config = load_config(ROOT / "experiments" / "smoke.yaml")
    assert config.env.horizon == 20
    assert config.policy.hidden_sizes == [16, 16]
    assert config.policy.activation == "tanh"  # not set: default
    assert config.inner.episodes_per_task == 4
    assert config.inner.lr == 0.1
    assert config.outer.tasks_per_batch == 3
    assert config.train.iterations == 3
    assert config.train.checkpoint_every == 2
    assert config.evaluation.num_tasks == 4
    assert config.evaluation.adapt_steps == 2
    assert config.evaluation.episodes_per_task == 4


def test_overrides_apply_and_ints_are_accepted_for_floats():
    config = load_config(
        ROOT / "experiments" / "smoke.yaml",
        [
            "inner.lr=0.05",
            "policy.hidden_sizes=[32,32]",
            "outer.max_kl=1",
            "env.kwargs={goal_low: -0.2}",
            "evaluation.lr=null",
            "train.run_name=abc",
        ],
    )
    assert config.inner.lr == 0.05
    assert config.policy.hidden_sizes == [32, 32]
    assert config.outer.max_kl == 1.0
    assert isinstance(config.outer.max_kl, float)
    assert config.env.kwargs == {"goal_low": -0.2}
    assert config.evaluation.lr is None
    assert config.train.run_name == "abc"
    # Untouched values keep the file's.
    assert config.outer.tasks_per_batch == 3
    assert config.env.horizon == 20

    # Ints in a file are converted too.
    assert isinstance(config_from_dict({"inner": {"lr": 1}}).inner.lr, float)
    # The last of repeated overrides wins.
    assert load_config(None, ["inner.lr=0.2", "inner.lr=0.3"]).inner.lr == 0.3


def test_parse_overrides_builds_nested_dict():
    nested, problems = parse_overrides(["inner.lr=0.05", "policy.hidden_sizes=[32, 32]", "env.id=a=b"])
    assert nested == {"inner": {"lr": 0.05}, "policy": {"hidden_sizes": [32, 32]}, "env": {"id": "a=b"}}
    assert problems == []


def test_every_problem_is_reported_at_once():
    data = {
        "inner": {"lrr": 0.1, "lr": -0.5, "steps": "two"},
        "outer": {"tasks_per_batch": 0},
        "optimizer": {"lr": 1e-3},
        "policy": {"activation": "sigmoid"},
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    problems = info.value.problems
    assert problems == [
        "unknown key 'inner.lrr' (did you mean 'inner.lr'?)",
        "'inner.lr' must be non-negative, got -0.5",
        "'inner.steps' must be int, got 'two'",
        "'outer.tasks_per_batch' must be at least 1, got 0",
        "unknown key 'optimizer' (valid keys: env, policy, inner, outer, advantages, train, evaluation)",
        "'policy.activation' must be 'tanh' | 'relu', got 'sigmoid'",
    ]
    message = str(info.value)
    assert message.startswith("invalid configuration:\n")
    assert all(f"  - {p}" in message for p in problems)


def test_problems_in_overrides_and_types():
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [
                "inner.lr",
                "policy.hidden_sizes=64",
                "inner.steps=true",
                "env=3",
                "outer.ls_backtrack_ratio=1",
                "policy.hidden_sizes=[32, 0]",
            ],
        )
    assert info.value.problems == [
        "override 'inner.lr' must look like section.field=value (e.g. inner.lr=0.05)",
        "'policy.hidden_sizes' must be a list of positive integers, got [32, 0]",
        "'inner.steps' must be int, got True",
        "'env' must be a mapping of EnvConfig fields, got 3",
        "'outer.ls_backtrack_ratio' must be in (0, 1), got 1",
    ]


def test_misspelled_section_gets_a_suggestion():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"evaluaton": {"num_tasks": 3}, "outer": {"max_lk": 0.1}})
    assert info.value.problems == [
        "unknown key 'evaluaton' (did you mean 'evaluation'?)",
        "unknown key 'outer.max_lk' (did you mean 'outer.max_kl'?)",
    ]


def test_configuration_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- inner\n- outer\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["the configuration must be a mapping of sections, got list"]


def test_an_empty_file_is_refused_rather_than_running_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="is empty: it would run the 500-iteration defaults"):
        load_config(path)
    assert load_config(None) == Config()  # the defaults are still there, asked for explicitly


def test_a_directory_as_config_is_named_as_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; give a YAML config file"):
        load_config(tmp_path)


def test_invalid_yaml_names_the_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("inner:\n  lr: [0.1,\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"'{path}' is not valid YAML:")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"config file '{path}' does not exist"]


def test_to_yaml_round_trips():
    for config in (
        Config(),
        load_config(ROOT / "experiments" / "navigation_2d.yaml"),
        Config(outer=OuterConfig(algo="adam", lr=3e-4, max_grad_norm=1.0)),
    ):
        text = config.to_yaml()
        assert config_from_dict(yaml.safe_load(text)) == config
    text = Config().to_yaml()
    assert text.startswith("env:\n  id: MetaRL/Navigation2D-v0\n")
    assert "  cg_damping: 1.0e-05\n" in text


def test_scientific_notation_is_a_float():
    # Learning rates are usually written like 3e-4; PyYAML (YAML 1.1) reads "3e-4" as a string.
    assert load_config(None, ["outer.algo=adam", "outer.lr=3e-4"]).outer.lr == pytest.approx(3e-4)
    assert config_from_dict(yaml.safe_load("outer:\n  algo: adam\n  lr: 1e-3\n")).outer.lr == pytest.approx(1e-3)


def test_override_below_a_scalar_is_a_config_error():
    # "inner=3" then "inner.lr=1": the second override cannot go below a number.
    with pytest.raises(ConfigError):
        load_config(None, ["inner=3", "inner.lr=1"])
    with pytest.raises(ConfigError):
        load_config(None, ["inner.lr=1", "inner.lr.x=2"])


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("experiments/*.yaml")))
def test_every_experiment_config_loads_and_names_a_registered_family(path):
    from metarl.tasks import ensure_registered

    config = load_config(path)
    ensure_registered(config.env.id)


def train_cli_error(directory: Path, capsys, monkeypatch, config_text: str) -> str:
    """`metarl train` (run in `directory`) on a config file with `config_text`: exits 2 with no
    traceback and no run directory; returns its stderr."""
    from metarl.cli import main

    monkeypatch.chdir(directory)
    path = directory / "bad.yaml"
    path.write_text(config_text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (directory / "runs").exists()
    return err


def test_a_config_file_with_several_mistakes_reports_them_all_through_the_cli(tmp_path, capsys, monkeypatch):
    err = train_cli_error(
        tmp_path,
        capsys,
        monkeypatch,
        "env:\n  horizon: 0\n  worker_timeout: -1\n"
        "inner:\n  lr: -0.1\n  episodes_per_tsk: 10\n"
        "train:\n  device: cuda:7\n  keep_checkpoints: 0\n  on_nonfinite: ignore\n",
    )
    for problem in (
        "'env.horizon' must be a positive integer or null, got 0",
        "'env.worker_timeout' must be positive seconds, or null for no limit, got -1",
        "'inner.lr' must be non-negative, got -0.1",
        "unknown key 'inner.episodes_per_tsk' (did you mean 'inner.episodes_per_task'?)",
        "'train.device' must be a torch device available here",
        "'train.keep_checkpoints' must be at least 1, got 0",
        "'train.on_nonfinite' must be 'stop' | 'skip', got 'ignore'",
    ):
        assert problem in err, problem


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (
            ["train.algo=pretrain", "inner.first_order=true"],
            "'inner.first_order' has no effect with train.algo=pretrain",
        ),
        (
            ["outer.algo=trpo", "outer.max_grad_norm=1.0"],
            "'outer.max_grad_norm' is not used by outer.algo=trpo \\(it is a setting of adam, sgd, ppo, promp\\)",
        ),
        (
            ["outer.algo=adam", "outer.curvature_precision=bfloat16"],
            "'outer.curvature_precision' is not used by outer.algo=adam \\(it is a setting of trpo\\)",
        ),
    ],
)
def test_settings_that_contradict_each_other(overrides, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(None, overrides)
    assert load_config(None, ["outer.algo=adam", "outer.max_grad_norm=1.0"]).outer.max_grad_norm == 1.0


def test_bfloat16_curvature_with_a_discrete_policy_is_a_config_error_before_any_run_dir(tmp_path, capsys, monkeypatch):
    err = train_cli_error(
        tmp_path,
        capsys,
        monkeypatch,
        "env:\n  id: CartPole-v1\n  horizon: 20\n  task_space:\n    length:\n      distribution: uniform\n"
        "      low: 0.3\n      high: 0.7\n      apply: {attribute: length}\n"
        "outer:\n  curvature_precision: bfloat16\n",
    )
    assert "'outer.curvature_precision=bfloat16' needs the Gaussian MLP policy" in err
    assert "CategoricalMLPPolicy" in err


@pytest.mark.filterwarnings("default::UserWarning")  # as outside pytest, where a warning is not an error
def test_bfloat16_curvature_without_bfloat16_units_warns_in_one_line_and_trains(tmp_path, capsys, monkeypatch):
    import importlib

    from metarl.cli import main
    from metarl.curvature import has_fast_bfloat16

    assert has_fast_bfloat16("cpu") in (True, False) and not has_fast_bfloat16("meta")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.import_module("metarl.training"), "has_fast_bfloat16", lambda device: False)
    smoke = str(ROOT / "experiments" / "smoke.yaml")
    args = ["train", smoke, "--set", "outer.curvature_precision=bfloat16", "--iterations", "1", "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "metarl train: warning: outer.curvature_precision=bfloat16: cpu has no bfloat16 matrix units" in err
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_an_unavailable_device_is_refused_with_the_devices_this_machine_has(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.device=cuda"])
    assert info.value.problems == ["'train.device' must be a torch device available here ('cpu'), got 'cuda'"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=re.escape("available here ('cpu', 'cuda', 'cuda:0'), got 'cuda:1'")):
        load_config(None, ["train.device=cuda:1"])
    assert load_config(None, ["train.device=cuda:0"]).train.device == "cuda:0"
