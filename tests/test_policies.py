"""Policies evaluated with explicit (and per-task) parameters."""

import torch
from torch.distributions import Categorical

from metarl.functional import distribution, parameters_of, per_task
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy


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


def test_module_parameters_are_not_mutated_by_functional_evaluation():
    policy = GaussianMLPPolicy(2, 2, (4,))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    params = {k: v * 2 for k, v in parameters_of(policy).items()}
    distribution(policy, params, torch.zeros(1, 2)).mean.sum().backward()
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, before[k])
