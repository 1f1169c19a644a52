"""The MAML core: inner step, meta-gradient (vs finite differences), Fisher products, TRPO step."""

import dataclasses

import pytest
import torch

from metarl.config import AdvantageConfig, OuterConfig
from metarl.episodes import Episodes
from metarl.functional import detach, distribution, flat, parameters_of, per_task
from metarl.inner import InnerLoop, inner_loss
from metarl.maml import MetaBatch, adapted_parameters, mean_kl, sample_meta_batch, surrogate_loss
from metarl.outer.trpo import TRPO, adaptation_curvature, adapted_fisher_product, conjugate_gradient
from metarl.policies import GaussianMLPPolicy
from metarl.sampler import Sampler
from metarl.tasks import TaskSplits


def synthetic_episodes(generator, tasks=2, episodes=3, horizon=4, obs_dim=2, act_dim=2, dtype=torch.float64):
    shape = (tasks, episodes, horizon)
    mask = torch.ones(shape, dtype=dtype)
    mask[:, 0, -1] = 0
    return Episodes(
        observations=torch.randn(*shape, obs_dim, generator=generator, dtype=dtype),
        actions=torch.randn(*shape, act_dim, generator=generator, dtype=dtype),
        rewards=torch.randn(shape, generator=generator, dtype=dtype) * mask,
        mask=mask,
        log_probs=torch.randn(shape, generator=generator, dtype=dtype) - 3,
        advantages=torch.randn(shape, generator=generator, dtype=dtype) * mask,
    )


def kl_hessian_product_by_double_backward(policy, batch, inner, generator):
    """A random v and ``∇²θ KL(π_θ'(θ_old) ‖ π_θ'(θ)) v`` straight from autograd, through the inner update."""
    params = list(policy.parameters())
    adapted = adapted_parameters(policy, batch, inner, create_graph=not inner.first_order)
    with torch.no_grad():
        old_pi = distribution(policy, detach(adapted), batch.outer.observations)
    kl = mean_kl(old_pi, distribution(policy, adapted, batch.outer.observations), batch.outer.mask)
    kl_grad = flat(torch.autograd.grad(kl, params, create_graph=True))
    v = torch.randn(kl_grad.shape, generator=generator, dtype=kl_grad.dtype)
    return v, flat(torch.autograd.grad(kl_grad @ v, params))


@pytest.fixture
def policy():
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 2, (8,), "tanh", init_std=0.7).double()


def test_inner_step_equals_manual_sgd(policy):
    g = torch.Generator().manual_seed(0)
    episodes = synthetic_episodes(g)
    adapted = InnerLoop(0.3).adapt(policy, per_task(parameters_of(policy), 2), [episodes], create_graph=False)
    for b in range(2):
        task_episodes = Episodes(**{k: None if v is None else v[b] for k, v in vars(episodes).items()})
        policy.zero_grad()
        inner_loss(policy, parameters_of(policy), task_episodes).backward()
        for name, p in policy.named_parameters():
            torch.testing.assert_close(adapted[name][b], p.detach() - 0.3 * p.grad)


def test_adapt_leaves_the_module_unchanged(policy):
    before = flat(list(policy.parameters())).clone()
    InnerLoop(0.5).adapt(
        policy,
        per_task(parameters_of(policy), 2),
        [synthetic_episodes(torch.Generator().manual_seed(1))],
        create_graph=True,
    )
    torch.testing.assert_close(flat(list(policy.parameters())), before)


