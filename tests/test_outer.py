"""The outer algorithms' pieces: PPO's clipped surrogate, ProMP's KL penalty, Meta-SGD's learned step sizes."""

import dataclasses

import pytest
import torch

from metarl.config import OuterConfig
from metarl.episodes import Episodes, pack_steps
from metarl.functional import detach, distribution, flat, parameters_of, per_task
from metarl.inner import InnerLoop, LearnedStepSizes
from metarl.maml import MetaBatch, adapted_parameters, mean_kl, meta_loss
from metarl.outer.ppo import clipped_surrogate
from metarl.outer.promp import ProMP, adapt_kl_coef
from metarl.outer.trpo import adaptation_curvature
from metarl.policies import GaussianMLPPolicy
from tests.test_maml import synthetic_episodes


def packed_batch(g: torch.Generator, steps: int = 1) -> MetaBatch:
    episodes = [pack_steps(synthetic_episodes(g)) for _ in range(steps + 1)]
    return MetaBatch([0, 1], tuple(episodes[:-1]), episodes[-1], ())


@pytest.fixture
def policy():
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 2, (6,), "tanh", init_std=0.7).double()


# ---- PPO's clipped surrogate


def test_the_clipped_surrogate_equals_the_unclipped_one_at_the_sampling_parameters(policy):
    g = torch.Generator().manual_seed(1)
    episodes = pack_steps(synthetic_episodes(g))
    params = per_task(parameters_of(policy), 2)
    log_probs = distribution(policy, params, episodes.observations).log_prob(episodes.actions)
    sampled = dataclasses.replace(episodes, log_probs=log_probs.detach())
    clipped = clipped_surrogate(log_probs, sampled, clip=0.2)
    ratio = torch.exp(log_probs - sampled.log_probs)
    unclipped = -((ratio * sampled.advantages * sampled.mask).sum((-2, -1)) / sampled.mask.sum((-2, -1))).mean()
    assert clipped.item() == pytest.approx(unclipped.item(), abs=1e-15)
    grad_clipped = torch.autograd.grad(clipped, list(policy.parameters()), retain_graph=True)
    grad_unclipped = torch.autograd.grad(unclipped, list(policy.parameters()))
    torch.testing.assert_close(flat(grad_clipped), flat(grad_unclipped))


def test_steps_outside_the_clip_range_have_no_gradient():
    # Ratios 1.5 (A > 0: clipped), 1.5 (A < 0: not clipped), 0.5 (A < 0: clipped), 0.5 (A > 0: not), 1.1 (inside).
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    shape = (1, 1, 5)
    episodes = Episodes(
        observations=torch.zeros(*shape, 1),
        actions=torch.zeros(*shape, 1),
        rewards=torch.zeros(shape),
        mask=torch.ones(shape, dtype=torch.float64),
        log_probs=torch.zeros(shape, dtype=torch.float64),
        advantages=advantages.view(shape),
    )
    log_probs = torch.log(ratios).view(shape).requires_grad_()
    (gradient,) = torch.autograd.grad(clipped_surrogate(log_probs, episodes, clip=0.2), log_probs)
    assert gradient.flatten()[[0, 2]].tolist() == [0.0, 0.0]
    assert (gradient.flatten()[[1, 3, 4]] != 0).all()


# ---- ProMP's KL penalty


def test_the_kl_penalty_is_zero_with_zero_gradient_at_the_sampling_parameters(policy):
    g = torch.Generator().manual_seed(2)
    batch = packed_batch(g, steps=2)
    promp = ProMP(policy, InnerLoop(0.3, estimator="lvc"), OuterConfig(algo="promp", kl_coef=0.7))
    sampling = promp.prepare(batch)
    _, policies = promp._adaptation(batch)
    penalty = promp.penalty(batch, policies, sampling)
    (gradients) = torch.autograd.grad(penalty, list(policy.parameters()))
    assert penalty.item() == pytest.approx(0.0, abs=1e-12)
    assert flat(gradients).abs().max().item() < 1e-12
    # Away from the sampling parameters it is positive and pulls back.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05)
    moved = promp.penalty(batch, promp._adaptation(batch)[1], sampling)
    assert moved.item() > 1e-4


def test_the_kl_coefficient_halves_below_and_doubles_above_the_target():
    assert adapt_kl_coef(0.01, kl=0.001, target=0.01) == 0.005  # below target / 1.5
    assert adapt_kl_coef(0.01, kl=0.02, target=0.01) == 0.02  # above 1.5 × target
    assert adapt_kl_coef(0.01, kl=0.009, target=0.01) == 0.01  # within: kept
    assert adapt_kl_coef(0.01, kl=0.0149, target=0.01) == 0.01


def test_promp_adapts_its_coefficients_when_asked(policy):
    g = torch.Generator().manual_seed(3)
    batch = packed_batch(g, steps=1)
    config = OuterConfig(algo="promp", kl_coef=0.01, adaptive_kl=True, kl_target=1.0, epochs=2)
    promp = ProMP(policy, InnerLoop(0.1, estimator="lvc"), config)
    stats = promp.step(batch)
    assert stats["optim/kl_coef"] == 0.01 and stats["policy/inner_kl"] < 1.0 / 1.5
    assert promp.kl_coefs == [0.005]  # halved: the inner KL stayed far below the target
    assert promp.state_dict()["kl_coefs"] == [0.005]


# ---- Meta-SGD


