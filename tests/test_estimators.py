"""Inner estimators against a two-step MDP whose expected return is known in closed form.

Start state s0; action a0 ∈ {0, 1} leads to state a0 + 1, where action a1 ∈ {0, 1} ends the
episode. Rewards r0 = R0[a0], r1 = R1[s1, a1]. The four trajectories are enumerated, so the exact
J(θ) = Σ_τ p_θ(τ) R(τ), its gradient and Hessian come from autograd, and so does the expectation of
every estimator's gradient and Hessian. Notation of Rothfuss et al. 2019 (ProMP), with G_t the
reward-to-go: H1 = E[Σ_t ∇log π_t ∇log π_tᵀ G_t], H2 = E[Σ_t ∇²log π_t G_t]; ∇²J = H1 + H2 + H12 + H12ᵀ.
"""

import itertools

import pytest
import torch
from torch.func import functional_call

from metarl.episodes import Episodes, pack_steps
from metarl.functional import flat, parameters_of
from metarl.inner import inner_loss, within_episode_cumsum
from metarl.policies import CategoricalMLPPolicy

R0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
R1 = torch.tensor([[0.0, 0.0], [2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)  # rows: states 0, 1, 2


def one_hot(state: int) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64)[state]


@pytest.fixture(scope="module")
def mdp():
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(3, 2, hidden_sizes=(4,), activation="tanh").double()
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    theta = flat(list(policy.parameters())).detach()

    def unflatten(vector):
        pieces = torch.split(vector, [s.numel() for s in shapes])
        return {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}

    trajectories = []
    for a0, a1 in itertools.product((0, 1), (0, 1)):
        s1 = a0 + 1
        trajectories.append(
            {
                "states": [0, s1],
                "actions": [a0, a1],
                "rewards": [R0[a0].item(), R1[s1, a1].item()],
            }
        )
    return policy, theta, unflatten, trajectories


def log_probs(policy, params, trajectory) -> torch.Tensor:
    observations = torch.stack([one_hot(s) for s in trajectory["states"]])
    pi = functional_call(policy, params, (observations,))
    return pi.log_prob(torch.tensor(trajectory["actions"]))


def probability(policy, params, trajectory) -> torch.Tensor:
    return log_probs(policy, params, trajectory).sum().exp()


def expected_return(policy, unflatten, trajectories, vector) -> torch.Tensor:
    params = unflatten(vector)
    return sum(probability(policy, params, t) * sum(t["rewards"]) for t in trajectories)


def episodes_of(policy, params, trajectory) -> Episodes:
    """One task, one episode of two steps; advantages = reward-to-go (no baseline, γ = 1)."""
    rewards = torch.tensor(trajectory["rewards"], dtype=torch.float64)
    to_go = torch.flip(torch.cumsum(torch.flip(rewards, [0]), 0), [0])
    episodes = Episodes(
        observations=torch.stack([one_hot(s) for s in trajectory["states"]]).view(1, 1, 2, 3),
        actions=torch.tensor(trajectory["actions"]).view(1, 1, 2),
        rewards=rewards.view(1, 1, 2),
        mask=torch.ones(1, 1, 2, dtype=torch.float64),
        log_probs=log_probs(policy, params, trajectory).detach().view(1, 1, 2),
        advantages=to_go.view(1, 1, 2),
    )
    return pack_steps(episodes)


def derivatives(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian of a scalar function of a vector, by double back-propagation."""
    x = x.detach().clone().requires_grad_()
    gradient = torch.autograd.grad(function(x), x, create_graph=True)[0]
    rows = [torch.autograd.grad(gradient[i], x, retain_graph=True, allow_unused=True)[0] for i in range(len(x))]
    hessian = torch.stack([r if r is not None else torch.zeros_like(x) for r in rows])
    return gradient.detach(), hessian.detach()


def expected_derivatives(policy, theta, unflatten, trajectories, objective):
    """Σ_τ p(τ) ∇ objective_τ(θ) and Σ_τ p(τ) ∇² objective_τ(θ), at θ (the sampling parameters)."""
    gradient, hessian = torch.zeros_like(theta), torch.zeros(len(theta), len(theta), dtype=theta.dtype)
    for trajectory in trajectories:
        weight = probability(policy, unflatten(theta), trajectory).detach()

        def value(vector, trajectory=trajectory):
            return objective(unflatten(vector), trajectory)

        g, h = derivatives(value, theta)
        gradient += weight * g
        hessian += weight * h
    return gradient, hessian


def estimator_objective(policy, unflatten, theta, estimator):
    """The per-trajectory surrogate whose derivatives estimate J's: −inner_loss × steps (a sum over t)."""

    def objective(params, trajectory):
        episodes = episodes_of(policy, unflatten(theta), trajectory)
        return -2 * inner_loss(policy, params, episodes, estimator)[0]

    return objective


def test_every_estimator_has_the_policy_gradient_in_expectation(mdp):
    policy, theta, unflatten, trajectories = mdp
    exact, _ = derivatives(lambda v: expected_return(policy, unflatten, trajectories, v), theta)
    for estimator in ("reinforce", "lvc", "dice"):
        gradient, _ = expected_derivatives(
            policy, theta, unflatten, trajectories, estimator_objective(policy, unflatten, theta, estimator)
        )
        torch.testing.assert_close(gradient, exact, rtol=1e-10, atol=1e-12)


def test_hessians_in_expectation_dice_exact_lvc_h1_plus_h2_reinforce_h2(mdp):
    policy, theta, unflatten, trajectories = mdp
    _, exact = derivatives(lambda v: expected_return(policy, unflatten, trajectories, v), theta)

    def h1_term(params, trajectory):  # Σ_t (∇log π_t ∇log π_tᵀ) G_t, as the Hessian of ½ Σ_t (log π_t − ⊥)² G_t
        lp = log_probs(policy, params, trajectory)
        rewards = torch.tensor(trajectory["rewards"], dtype=torch.float64)
        to_go = torch.flip(torch.cumsum(torch.flip(rewards, [0]), 0), [0])
        return 0.5 * ((lp - lp.detach()) ** 2 * to_go).sum()

    def h2_term(params, trajectory):  # Σ_t ∇²log π_t G_t
        lp = log_probs(policy, params, trajectory)
        rewards = torch.tensor(trajectory["rewards"], dtype=torch.float64)
        to_go = torch.flip(torch.cumsum(torch.flip(rewards, [0]), 0), [0])
        return (lp * to_go).sum()

    _, h1 = expected_derivatives(policy, theta, unflatten, trajectories, h1_term)
    _, h2 = expected_derivatives(policy, theta, unflatten, trajectories, h2_term)
    hessians = {
        estimator: expected_derivatives(
            policy, theta, unflatten, trajectories, estimator_objective(policy, unflatten, theta, estimator)
        )[1]
        for estimator in ("reinforce", "lvc", "dice")
    }
    torch.testing.assert_close(hessians["dice"], exact, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(hessians["lvc"], h1 + h2, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(hessians["reinforce"], h2, rtol=1e-9, atol=1e-11)
    # The three differ here, so the comparisons above can fail: H1 and the cross terms H12 are not zero.
    assert (h1.norm() > 1e-3) and ((exact - h1 - h2).norm() > 1e-3)


def test_sums_over_an_episode_s_own_earlier_steps_in_packed_rows():
    # Two tasks; episodes of lengths 3 and 2 (task 0) and 1 and 4 (task 1), horizon 4.
    mask = torch.tensor([[[1, 1, 1, 0], [1, 1, 0, 0]], [[1, 0, 0, 0], [1, 1, 1, 1]]], dtype=torch.float64)
    x = torch.arange(1, 17, dtype=torch.float64).view(2, 2, 4) * mask
    episodes = Episodes(
        observations=x.unsqueeze(-1), actions=x.unsqueeze(-1), rewards=x, mask=mask, log_probs=x, advantages=x
    )
    packed = pack_steps(episodes)
    sums = within_episode_cumsum(packed.rewards * packed.mask, packed.first_step) * packed.mask
    expected = torch.cumsum(x, -1) * mask  # per episode, before packing
    assert sums[0, 0, :5].tolist() == [
        v for row, m in zip(expected[0], mask[0], strict=True) for v, k in zip(row, m, strict=True) if k
    ]
    assert sums[1, 0, :5].tolist() == [
        v for row, m in zip(expected[1], mask[1], strict=True) for v, k in zip(row, m, strict=True) if k
    ]


def test_estimators_share_the_value_of_the_gradient_on_real_batches():
    """At the sampling parameters the three inner objectives have the same gradient (any batch)."""
    torch.manual_seed(1)
    policy = CategoricalMLPPolicy(3, 2, hidden_sizes=(5,), activation="tanh").double()
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(2, 3, 4, dtype=torch.float64)
    mask[0, 1, 2:] = 0
    observations = torch.randn(2, 3, 4, 3, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 2, (2, 3, 4), generator=g)
    params = {n: p.expand(2, *p.shape) for n, p in parameters_of(policy).items()}
    lp = functional_call(policy, params, (observations,)).log_prob(actions).detach()
    episodes = pack_steps(
        Episodes(observations, actions, torch.zeros_like(mask), mask, lp, torch.randn(2, 3, 4, generator=g) * mask)
    )
    grads = {
        e: flat(torch.autograd.grad(inner_loss(policy, params, episodes, e).sum(), list(policy.parameters())))
        for e in ("reinforce", "lvc", "dice")
    }
    torch.testing.assert_close(grads["lvc"], grads["reinforce"])
    torch.testing.assert_close(grads["dice"], grads["reinforce"])
