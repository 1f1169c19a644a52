"""The linear feature baseline."""

import pytest
import torch

from metarl.baselines import fit_linear_baseline, linear_features


def test_features_layout():
    obs = torch.tensor([[[2.0], [3.0]]])  # [E=1, T=2, obs_dim=1]
    features = linear_features(obs, torch.ones(1, 2))
    torch.testing.assert_close(features[0, 1], torch.tensor([3.0, 9.0, 0.01, 1e-4, 1e-6, 1.0]))


def test_recovers_an_exactly_linear_value_per_task():
    torch.manual_seed(0)
    tasks, episodes, horizon, obs_dim = 3, 6, 12, 2
    obs = torch.randn(tasks, episodes, horizon, obs_dim)
    mask = torch.ones(tasks, episodes, horizon)
    mask[:, 0, 8:] = 0  # one shorter episode per task
    weights = torch.randn(tasks, 2 * obs_dim + 4)  # a different true value function per task
    targets = torch.einsum("betf,bf->bet", linear_features(obs, mask), weights)
    values = fit_linear_baseline(obs, targets, mask)
    torch.testing.assert_close(values, targets * mask, atol=1e-3, rtol=1e-3)
    assert torch.all(values[:, 0, 8:] == 0)


def test_non_finite_inputs_are_reported():
    obs = torch.full((1, 2, 3, 1), float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        fit_linear_baseline(obs, torch.zeros(1, 2, 3), torch.ones(1, 2, 3))


def test_the_fit_has_the_same_bits_wherever_its_buffers_land():
    # AntVel's fit (20 episodes x 100 steps, 214 features; 8 tasks of its 40), ill-conditioned by
    # observation scales 0.01-10. LAPACK's default gelsy changes its last bits with memory
    # alignment (so identical runs drifted apart); the fit must not.
    torch.manual_seed(0)
    observations = torch.randn(8, 20, 100, 105) * torch.logspace(-2, 1, 105)
    returns, mask = torch.randn(8, 20, 100).cumsum(-1), torch.ones(8, 20, 100)
    first = fit_linear_baseline(observations, returns, mask)
    shifts = []
    for size in range(7, 6000, 1000):
        shifts.append(torch.empty(size, dtype=torch.float64))  # moves the next allocations
        assert torch.equal(fit_linear_baseline(observations, returns, mask), first)
