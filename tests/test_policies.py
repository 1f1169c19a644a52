"""Policies evaluated with explicit (and per-task) parameters."""

import numpy as np
import torch
from torch.distributions import Categorical

from metarl.functional import distribution, parameters_of, per_task
from metarl.policies import BatchedLinear, CategoricalMLPPolicy, GaussianMLPPolicy, batched_affine


def test_functional_call_equals_module():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (8, 8), "tanh", init_std=0.5)
    obs = torch.randn(5, 3)
    direct, functional = policy(obs), distribution(policy, parameters_of(policy), obs)
    torch.testing.assert_close(direct.mean, functional.mean)
    torch.testing.assert_close(direct.stddev, torch.full((5, 2), 0.5))
    torch.testing.assert_close(functional.stddev, torch.full((5, 2), 0.5))


def test_forward_with_equals_functional_call_bit_for_bit():
    """`distribution` evaluates metarl's policies through ``forward_with``: the same values and
    gradients (also second order) as ``torch.func.functional_call``."""
    torch.manual_seed(3)
    for policy in (GaussianMLPPolicy(3, 2, (8, 8), "relu"), CategoricalMLPPolicy(3, 4, (8,), "tanh")):
        theta = per_task(parameters_of(policy), 4)
        params = {k: (v + 0.1 * torch.randn_like(v)).requires_grad_() for k, v in theta.items()}
        obs, results = torch.randn(4, 6, 3), []
        actions = policy(obs).sample()
        for evaluate in (distribution, lambda m, p, o: torch.func.functional_call(m, p, (o,))):
            loss = evaluate(policy, params, obs).log_prob(actions).square().sum()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            second = torch.autograd.grad(sum(g.square().sum() for g in grads), list(params.values()))
            results.append([loss, *grads, *second])
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)


def test_per_task_parameters_equal_a_loop_over_tasks():
    torch.manual_seed(1)
    for policy in (GaussianMLPPolicy(3, 2, (8,), "relu"), CategoricalMLPPolicy(3, 4, (8,), "tanh")):
        params = per_task(parameters_of(policy), 4)
        params = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}  # make tasks differ
        obs = torch.randn(4, 6, 5, 3)  # [tasks, episodes, time, obs]
        batched = distribution(policy, params, obs)
        for b in range(4):
            single = distribution(policy, {k: v[b] for k, v in params.items()}, obs[b])
            if isinstance(single, Categorical):
                torch.testing.assert_close(batched.logits[b], single.logits)
            else:
                torch.testing.assert_close(batched.mean[b], single.mean)
                torch.testing.assert_close(batched.stddev[b], single.stddev.expand_as(batched.stddev[b]))


def test_numpy_actor_acts_as_the_torch_distribution_within_float32_rounding():
    """The sampler's numpy forward (`NumpyGaussianActor`): the module's mean, ε·σ + μ as actions
    and their log-probabilities as ``Normal.log_prob``, also with a clamped log-std."""
    torch.manual_seed(4)
    for activation in ("tanh", "relu"):
        policy = GaussianMLPPolicy(5, 3, (16, 8), activation, min_std=0.2)
        params = {k: v + 0.3 * torch.randn_like(v) for k, v in per_task(parameters_of(policy), 4).items()}
        params["log_std"] = torch.tensor([[-3.0, 0.1, 0.5]] * 4)  # the first below log(min_std)
        obs, noise = torch.randn(4, 6, 5), torch.randn(4, 6, 3)
        with torch.no_grad():
            pi = distribution(policy, params, obs)
            expected = noise * pi.base_dist.scale + pi.base_dist.loc
            expected_log_probs = pi.log_prob(expected)
        actor = policy.numpy_actor(params)
        actions, log_probs = actor.act(obs.numpy(), noise.numpy())
        assert actions.dtype == log_probs.dtype == np.float32
        np.testing.assert_allclose(actor.mean(obs.numpy()), pi.mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(actions, expected.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(log_probs, expected_log_probs.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(actor.std[:, 0], np.tile([0.2, np.exp(0.1), np.exp(0.5)], (4, 1)), rtol=1e-6)
    assert policy.numpy_actor(parameters_of(policy)) is None  # no task dimension: torch's forward


def test_module_parameters_are_not_mutated_by_functional_evaluation():
    policy = GaussianMLPPolicy(2, 2, (4,))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    params = {k: v * 2 for k, v in parameters_of(policy).items()}
    distribution(policy, params, torch.zeros(1, 2)).mean.sum().backward()
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_batched_linear_has_autograds_first_and_second_derivatives():
    """`BatchedLinear`'s hand-written backward gives the gradients, and the gradients of the
    gradients (second-order MAML), of autograd's own `baddbmm`."""
    g = torch.Generator().manual_seed(5)
    x, weight, bias = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((3, 7, 4), (3, 5, 4), (3, 5)))
    upstream = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    results = []
    for layer in (BatchedLinear.apply, batched_affine):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = layer(torch.tanh(inputs[0]), inputs[1], inputs[2])
        first = torch.autograd.grad((torch.tanh(out) * upstream).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum(f.square().sum() for f in first), inputs)
        results.append([out, *first, *second])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_second_order_gradients_of_a_batched_layer_are_contiguous():
    """The meta-gradient's pass through the inner step's weight gradient returns the activations'
    gradient contiguous (autograd's `baddbmm` returns it transposed, and adding it to the
    activations' other gradient is then several times slower)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 50, 4, generator=g).requires_grad_()
    weight, bias = torch.randn(3, 5, 4, generator=g).requires_grad_(), torch.zeros(3, 5, requires_grad=True)
    contiguous = []
    for layer in (BatchedLinear.apply, batched_affine):
        (weight_grad,) = torch.autograd.grad(layer(x, weight, bias).square().sum(), [weight], create_graph=True)
        (x_grad,) = torch.autograd.grad(weight_grad.sum(), [x])
        contiguous.append(x_grad.is_contiguous())
    assert contiguous == [True, False]


def test_batched_linear_under_bfloat16_autocast_has_the_second_derivatives_of_autocast():
    """Under bfloat16 autocast (``outer.precision``): the same output as autocast's `baddbmm`,
    float32 gradients for float32 parameters, and second derivatives that agree with autocast's own
    to bfloat16 accuracy (the casts inside the layer are differentiated too)."""
    g = torch.Generator().manual_seed(7)
    x, weight, bias = (torch.randn(*s, generator=g) for s in ((2, 60, 3), (2, 8, 3), (2, 8)))
    w2 = torch.randn(2, 4, 8, generator=g)
    results = []
    for layer in (BatchedLinear.apply, batched_affine):
        params = [t.clone().requires_grad_() for t in (weight, bias, w2)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = torch.tanh(layer(x, params[0], params[1]))
            out = layer(hidden, params[2], torch.zeros(2, 4))
            first = torch.autograd.grad(out.float().square().sum(), params, create_graph=True)
        sum(f.square().sum() for f in first).backward()  # second order, outside autocast
        results.append((out, [p.grad for p in params]))
    (out, second), (plain_out, plain_second) = results
    assert out.dtype == torch.bfloat16 and torch.equal(out, plain_out)
    for a, b in zip(second, plain_second, strict=True):
        assert a.dtype == torch.float32
        assert ((a - b).norm() / b.norm()).item() < 2e-2
