"""The batched sampler: shapes, masks, per-task parameters, rewards matching the env's definition."""

import copy

import numpy as np
import pytest
import torch

from metarl.config import load_config
from metarl.errors import ConfigError
from metarl.functional import parameters_of, per_task
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Sampler, concat_episodes

GOALS = [{"goal": [0.3, -0.2]}, {"goal": [-0.4, 0.1]}, {"goal": [0.0, 0.05]}]


def make_sampler(seed=0, episodes=4, horizon=25):
    return Sampler("MetaRL/Navigation2D-v0", episodes_per_task=episodes, horizon=horizon, seed=seed)


def test_shapes_and_rewards_follow_the_environment_definition():
    torch.manual_seed(0)
    sampler = make_sampler()
    policy = GaussianMLPPolicy(2, 2, (8,))
    episodes = sampler.sample(policy, parameters_of(policy), GOALS)
    assert episodes.observations.shape == (3, 4, 25, 2)
    assert episodes.actions.shape == (3, 4, 25, 2)
    assert episodes.rewards.shape == episodes.mask.shape == episodes.log_probs.shape == (3, 4, 25)
    # Replay the point robot: actions are normalised, position += 0.1 * clip(a, -1, 1).
    velocity = 0.1 * episodes.actions.clamp(-1, 1).double()
    positions = torch.cumsum(velocity, dim=2)
    goals = torch.tensor([g["goal"] for g in GOALS], dtype=torch.float64)[:, None, None, :]
    expected_rewards = -(positions - goals).norm(dim=-1)
    torch.testing.assert_close(episodes.rewards.double(), expected_rewards * episodes.mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        episodes.observations[:, :, 1:].double(), positions[:, :, :-1].float().double(), atol=1e-5, rtol=0
    )
    assert torch.all(episodes.observations[:, :, 0] == 0)
    assert episodes.num_steps == int(episodes.mask.sum())


