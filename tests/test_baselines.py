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
