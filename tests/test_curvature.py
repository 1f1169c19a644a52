"""The R-operator curvature products of the Gaussian MLP equal autograd's double backward."""

import pytest
import torch

import metarl.curvature
from metarl.curvature import GaussianMLPCurvature, autograd_hessian, supports_fast_curvature, task_chunks
from metarl.episodes import Episodes, pack_steps
from metarl.functional import detach, distribution, flat, parameters_of, per_task
from metarl.inner import InnerLoop, inner_loss
from metarl.maml import MetaBatch, mean_kl, meta_loss
from metarl.outer.trpo import (
    AdaptationCurvature,
    _inner_hessians,
    _kl_hessian,
    adaptation_curvature,
    adapted_fisher_product,
)
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy
from tests.test_maml import kl_hessian_product_by_double_backward, synthetic_episodes


def reference_products(policy, params, episodes):
    """Autograd's inner-loss Hessian and KL Hessian products at `params` on `episodes`."""
    old_pi = distribution(policy, params, episodes.observations)

    def kl(p):
        return mean_kl(old_pi, distribution(policy, p, episodes.observations), episodes.mask)

    return [autograd_hessian(lambda p: inner_loss(policy, p, episodes).sum(), params)], autograd_hessian(kl, params)


def perturbed_params(policy, tasks, generator):
    """Per-task parameters that differ between tasks (as adapted parameters do)."""
    return {
        name: p.detach() + 0.3 * torch.randn(tasks, *p.shape, generator=generator, dtype=p.dtype)
        for name, p in parameters_of(policy).items()
    }


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_inner_hessian_and_fisher_products_match_autograd(activation):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (7, 5), activation, init_std=0.8).double()
    g = torch.Generator().manual_seed(1)
    episodes = pack_steps(synthetic_episodes(g, tasks=3, obs_dim=3))
    params = perturbed_params(policy, 3, g)
    [inner_reference], fisher_reference = reference_products(policy, params, episodes)
    curvature = GaussianMLPCurvature(policy, params, episodes.observations)
    weights = episodes.mask / episodes.mask.sum((-2, -1), keepdim=True) / 3
    vectors = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params.values()]
    for fast, reference in (
        (curvature.reinforce_hessian_product(episodes), inner_reference),
        (curvature.fisher_product(weights), fisher_reference),
    ):
        expected = reference(vectors)
        assert flat(expected).abs().max() > 1e-3  # a real comparison, not of zeros
        torch.testing.assert_close(flat(fast(vectors)), flat(expected))


def test_other_policies_use_autograd_with_the_same_result():
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(2, 3, (6,), "tanh").double()
    assert not supports_fast_curvature(policy)
    g = torch.Generator().manual_seed(2)

    def categorical(episodes: Episodes) -> Episodes:
        actions = torch.randint(0, 3, episodes.mask.shape, generator=g)
        return Episodes(**{**episodes.__dict__, "actions": actions})

    batch = MetaBatch([0, 1], (categorical(synthetic_episodes(g)),), categorical(synthetic_episodes(g)), ())
    inner = InnerLoop(0.5)
    v, reference = kl_hessian_product_by_double_backward(policy, batch, inner, g)
    torch.testing.assert_close(adapted_fisher_product(policy, batch, inner, damping=0.0)(v), reference)