def learned(policy, value: float) -> tuple[LearnedStepSizes, InnerLoop]:
    step_sizes = LearnedStepSizes(policy, value)
    return step_sizes, InnerLoop(step_sizes.as_params())


def test_step_sizes_frozen_at_one_value_give_plain_maml_bit_for_bit(policy):
    g = torch.Generator().manual_seed(4)
    batch = packed_batch(g, steps=2)
    _, meta_sgd = learned(policy, 0.3)
    plain_loss, _ = meta_loss(policy, batch, InnerLoop(0.3))
    sgd_loss, _ = meta_loss(policy, batch, meta_sgd)
    assert torch.equal(plain_loss, sgd_loss)
    plain = torch.autograd.grad(plain_loss, list(policy.parameters()))
    sgd = torch.autograd.grad(sgd_loss, list(policy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(plain, sgd, strict=True))


def test_the_gradient_in_the_step_sizes_matches_finite_differences(policy):
    g = torch.Generator().manual_seed(5)
    batch = packed_batch(g, steps=2)
    step_sizes, inner = learned(policy, 0.3)
    with torch.no_grad():  # different step sizes per entry
        for a in step_sizes.alphas:
            a.mul_(torch.rand(a.shape, generator=g, dtype=a.dtype) + 0.5)
    loss, _ = meta_loss(policy, batch, inner)
    gradient = flat(torch.autograd.grad(loss, list(step_sizes.alphas)))
    alphas = flat(list(step_sizes.alphas)).detach().clone()

    def value_at(vector):
        with torch.no_grad():
            offset = 0
            for a in step_sizes.alphas:
                a.copy_(vector[offset : offset + a.numel()].view_as(a))
                offset += a.numel()
        return meta_loss(policy, batch, inner)[0].item()

    for _ in range(3):
        direction = torch.randn(alphas.shape, generator=g, dtype=alphas.dtype)
        eps = 1e-6
        numeric = (value_at(alphas + eps * direction) - value_at(alphas - eps * direction)) / (2 * eps)
        assert gradient @ direction == pytest.approx(numeric, rel=1e-6, abs=1e-10)
    value_at(alphas)


@pytest.mark.parametrize("steps,first_order", [(1, False), (2, False), (1, True)])
def test_trpo_with_learned_step_sizes_uses_the_exact_gradient_and_kl_hessian_in_theta_and_alpha(
    policy, steps, first_order
):
    g = torch.Generator().manual_seed(6)
    batch = packed_batch(g, steps=steps)
    step_sizes, inner = learned(policy, 0.3)
    inner = dataclasses.replace(inner, first_order=first_order)
    with torch.no_grad():
        for a in step_sizes.alphas:
            a.mul_(torch.rand(a.shape, generator=g, dtype=a.dtype) + 0.5)
    meta = [*policy.parameters(), *step_sizes.alphas]

    # Autograd, straight through the adaptation, in (θ, α).
    loss, _ = meta_loss(policy, batch, inner)
    expected_gradient = flat(torch.autograd.grad(loss, meta))
    adapted = adapted_parameters(policy, batch, inner, create_graph=not first_order)
    with torch.no_grad():
        old_pi = distribution(policy, detach(adapted), batch.outer.observations)
    kl = mean_kl(old_pi, distribution(policy, adapted, batch.outer.observations), batch.outer.mask)
    kl_gradient = flat(torch.autograd.grad(kl, meta, create_graph=True))
    v = torch.randn(kl_gradient.shape, generator=g, dtype=kl_gradient.dtype)
    expected_product = flat(torch.autograd.grad(kl_gradient @ v, meta))

    curvature = adaptation_curvature(policy, batch, inner)
    value, gradient = curvature.meta_gradient(policy, batch.outer)
    torch.testing.assert_close(value, loss.detach())
    torch.testing.assert_close(gradient, expected_gradient)
    torch.testing.assert_close(curvature.kl_hessian_product(0.0)(v), expected_product)
    assert expected_gradient[-sum(a.numel() for a in step_sizes.alphas) :].abs().max() > 1e-6  # α really moves


def test_bfloat16_epochs_give_nearly_the_full_precision_meta_gradient():
    """``outer.precision: bfloat16`` (PPO/ProMP) changes the arithmetic, not the direction: ~2 digits."""
    g = torch.Generator().manual_seed(7)
    episodes = [_as_float(pack_steps(synthetic_episodes(g, episodes=10, horizon=25))) for _ in range(2)]
    batch = MetaBatch([0, 1], (episodes[0],), episodes[1], ())
    torch.manual_seed(0)
    reference = GaussianMLPPolicy(2, 2, (32, 32), "tanh", init_std=0.7)
    gradients = {}
    for precision in ("full", "bfloat16"):
        model = GaussianMLPPolicy(2, 2, (32, 32), "tanh", init_std=0.7)
        model.load_state_dict(reference.state_dict())
        config = OuterConfig(algo="promp", epochs=1, precision=precision)
        ProMP(model, InnerLoop(0.3), config).step(batch)
        gradients[precision] = flat([p.grad for p in model.parameters()])  # the one epoch's meta-gradient
    full, low = gradients["full"], gradients["bfloat16"]
    assert (full @ low / full.norm() / low.norm()).item() > 0.999 and not torch.equal(full, low)


def _as_float(episodes: Episodes) -> Episodes:
    return Episodes(
        **{k: v.float() if v is not None and v.is_floating_point() else v for k, v in vars(episodes).items()}
    )
