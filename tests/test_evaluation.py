"""Meta-testing against the MAML paper's baselines: pretrained, oracle, random, first-order MAML."""

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers MetaRL/)
from metarl import load
from metarl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metarl.cli import main
from metarl.config import load_config
from metarl.errors import EnvError
from metarl.evaluation import EvaluationResult, evaluate, mean_ci95
from metarl.policies import make_policy
from metarl.sampler import Sampler
from metarl.tasks import task_features
from metarl.training import train
from metarl.video import record_adaptation_videos

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"


def _run(logdir: Path, name: str, *overrides: str) -> Path:
    config = load_config(
        SMOKE,
        ["train.iterations=2", "train.num_threads=1", f"train.logdir={logdir}", f"train.run_name={name}", *overrides],
    )
    return train(config, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A MAML, a first-order MAML, a pretrained and an oracle run of the smoke config (seconds)."""
    logdir = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    yield {
        "maml": _run(logdir, "maml"),
        "fomaml": _run(logdir, "fomaml", "inner.first_order=true"),
        "pretrain": _run(logdir, "pretrain", "train.algo=pretrain"),
        "oracle": _run(logdir, "oracle", "train.algo=oracle"),
    }
    torch.set_num_threads(threads)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_task_features_flatten_the_numbers_of_a_task():
    assert task_features({"goal": [0.25, -0.5]}).tolist() == [0.25, -0.5]
    assert task_features({"b": 2, "a": {"y": [1, 2], "x": 3.5}, "name": "x", "flag": True}).tolist() == [3.5, 1, 2, 2]
    assert task_features(1.5).tolist() == [1.5]


def test_the_oracle_observes_each_copys_own_task():
    sampler = Sampler("MetaRL/Navigation2D-v0", 3, horizon=5, observe_task=True)
    assert sampler.observation_space.shape == (4,)
    policy = make_policy(sampler.observation_space, sampler.action_space, load_config(SMOKE).policy)
    tasks = [{"goal": [0.1, 0.2]}, {"goal": [-0.3, 0.4]}]
    episodes = sampler.sample(policy, dict(policy.named_parameters()), tasks)
    goals = episodes.observations[..., 2:]
    assert torch.equal(goals[0], torch.tensor([0.1, 0.2]).expand_as(goals[0]))
    assert torch.equal(goals[1], torch.tensor([-0.3, 0.4]).expand_as(goals[1]))
    sampler.close()


def test_baselines_train_without_an_inner_loop_on_maml_s_sample_budget(runs):
    maml, pretrain, oracle = (_metrics(runs[k]) for k in ("maml", "pretrain", "oracle"))
    for metrics in (pretrain, oracle):
        # No adaptation: one batch per iteration, sampled and updated with θ itself.
        assert all(m["returns/pre_adaptation"] == m["returns/post_adaptation"] for m in metrics)
        assert all(m["time/adapt_s"] == 0.0 and "loss/inner" not in m for m in metrics)
    # Horizon 20 never reaches a goal in these tiny runs, so every episode has 20 steps: MAML samples
    # 3 tasks x 4 episodes before and after adapting, the baselines 3 x 8 at once.
    assert maml[0]["time/env_steps"] == pretrain[0]["time/env_steps"] == oracle[0]["time/env_steps"] == 3 * 8 * 20
    assert load_checkpoint(runs["oracle"])["observation_shape"] == [4]
    assert load_checkpoint(runs["pretrain"])["config"]["train"]["algo"] == "pretrain"


def test_evaluate_runs_every_method_through_the_same_protocol(runs, tmp_path, capsys):
    out = tmp_path / "eval"
    baselines = ["random", f"pretrained={runs['pretrain']}", f"oracle={runs['oracle']}", f"fomaml={runs['fomaml']}"]
    args = ["evaluate", str(runs["maml"]), "--tasks", "3", "--adapt-steps", "2", "--out", str(out)]
    assert main([*args, "--baselines", *baselines, "--baseline-lr", "pretrained=0.2"]) == 0
    table = capsys.readouterr().out
    for method in ("maml", "random", "pretrained", "oracle", "fomaml"):
        assert f"\n{method} " in table
    assert "(not adapted)" in table.split("\noracle")[1].splitlines()[0]

    result = json.loads((out / "eval.json").read_text())
    assert list(result["per_task"]) == ["maml", "random", "pretrained", "oracle", "fomaml"]
    per_task = {m: np.array(r) for m, r in result["per_task"].items()}
    assert all(r.shape == (3, 3) for r in per_task.values())
    # The oracle is evaluated once, without adaptation; the others change from step to step.
    assert (per_task["oracle"] == per_task["oracle"][:, :1]).all()
    assert not (per_task["pretrained"] == per_task["pretrained"][:, :1]).all()
    methods = result["protocol"]["methods"]
    assert methods["pretrained"]["lr"] == 0.2 and methods["maml"]["lr"] == 0.1 and methods["oracle"]["lr"] is None
    assert methods["oracle"]["algo"] == "oracle" and methods["random"]["algo"] == "random init"
    assert methods["fomaml"]["checkpoint"].startswith(str(runs["fomaml"]))
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard scalars eval/<method>"
    assert (out / "eval.png").is_file()

    # Deterministic given the seed, and adding baselines does not change MAML's own numbers.
    alone = evaluate(runs["maml"], 3, 2, out_dir=tmp_path / "alone")
    assert alone.returns["maml"].tolist() == result["per_task"]["maml"]


def test_a_run_evaluated_on_its_own_is_named_by_its_algorithm(runs, tmp_path):
    assert list(evaluate(runs["pretrain"], 2, 1, out_dir=tmp_path / "p").returns) == ["pretrained"]
    oracle = evaluate(runs["oracle"], 2, 1, out_dir=tmp_path / "o")
    assert list(oracle.returns) == ["oracle"] and not oracle.protocol["methods"]["oracle"]["adapted"]
    assert list(evaluate(runs["fomaml"], 2, 1, out_dir=tmp_path / "f").returns) == ["fomaml"]


def test_a_loaded_oracle_acts_on_observation_and_task(runs):
    oracle = load(runs["oracle"])
    space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)
    action = oracle.act(np.zeros(2), action_space=space, task={"goal": [0.3, 0.3]})
    assert action.shape == (2,) and space.contains(action)
    with pytest.raises(ValueError, match="pass task="):
        oracle.act(np.zeros(2), action_space=space)
    with pytest.raises(ValueError, match="not adapted"):
        oracle.adapt("MetaRL/Navigation2D-v0")


def test_a_baseline_of_another_task_family_is_refused(runs, tmp_path, capsys):
    other = tmp_path / "cheetah"
    config = load_config(
        None,
        [
            "env.id=MetaRL/HalfCheetahVel-v0",
            "env.horizon=5",
            "inner.episodes_per_task=2",
            "outer.tasks_per_batch=2",
            "train.iterations=1",
            "train.num_threads=1",
            "policy.hidden_sizes=[8]",
            f"train.logdir={tmp_path}",
            "train.run_name=cheetah",
        ],
    )
    train(config, progress=False)
    code = main(["evaluate", str(runs["maml"]), "--tasks", "2", "--baselines", f"pretrained={other}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "was trained on MetaRL/HalfCheetahVel-v0, the evaluated run on MetaRL/Navigation2D-v0" in err

    # The same family with another goal distribution is a different task distribution.
    wide = _run(tmp_path, "wide", "env.kwargs={goal_high: 1.0}")
    assert main(["evaluate", str(runs["maml"]), "--tasks", "2", "--baselines", f"pretrained={wide}"]) == 2
    assert "different task distribution of MetaRL/Navigation2D-v0" in capsys.readouterr().err


def test_a_checkpoint_whose_observations_no_longer_fit_is_refused(runs, tmp_path, capsys):
    payload = load_checkpoint(runs["maml"])
    payload.pop("path"), payload.pop("format_version")
    payload["observation_shape"] = [3]
    save_checkpoint(tmp_path / "changed.pt", payload)
    with pytest.raises(CheckpointError, match=r"expects observations of shape \[3\], but MetaRL/Navigation2D-v0 gives"):
        load(tmp_path / "changed.pt")
    assert main(["evaluate", str(tmp_path / "changed.pt")]) == 2
    assert "was the environment changed since training?" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "entries, message",
    [
        (["pretrained"], "use 'random' or NAME=RUN"),
        (["x="], "needs a name and a run"),
        (["random", "random"], "used twice"),
        (["maml=somewhere"], "used twice"),
    ],
)
def test_baseline_entries_are_validated(runs, capsys, entries, message):
    assert main(["evaluate", str(runs["maml"]), "--baselines", *entries]) == 2
    assert message in capsys.readouterr().err


def test_baseline_lr_must_name_a_method(runs, capsys):
    assert main(["evaluate", str(runs["maml"]), "--baseline-lr", "pretrained=0.2"]) == 2
    assert "not a method of this evaluation" in capsys.readouterr().err
    assert main(["evaluate", str(runs["maml"]), "--baseline-lr", "random=fast"]) == 2
    assert "must look like METHOD=STEP_SIZE" in capsys.readouterr().err


def test_navigation_renders_goal_path_and_robot():
    env = gym.make("MetaRL/Navigation2D-v0", render_mode="rgb_array")
    env.reset(seed=0, options={"task": {"goal": [0.5, -0.5]}})
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    # The goal (0.5, -0.5) is red at column 191, row 191 (y grows upwards); the robot blue at the centre.
    assert tuple(frame[191, 191]) == (220, 40, 40)
    assert tuple(frame[127, 127]) == (40, 80, 220)
    env.step(np.array([0.1, 0.1], dtype=np.float32))
    assert tuple(env.render()[127, 127]) == (150, 150, 150)  # the path behind the robot
    plain = gym.make("MetaRL/Navigation2D-v0")
    plain.reset(seed=0)
    assert plain.render() is None


def test_videos_before_and_after_adaptation(runs, tmp_path, capsys):
    protocol = {"adapt_steps": 1, "lr": 0.1, "later_lr_scale": 0.5, "episodes_per_task": 2, "seed": 0}
    tasks = [{"goal": [0.2, 0.1]}]
    written = record_adaptation_videos(load(runs["maml"]), tasks, tmp_path, protocol)
    names = sorted(Path(f).name for f in written["files"])
    assert names == ["task00_after_adaptation-episode-0.mp4", "task00_before_adaptation-episode-0.mp4"]
    assert all(Path(f).stat().st_size > 0 for f in written["files"])


def test_videos_are_skipped_with_the_reason_when_they_cannot_be_recorded(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # as if not installed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = evaluate(runs["maml"], 2, 1, out_dir=tmp_path / "e", videos=1)
    assert result.protocol["videos"] == {"skipped": 'recording needs moviepy: pip install "metarl[video]"'}
    assert "videos skipped: recording needs moviepy" in out.getvalue()
    assert (tmp_path / "e" / "eval.json").is_file()  # the numbers are written all the same


def test_videos_are_skipped_when_the_environment_cannot_render(runs, tmp_path, capsys, monkeypatch):
    from envs.navigation import Navigation2DEnv

    def no_gl(self):
        raise RuntimeError("an OpenGL platform library has not been loaded")

    monkeypatch.setattr(Navigation2DEnv, "render", no_gl)
    protocol = {"adapt_steps": 1, "lr": 0.1, "later_lr_scale": 0.5, "episodes_per_task": 2, "seed": 0}
    skipped = record_adaptation_videos(load(runs["maml"]), [{"goal": [0.2, 0.1]}], tmp_path, protocol)
    assert "MetaRL/Navigation2D-v0 cannot render rgb_array frames here (RuntimeError" in skipped["skipped"]
    assert "MUJOCO_GL=egl" in skipped["skipped"]
    assert not list(tmp_path.iterdir())


def test_each_method_s_numbers_do_not_depend_on_the_other_methods(runs, tmp_path):
    one = evaluate(runs["maml"], 3, 2, out_dir=tmp_path / "a", baselines=[f"pretrained={runs['pretrain']}"])
    many = evaluate(
        runs["maml"],
        3,
        2,
        out_dir=tmp_path / "b",
        baselines=["random", f"oracle={runs['oracle']}", f"pretrained={runs['pretrain']}"],
    )
    assert many.returns["pretrained"].tolist() == one.returns["pretrained"].tolist()
    assert many.returns["maml"].tolist() == one.returns["maml"].tolist()
    # The same run under two names and the same step size: the same numbers (common random numbers).
    twice = evaluate(runs["maml"], 3, 2, out_dir=tmp_path / "c", baselines=[f"again={runs['maml']}"])
    assert twice.returns["again"].tolist() == twice.returns["maml"].tolist()


def test_eval_json_holds_paired_differences_against_the_evaluated_run(runs, tmp_path):
    result = evaluate(runs["maml"], 3, 1, out_dir=tmp_path, baselines=["random"])
    saved = json.loads((tmp_path / "eval.json").read_text())
    per_task = np.array(saved["per_task"]["maml"]) - np.array(saved["per_task"]["random"])
    pairs = saved["paired_differences"]["maml - random"]
    assert [round(p["mean"], 9) for p in pairs] == [round(x, 9) for x in per_task.mean(0)]
    assert all(p["ci95"] > 0 for p in pairs) and len(pairs) == 2
    assert result.returns["maml"].shape == (3, 2)


# Two-sided 95% Student-t quantiles t(0.975, dof) from the standard table (to 3 decimals).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 9: 2.262, 19: 2.093, 39: 2.023, 120: 1.980}


@pytest.mark.parametrize("dof, quantile", sorted(T_TABLE.items()))
def test_confidence_intervals_use_the_exact_t_quantile(dof, quantile):
    values = np.arange(dof + 1, dtype=float)  # n = dof + 1 values
    mean, half = mean_ci95(values)
    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    assert mean == pytest.approx(values.mean())
    assert half / standard_error == pytest.approx(quantile, abs=5e-4)


def test_paired_differences_and_tensorboard_use_the_same_intervals(tmp_path):
    returns = {"maml": np.array([[1.0, 5.0], [2.0, 3.0]]), "random": np.array([[0.0, 1.0], [1.0, 1.0]])}
    result = EvaluationResult("MetaRL/Navigation2D-v0", [{"goal": [0, 0]}, {"goal": [1, 1]}], returns, {})
    result.save(tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    # Two tasks: one degree of freedom, t = 12.706; differences after step 1 are 4 and 2.
    assert saved["paired_differences"]["maml - random"][1]["ci95"] == pytest.approx(12.7062 * 1.0, abs=1e-3)
    assert saved["summary"]["maml"][1]["ci95"] == pytest.approx(12.7062 * 1.0, abs=1e-3)


def _robot(action_shape=(2,), observation_shape=(2,)):
    class Robot(gym.Env):
        """A navigation-like robot whose observation or action layout may differ from training's."""

        observation_space = gym.spaces.Box(-np.inf, np.inf, observation_shape, np.float32)
        action_space = gym.spaces.Box(-0.1, 0.1, action_shape, np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(observation_shape, np.float32), {}

        def step(self, action):
            return np.zeros(observation_shape, np.float32), 0.0, False, False, {}

    return gym.wrappers.TimeLimit(Robot(), 5)


@pytest.mark.parametrize(
    "env, message",
    [
        (_robot(action_shape=(3,)), "this policy acts in Box(-0.1, 0.1, (2,), float32), the environment in"),
        (_robot(observation_shape=(4,)), "trained on observations of shape [2], the environment gives [4]"),
    ],
)
def test_adapt_refuses_an_environment_of_another_shape(runs, env, message):
    with pytest.raises(EnvError, match=re.escape(message)):
        load(runs["maml"]).adapt(env, episodes=2)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"episodes": 0}, "episodes must be an integer of at least 1, got 0"),
        ({"steps": -1}, "steps must be an integer of at least 0, got -1"),
        ({"episodes": 2.5}, "episodes must be an integer of at least 1, got 2.5"),
        ({"lr": float("nan")}, "lr must be a finite number >= 0, got nan"),
    ],
)
def test_adapt_refuses_meaningless_arguments(runs, arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load(runs["maml"]).adapt(_robot(), **arguments)


def test_act_refuses_an_observation_of_another_shape(runs):
    policy = load(runs["maml"])
    adapted = policy.adapt(_robot(), episodes=2, steps=0)  # steps=0: the meta-policy itself, for this robot
    assert all(torch.equal(adapted.params[k], policy.params[k]) for k in policy.params)
    assert adapted.act(np.zeros(2, np.float32)).shape == (2,)
    with pytest.raises(ValueError, match=re.escape("expected one observation of shape [2], got shape [3]")):
        adapted.act(np.zeros(3, np.float32))


def test_learned_step_sizes_are_used_and_reported_by_evaluation(tmp_path, capsys):
    run = _run(tmp_path, "meta_sgd", "inner.learn_lr=true")
    policy = load(run)
    assert policy.inner.learned and set(policy.inner.lr) == {n for n, _ in policy.policy.named_parameters()}
    saved = load_checkpoint(run)["step_sizes"]
    assert not all(torch.equal(a, torch.full_like(a, 0.1)) for a in saved.values())  # they moved from inner.lr
    assert main(["evaluate", str(run), "--tasks", "2", "--episodes", "2", "--adapt-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "maml: learned inner step sizes (Meta-SGD), mean" in out and "learned step sizes, × 0.5" in out
    summary = json.loads((run / "eval" / "eval.json").read_text())["protocol"]["methods"]["maml"]
    assert summary["lr"] == "learned" and summary["learned_lr"]["min"] < summary["learned_lr"]["max"]


def test_evaluate_can_take_a_run_s_best_checkpoint(runs, tmp_path, capsys):
    best = load_checkpoint(runs["maml"] / "checkpoints" / "best.pt")
    assert main(["evaluate", str(runs["maml"]), "--checkpoint", "best", "--tasks", "2", "--out", str(tmp_path)]) == 0
    protocol = json.loads((tmp_path / "eval.json").read_text())["protocol"]
    assert protocol["checkpoint"].endswith("best.pt") and protocol["iteration"] == best["iteration"]


def test_evaluation_settings_can_be_set_and_nothing_else(runs, tmp_path, capsys):
    out = {}
    for scale in ("0.5", "0.2"):
        args = ["evaluate", str(runs["maml"]), "--tasks", "2", "--adapt-steps", "2", "--out", str(tmp_path / scale)]
        assert main([*args, "--set", "evaluation.lr=0.3", "--set", f"evaluation.later_lr_scale={scale}"]) == 0
        out[scale] = json.loads((tmp_path / scale / "eval.json").read_text())
        assert out[scale]["protocol"]["lr"] == 0.3 and out[scale]["protocol"]["later_lr_scale"] == float(scale)
    assert "step size 0.3 then 0.06" in capsys.readouterr().out
    first, second = (out[s]["summary"]["maml"] for s in ("0.5", "0.2"))
    assert first[1] == second[1] and first[2] != second[2]  # only the later step's size changed
    assert main(["evaluate", str(runs["maml"]), "--set", "inner.lr=9"]) == 2
    assert "'inner.lr' cannot be set when evaluating" in capsys.readouterr().err
    assert main(["evaluate", str(runs["maml"]), "--set", "evaluation.later_lr_scal=0.2"]) == 2
    assert "later_lr_scal" in capsys.readouterr().err