def test_numpy_and_torch_forwards_sample_the_same_episodes_within_float32_rounding():
    """metarl's Gaussian policy steps in numpy (`numpy_actor`); a policy without one (a user's, or
    one on a GPU) steps with torch's forward: the same noise, the same episodes up to rounding."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (16, 16))
    params = {k: v + 0.3 * torch.randn_like(v) for k, v in per_task(parameters_of(policy), 3).items()}
    runs = []
    for numpy_actor in (True, False):
        module = policy
        if not numpy_actor:
            module = copy.deepcopy(policy)
            module.numpy_actor = None  # as a policy without a numpy version
        torch.manual_seed(1)
        episodes = make_sampler(seed=5).sample(module, params, GOALS)
        runs.append((episodes, torch.rand(2)))
    (numpy_run, after_numpy), (torch_run, after_torch) = runs
    assert torch.equal(after_numpy, after_torch)  # the same noise drawn from the generator
    assert torch.equal(numpy_run.mask, torch_run.mask)
    for field in ("observations", "actions", "rewards", "log_probs"):
        torch.testing.assert_close(getattr(numpy_run, field), getattr(torch_run, field), rtol=1e-5, atol=1e-5)
    assert not torch.equal(numpy_run.actions, torch_run.actions)  # two arithmetics, not one path twice


def test_mask_stops_after_termination():
    torch.manual_seed(1)
    sampler = make_sampler(episodes=2, horizon=30)
    policy = GaussianMLPPolicy(2, 2, (8,), init_std=1e-3)
    # A policy whose mean action is +1 in both axes moves 0.1 per step: it reaches (0.2, 0.2) at step 2.
    params = {k: torch.zeros_like(v) for k, v in parameters_of(policy).items()}
    params["mean.layers.1.bias"] = torch.full((2,), 5.0)
    params["log_std"] = torch.full((2,), -9.0)
    episodes = sampler.sample(policy, params, [{"goal": [0.2, 0.2]}, {"goal": [-0.4, 0.1]}])
    assert episodes.rewards.shape[-1] == 30
    assert episodes.mask[0, 0].tolist() == [1.0, 1.0] + [0.0] * 28  # goal reached at step 2
    assert episodes.mask[1, 0].tolist() == [1.0] * 30  # never reached: runs to the horizon
    assert torch.all(episodes.rewards[0, :, 2:] == 0)
    torch.testing.assert_close(episodes.returns[0], torch.full((2,), -(0.1 * 2**0.5)), atol=1e-4, rtol=0)


def test_per_task_parameters_act_per_task():
    torch.manual_seed(2)
    sampler = make_sampler(episodes=3, horizon=5)
    policy = GaussianMLPPolicy(2, 2, (8,))
    params = per_task({k: torch.zeros_like(v) for k, v in parameters_of(policy).items()}, 3)
    params = {k: v.clone() for k, v in params.items()}
    params["log_std"][:] = -9.0
    params["mean.layers.1.bias"][0] = torch.tensor([1.0, 0.0])
    params["mean.layers.1.bias"][1] = torch.tensor([0.0, -1.0])
    params["mean.layers.1.bias"][2] = torch.tensor([-0.5, 0.5])
    episodes = sampler.sample(policy, params, GOALS)
    expected = torch.tensor([[0.1, 0.0], [0.0, -0.1], [-0.05, 0.05]])
    torch.testing.assert_close(episodes.observations[:, :, 1], expected[:, None, :].expand(3, 3, 2), atol=1e-4, rtol=0)


def test_seeded_sampling_is_reproducible():
    def run():
        torch.manual_seed(5)
        sampler = make_sampler(seed=3)
        policy = GaussianMLPPolicy(2, 2, (8,))
        return sampler.sample(policy, parameters_of(policy), GOALS)

    a, b = run(), run()
    torch.testing.assert_close(a.actions, b.actions)
    torch.testing.assert_close(a.rewards, b.rewards)


def test_for_env_runs_episodes_on_an_existing_instance():
    import gymnasium as gym

    import envs  # noqa: F401  (registers MetaRL/ ids)

    torch.manual_seed(0)
    env = gym.make("MetaRL/Navigation2D-v0", max_episode_steps=10)
    env.unwrapped.task = {"goal": [0.1, 0.1]}
    sampler = Sampler.for_env(env)
    policy = GaussianMLPPolicy(2, 2, (8,))
    batch = concat_episodes([sampler.sample(policy, parameters_of(policy), None) for _ in range(3)])
    assert batch.rewards.shape == (1, 3, 10)
    assert np.isclose(batch.mask.sum().item(), 30) or batch.mask.sum().item() < 30
    assert env.unwrapped.task.goal == (0.1, 0.1)


def test_step_budget_gives_tasks_with_short_episodes_more_episodes():
    torch.manual_seed(1)
    sampler = Sampler("MetaRL/Navigation2D-v0", episodes_per_task=2, horizon=30, seed=0, batch_unit="steps")
    policy = GaussianMLPPolicy(2, 2, (8,), init_std=1e-3)
    params = {k: torch.zeros_like(v) for k, v in parameters_of(policy).items()}
    params["mean.layers.1.bias"] = torch.full((2,), 5.0)  # full speed along (1, 1): goal (0.2, 0.2) in 2 steps
    params["log_std"] = torch.full((2,), -9.0)
    episodes = sampler.sample(policy, params, [{"goal": [0.2, 0.2]}, {"goal": [-0.4, 0.1]}])
    valid = episodes.mask[..., 0]
    # Budget: 2 episodes x 30 steps = 60 steps per task.
    assert valid[0].sum() == 30 and episodes.mask[0].sum() == 60  # thirty 2-step episodes
    assert valid[1].sum() == 2 and episodes.mask[1].sum() == 60  # two full-length episodes, then padding
    torch.testing.assert_close(episodes.mean_returns[0], torch.tensor(-(0.1 * 2**0.5)), atol=1e-4, rtol=0)
    assert episodes.mean_returns[1] == pytest.approx(episodes.returns[1, :2].mean().item())


def test_spare_episodes_fill_a_step_budget_in_one_round():
    """``spare_episodes``: the episodes a second round would add run in the first round's lockstep;
    spares a task does not need are dropped, so the budget and its accounting are unchanged."""
    policy = GaussianMLPPolicy(2, 2, (8,), init_std=1e-3)
    params = {k: torch.zeros_like(v) for k, v in parameters_of(policy).items()}
    params["mean.layers.1.bias"] = torch.full((2,), 5.0)  # goal (0.2, 0.2) in 2 steps, as above
    params["log_std"] = torch.full((2,), -9.0)
    tasks = [{"goal": [0.2, 0.2]}, {"goal": [-0.4, 0.1]}]
    rounds = {}
    for spare in (0, 28):
        torch.manual_seed(1)
        sampler = Sampler(
            "MetaRL/Navigation2D-v0", episodes_per_task=2, horizon=30, seed=0, batch_unit="steps", spare_episodes=spare
        )
        rounds[spare] = calls = []
        original = sampler._round

        def counted(*args, calls=calls, original=original, **kwargs):
            calls.append(len(args[2]))  # the round's tasks
            return original(*args, **kwargs)

        sampler._round = counted
        episodes = sampler.sample(policy, params, tasks)
        valid = episodes.mask[..., 0]
        assert valid[0].sum() == 30 and episodes.mask[0].sum() == 60  # thirty 2-step episodes
        assert valid[1].sum() == 2 and episodes.mask[1].sum() == 60  # two full-length episodes; spares dropped
        assert episodes.num_steps == 120
    # Without spares: a round of both tasks, then 14 more rounds of task 0's 2-step episodes (2 per round).
    assert rounds[0] == [2] + [1] * 14
    assert rounds[28] == [2]


def test_spare_episodes_are_kept_in_order_while_a_task_s_budget_has_room():
    """Random episode lengths: the kept episodes are a prefix, each started before the budget ran
    out, and together they hold at least the budget."""
    torch.manual_seed(0)
    sampler = Sampler(
        "MetaRL/Navigation2D-v0", episodes_per_task=4, horizon=20, seed=3, batch_unit="steps", spare_episodes=6
    )
    # Steps of about 0.1 along (1, 1) with a little noise: a goal on that grid is hit or missed.
    policy = GaussianMLPPolicy(2, 2, (8,), init_std=0.02)
    params = {k: v.detach() for k, v in parameters_of(policy).items()}
    params["mean.layers.1.bias"] = torch.tensor([1.02, 1.02])
    goals = [{"goal": [g, g]} for g in (0.1, 0.2, 0.3, 0.4)]
    episodes = sampler.sample(policy, params, goals)
    lengths = episodes.mask.sum(-1)  # [task, episode]; padding episodes have length 0
    mixed = 0
    for task_lengths in lengths:
        kept = task_lengths[task_lengths > 0]
        assert (task_lengths[: len(kept)] > 0).all()  # a prefix
        assert kept.sum() >= 80 and kept[:-1].sum() < 80  # the last one started within the budget
        mixed += len(set(kept.tolist())) > 1
    assert mixed >= 1 and (lengths > 0).sum(1).max() > 10  # short and long episodes; more than one round


def test_spare_episodes_are_validated_and_counted_against_max_copies():
    with pytest.raises(ConfigError, match="'env.spare_episodes'.*at least 0"):
        load_config("experiments/smoke.yaml", ["env.spare_episodes=-1"])
    # Smoke: 4 episodes per task; counted in steps, 2 spares need rounds of at least 6 copies.
    settings = ["env.batch_unit=steps", "env.spare_episodes=2", "evaluation.episodes_per_task=4"]
    with pytest.raises(ConfigError, match="env.max_copies.*at least 6"):
        load_config("experiments/smoke.yaml", [*settings, "env.max_copies=5"])
    assert load_config("experiments/smoke.yaml", [*settings, "env.max_copies=6"]).env.spare_episodes == 2