def outer_objective(policy, batch, inner):
    adapted = adapted_parameters(policy, batch, inner, create_graph=not inner.first_order)
    return surrogate_loss(policy, adapted, batch.outer)


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(policy, steps):
    g = torch.Generator().manual_seed(2)
    batch = MetaBatch([0, 1], tuple(synthetic_episodes(g) for _ in range(steps)), synthetic_episodes(g), ())
    inner = InnerLoop(0.5)
    params = list(policy.parameters())
    grad = flat(torch.autograd.grad(outer_objective(policy, batch, inner), params))
    theta = flat(params).detach().clone()
    eps = 1e-6
    for _ in range(3):
        direction = torch.randn(theta.shape, generator=g, dtype=theta.dtype)

        def value_at(vector):
            with torch.no_grad():
                offset = 0
                for p in params:
                    p.copy_(vector[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
            return outer_objective(policy, batch, inner).item()

        numeric = (value_at(theta + eps * direction) - value_at(theta - eps * direction)) / (2 * eps)
        value_at(theta)
        assert grad @ direction == pytest.approx(numeric, rel=1e-6, abs=1e-9)

    first_order = flat(
        torch.autograd.grad(outer_objective(policy, batch, dataclasses.replace(inner, first_order=True)), params)
    )
    assert (first_order - grad).norm() > 1e-3 * grad.norm()


@pytest.mark.parametrize("steps,first_order", [(1, False), (2, False), (1, True)])
def test_adapted_fisher_product_equals_hessian_of_kl(policy, steps, first_order):
    g = torch.Generator().manual_seed(3)
    batch = MetaBatch([0, 1], tuple(synthetic_episodes(g) for _ in range(steps)), synthetic_episodes(g), ())
    inner = InnerLoop(0.5, first_order=first_order)
    v, reference = kl_hessian_product_by_double_backward(policy, batch, inner, g)
    product = adapted_fisher_product(policy, batch, inner, damping=0.1)(v)
    torch.testing.assert_close(product, reference + 0.1 * v)


@pytest.fixture(scope="module")
def navigation_batch():
    torch.manual_seed(0)
    sampler = Sampler("MetaRL/Navigation2D-v0", episodes_per_task=5, horizon=30, seed=0)
    policy = GaussianMLPPolicy(2, 2, (16, 16), "tanh")
    tasks = TaskSplits(sampler.env, 0, 1, 4).sample_train(4)
    batch = sample_meta_batch(sampler, policy, tasks, InnerLoop(0.5), AdvantageConfig(), steps=1)
    sampler.close()
    return policy, batch


def test_the_inner_policies_recorded_while_sampling_are_those_of_theta(navigation_batch):
    """ProMP's sampling policies come from the meta-batch while θ is unchanged: bit for bit the
    policy at θ on the pre-adaptation observations, cut from the graph; none once θ has moved."""
    policy, batch = navigation_batch
    (recorded,) = batch.inner_policies_at(policy, InnerLoop(0.5))
    with torch.no_grad():
        direct = distribution(policy, per_task(detach(parameters_of(policy)), 4), batch.inner[0].observations)
    assert torch.equal(recorded.mean, direct.mean) and torch.equal(recorded.stddev, direct.stddev)
    assert not recorded.mean.requires_grad
    moved = GaussianMLPPolicy(2, 2, (16, 16), "tanh")
    assert batch.inner_policies_at(moved, InnerLoop(0.5)) is None


def test_sampler_and_meta_loss_adapt_identically(navigation_batch):
    policy, batch = navigation_batch
    adapted = adapted_parameters(policy, batch, InnerLoop(0.5), create_graph=True)
    log_probs = distribution(policy, adapted, batch.outer.observations).log_prob(batch.outer.actions)
    ratio = torch.exp(log_probs - batch.outer.log_probs)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)


def test_the_outer_step_reuses_the_sampling_adaptation_only_while_theta_is_unchanged(navigation_batch):
    policy = GaussianMLPPolicy(2, 2, (16, 16), "tanh")
    policy.load_state_dict(navigation_batch[0].state_dict())
    batch, inner = navigation_batch[1], InnerLoop(0.5)

    def adapted_again():
        return detach(adapted_parameters(policy, batch, inner, create_graph=False))

    reused = adaptation_curvature(policy, batch, inner)
    for name, p in adapted_again().items():  # recorded while sampling: the very same numbers
        assert torch.equal(reused.adapted[name], p) and torch.equal(batch.adapted[-1][name], p)
    with torch.no_grad():
        params = per_task(detach(parameters_of(policy)), len(batch.tasks))
        assert torch.equal(batch.inner_losses[0], inner_loss(policy, params, batch.inner[0]))
        policy.log_std.add_(0.1)  # θ moves: the recorded θ' no longer belongs to it
    assert batch.adaptation_at(policy, inner) is None
    moved = adaptation_curvature(policy, batch, inner)
    for name, p in adapted_again().items():
        assert torch.equal(moved.adapted[name], p) and not torch.equal(batch.adapted[-1][name], p)


def test_trpo_step_respects_max_kl_and_improves_the_surrogate(navigation_batch):
    policy, batch = navigation_batch
    policy = GaussianMLPPolicy(2, 2, (16, 16), "tanh")
    policy.load_state_dict(navigation_batch[0].state_dict())
    inner = InnerLoop(0.5)
    outer = OuterConfig(max_kl=1e-3)
    with torch.no_grad():
        old_adapted = detach(adapted_parameters(policy, batch, inner, create_graph=False))
        old_pi = distribution(policy, old_adapted, batch.outer.observations)
        loss_before = surrogate_loss(policy, old_adapted, batch.outer).item()
    stats = TRPO(policy, inner, outer).step(batch)
    assert stats["optim/step_accepted"] == 1.0
    new_adapted = adapted_parameters(policy, batch, inner, create_graph=False)
    with torch.no_grad():
        kl = mean_kl(old_pi, distribution(policy, new_adapted, batch.outer.observations), batch.outer.mask).item()
        loss_after = surrogate_loss(policy, new_adapted, batch.outer).item()
    assert 0 < kl <= 1e-3
    assert kl == pytest.approx(stats["policy/kl"], rel=1e-4)
    assert loss_after < loss_before
    assert stats["loss/outer"] == pytest.approx(loss_before, abs=1e-6)


def test_packing_steps_leaves_the_losses_unchanged(policy):
    from metarl.episodes import pack_steps

    episodes = synthetic_episodes(torch.Generator().manual_seed(4))
    episodes = dataclasses.replace(episodes, mask=episodes.mask.clone())
    episodes.mask[1, 2, 2:] = 0  # ragged: one task has fewer valid steps
    packed = pack_steps(episodes)
    assert packed.observations.shape == (2, 1, int(episodes.mask[0].sum()), 2)
    assert packed.mask.sum() == episodes.mask.sum()
    params = per_task(parameters_of(policy), 2)
    torch.testing.assert_close(inner_loss(policy, params, packed), inner_loss(policy, params, episodes))
    torch.testing.assert_close(surrogate_loss(policy, params, packed), surrogate_loss(policy, params, episodes))


def test_packed_rows_come_in_a_few_lengths_and_their_padding_changes_no_loss(policy):
    from metarl.episodes import bucketed, pack_steps

    assert all(n <= bucketed(n) <= n * (1 + 1 / 32) for n in range(1, 10_000))
    assert [bucketed(n) for n in (1, 20, 63, 64, 65, 119)] == [1, 20, 63, 64, 66, 120]
    # 2D navigation with spare episodes: 2,038-2,099 valid steps per task, two row lengths
    assert {bucketed(n) for n in range(2038, 2100)} == {2048, 2112}
    episodes = synthetic_episodes(torch.Generator().manual_seed(5), episodes=10, horizon=13)
    episodes = dataclasses.replace(episodes, mask=episodes.mask.clone())
    episodes.mask[:, 1, -4:] = 0  # 10 x 13 steps, 5 of them masked: 125 valid, a row of 126
    packed = pack_steps(episodes)
    assert packed.observations.shape == (2, 1, 126, 2) and packed.mask.sum() == episodes.mask.sum() == 2 * 125
    params = per_task(parameters_of(policy), 2)
    torch.testing.assert_close(inner_loss(policy, params, packed), inner_loss(policy, params, episodes))
    torch.testing.assert_close(surrogate_loss(policy, params, packed), surrogate_loss(policy, params, episodes))


def test_conjugate_gradient_solves_and_returns_the_product():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.float64, generator=generator)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)  # symmetric positive definite
    b = torch.randn(6, dtype=torch.float64, generator=generator)
    x, ax = conjugate_gradient(lambda v: a @ v, b, iters=6)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    torch.testing.assert_close(ax, a @ x)  # b - r: the curvature xᵀAx costs no extra product
    x3, ax3 = conjugate_gradient(lambda v: a @ v, b, iters=3)  # truncated, as TRPO uses it
    torch.testing.assert_close(ax3, a @ x3)


def test_conjugate_gradient_of_a_zero_gradient_is_a_zero_step():
    # All advantages zero (e.g. a reward that never varies) give g = 0; the step is 0, not 0/0.
    x, ax = conjugate_gradient(lambda v: 2 * v, torch.zeros(4), iters=10)
    assert torch.equal(x, torch.zeros(4)) and torch.equal(ax, torch.zeros(4))