def test_a_clamped_log_std_has_no_curvature():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh", min_std=0.5).double()
    g = torch.Generator().manual_seed(3)
    episodes = pack_steps(synthetic_episodes(g))
    params = per_task(detach(parameters_of(policy)), 2)
    params = {**params, "log_std": torch.tensor([[-2.0, 0.1], [0.2, -3.0]], dtype=torch.float64)}  # 2 clamped
    [reference], _ = reference_products(policy, params, episodes)
    vectors = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params.values()]
    fast = GaussianMLPCurvature(policy, params, episodes.observations).reinforce_hessian_product(episodes)
    torch.testing.assert_close(flat(fast(vectors)), flat(reference(vectors)))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_products_over_groups_of_tasks_are_those_over_all_tasks_bit_for_bit(dtype):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (7, 5), "tanh", init_std=0.8)
    g = torch.Generator().manual_seed(5)
    episodes = pack_steps(synthetic_episodes(g, tasks=5, obs_dim=3, dtype=torch.float32))
    params = {k: v.float() for k, v in perturbed_params(policy, 5, g).items()}
    weights = episodes.mask / episodes.mask.sum((-2, -1), keepdim=True) / 5
    vectors = [torch.randn(p.shape, generator=g) for p in params.values()]
    steps = episodes.mask.shape[-1] + (-episodes.mask.shape[-1] % 64 if dtype else 0)
    assert task_chunks(5, steps, 2 * steps) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    whole = GaussianMLPCurvature(policy, params, episodes.observations, dtype, chunk_rows=10**9)
    groups = GaussianMLPCurvature(policy, params, episodes.observations, dtype, chunk_rows=2 * steps)
    assert len(whole.chunks) == 1 and len(groups.chunks) == 3
    for one, other in (
        (whole.fisher_product(weights), groups.fisher_product(weights)),
        (whole.reinforce_hessian_product(episodes), groups.reinforce_hessian_product(episodes)),
    ):
        assert all(torch.equal(a, b) for a, b in zip(one(vectors), other(vectors), strict=True))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_products_recomputing_the_slopes_are_those_keeping_them_bit_for_bit(monkeypatch, activation, dtype):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (7, 5), activation, init_std=0.8)
    g = torch.Generator().manual_seed(7)
    episodes = pack_steps(synthetic_episodes(g, tasks=5, obs_dim=3, dtype=torch.float32))
    params = {k: v.float() for k, v in perturbed_params(policy, 5, g).items()}
    weights = episodes.mask / episodes.mask.sum((-2, -1), keepdim=True) / 5
    vectors = [torch.randn(p.shape, generator=g) for p in params.values()]
    results = []
    for keep in (10**12, 0):  # φ′, δ and the tanh factors kept; then recomputed in every product
        monkeypatch.setattr(metarl.curvature, "KEEP_DERIVED_BYTES", keep)
        curvature = GaussianMLPCurvature(policy, params, episodes.observations, dtype, chunk_rows=1)
        assert (curvature.kept_slopes is not None) == bool(keep) and len(curvature.chunks) > 1
        products = (curvature.fisher_product(weights), curvature.reinforce_hessian_product(episodes))
        results.append([value for product in products for value in product(vectors)])
    assert all(torch.equal(kept, recomputed) for kept, recomputed in zip(*results, strict=True))


def test_the_meta_gradient_over_groups_of_tasks_is_the_one_over_all_tasks_bit_for_bit(monkeypatch):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (6, 5), "tanh", init_std=0.7)
    g = torch.Generator().manual_seed(6)
    inner, outer = (pack_steps(synthetic_episodes(g, tasks=5, dtype=torch.float32)) for _ in range(2))
    batch = MetaBatch(list(range(5)), (inner,), outer, ())
    results = []
    for rows in (10**9, 1):  # all tasks at once, then one task at a time
        monkeypatch.setattr(metarl.curvature, "CHUNK_ROWS", rows)
        curvature = adaptation_curvature(policy, batch, InnerLoop(0.5))
        loss, gradient = curvature.meta_gradient(policy, batch.outer)
        results.append((loss, gradient, curvature.kl_hessian_product(0.1)(torch.ones_like(gradient))))
    assert all(torch.equal(whole, chunked) for whole, chunked in zip(*results, strict=True))


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("estimator", ["reinforce", "lvc", "dice"])
def test_trpo_meta_gradient_through_the_jacobian_equals_autograd(steps, first_order, estimator):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (6, 5), "tanh", init_std=0.7).double()
    g = torch.Generator().manual_seed(4)
    batch = MetaBatch([0, 1], tuple(synthetic_episodes(g) for _ in range(steps)), synthetic_episodes(g), ())
    batch = MetaBatch(batch.tasks, tuple(pack_steps(e) for e in batch.inner), pack_steps(batch.outer), ())
    inner = InnerLoop(0.5, estimator=estimator, first_order=first_order)
    loss, _ = meta_loss(policy, batch, inner)
    expected = flat(torch.autograd.grad(loss, list(policy.parameters())))
    curvature = adaptation_curvature(policy, batch, inner)
    value, gradient = curvature.meta_gradient(policy, batch.outer)
    torch.testing.assert_close(value, loss.detach())
    torch.testing.assert_close(gradient, expected)
    # The trust region's KL Hessian through the adaptation, for every estimator's inner Hessian.
    v, reference = kl_hessian_product_by_double_backward(policy, batch, inner, g)
    torch.testing.assert_close(curvature.kl_hessian_product(0.0)(v), reference)


@pytest.mark.parametrize("backend", ["auto", "autograd"])
def test_a_curvature_stride_estimates_the_trust_region_on_every_nth_step_only(backend):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (6, 5), "tanh", init_std=0.7).double()
    g = torch.Generator().manual_seed(5)
    raw = [synthetic_episodes(g, horizon=9) for _ in range(3)]
    batch = MetaBatch([0, 1], tuple(pack_steps(e) for e in raw[:2]), pack_steps(raw[2]), ())
    inner = InnerLoop(0.5)
    full = adaptation_curvature(policy, batch, inner, backend)
    strided = adaptation_curvature(policy, batch, inner, backend, stride=3)

    # The meta-gradient, θ' and the old policy (for the line search's KL) still use every step.
    torch.testing.assert_close(strided.meta_gradient(policy, batch.outer), full.meta_gradient(policy, batch.outer))
    torch.testing.assert_close(strided.old_pi.mean, full.old_pi.mean)
    assert all(torch.equal(strided.adapted[k], full.adapted[k]) for k in full.adapted)

    # The products are those of the thinned episodes (every third step of each task), taken at the
    # θ^(j) and θ' that all steps gave.
    def every_third(e):
        return Episodes(**{k: None if v is None else v[:, :, ::3] for k, v in vars(e).items()})

    thinned = MetaBatch(batch.tasks, tuple(every_third(e) for e in batch.inner), every_third(batch.outer), ())
    theta = per_task(detach(parameters_of(policy)), 2)
    theta_1 = detach(inner.adapt(policy, theta, [batch.inner[0]], create_graph=False))
    reference = AdaptationCurvature(
        full.adapted,
        full.old_pi,
        inner.lr,
        _inner_hessians(policy, [theta, theta_1], thinned.inner, inner, backend),
        _kl_hessian(policy, full.adapted, thinned.outer, backend),
    )
    v = torch.randn(sum(p.numel() for p in policy.parameters()), generator=g, dtype=torch.float64)
    product = strided.kl_hessian_product(1e-3)(v)
    torch.testing.assert_close(product, reference.kl_hessian_product(1e-3)(v))
    assert not torch.allclose(product, full.kl_hessian_product(1e-3)(v))  # an estimate, not the full product


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_bfloat16_products_match_full_precision_to_bfloat16_accuracy(activation):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (32, 32), activation, init_std=0.8)
    g = torch.Generator().manual_seed(6)
    episodes = pack_steps(synthetic_episodes(g, tasks=3, obs_dim=3, horizon=40, dtype=torch.float32))
    params = perturbed_params(policy, 3, g)
    weights = episodes.mask / episodes.mask.sum((-2, -1), keepdim=True) / 3
    vectors = [torch.randn(p.shape, generator=g) for p in params.values()]
    full = GaussianMLPCurvature(policy, params, episodes.observations)
    low = GaussianMLPCurvature(policy, params, episodes.observations, torch.bfloat16)
    # 119 packed steps (3 episodes x 40, one masked), packed into rows of 120 (`bucketed`) and
    # padded with zero-weight steps to 128 for bfloat16, so that the matmul shapes repeat from one
    # iteration to the next
    assert [x.shape[1] for x in low.inputs] == [128] * 3 and full.inputs[0].shape[1] == 120
    for name in ("reinforce_hessian_product", "fisher_product"):
        arg = episodes if name == "reinforce_hessian_product" else weights
        exact, estimate = flat(getattr(full, name)(arg)(vectors)), flat(getattr(low, name)(arg)(vectors))
        assert estimate.dtype == torch.float32
        error = ((estimate - exact).norm() / exact.norm()).item()
        assert 1e-5 < error < 2e-2, (name, error)  # bfloat16 arithmetic: 8-bit mantissa, not exact


def test_bfloat16_precision_keeps_the_meta_gradient_and_the_adapted_policy_exact():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (16, 16), "relu", init_std=0.7)
    g = torch.Generator().manual_seed(7)
    raw = [synthetic_episodes(g, horizon=20, dtype=torch.float32) for _ in range(2)]
    batch = MetaBatch([0, 1], (pack_steps(raw[0]),), pack_steps(raw[1]), ())
    inner = InnerLoop(0.5)
    full = adaptation_curvature(policy, batch, inner)
    low = adaptation_curvature(policy, batch, inner, precision="bfloat16")
    assert all(torch.equal(low.adapted[k], full.adapted[k]) for k in full.adapted)
    loss, gradient = full.meta_gradient(policy, batch.outer)
    low_loss, low_gradient = low.meta_gradient(policy, batch.outer)
    assert torch.equal(low_loss, loss) and torch.equal(low_gradient, gradient)
    v = torch.randn(gradient.shape, generator=g)
    exact, estimate = full.kl_hessian_product(1e-5)(v), low.kl_hessian_product(1e-5)(v)
    assert 1e-5 < ((estimate - exact).norm() / exact.norm()).item() < 2e-2


def test_bfloat16_precision_needs_the_gaussian_mlp_products():
    policy = CategoricalMLPPolicy(2, 3, (6,), "tanh")
    g = torch.Generator().manual_seed(8)
    inner_episodes, outer_episodes = (synthetic_episodes(g, dtype=torch.float32) for _ in range(2))
    batch = MetaBatch([0, 1], (inner_episodes,), outer_episodes, ())
    with pytest.raises(ValueError, match="curvature_precision='bfloat16' needs metarl's Gaussian MLP"):
        adaptation_curvature(policy, batch, InnerLoop(0.5), precision="bfloat16")
