"""Discounted returns, GAE and masked statistics against hand-computed cases."""

import torch

from metarl.returns import discounted_returns, generalized_advantages, masked_mean, normalize


def test_discounted_returns_hand_computed():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the episode ended after three steps
    returns = discounted_returns(rewards, mask, gamma=0.5)
    # G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75; the padded step is ignored.
    torch.testing.assert_close(returns, torch.tensor([[2.75, 3.5, 3.0, 0.0]]))


def test_gae_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, 1.0, 1.5])
    mask = torch.ones(3)
    gamma, lam = 0.9, 0.8
    # δ2 = 2 - 1.5 = 0.5 (no bootstrap after the last step)
    # δ1 = 0 + 0.9*1.5 - 1.0 = 0.35, δ0 = 1 + 0.9*1.0 - 0.5 = 1.4
    # A2 = 0.5, A1 = 0.35 + 0.72*0.5 = 0.71, A0 = 1.4 + 0.72*0.71 = 1.9112
    advantages = generalized_advantages(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([1.9112, 0.71, 0.5]))


def test_gae_lambda_one_is_return_minus_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    mask = (torch.arange(7) < torch.randint(1, 8, (3, 5, 1))).float()
    advantages = generalized_advantages(rewards, values, mask, gamma=0.95, lam=1.0)
    expected = (discounted_returns(rewards, mask, 0.95) - values) * mask
    torch.testing.assert_close(advantages, expected)


def test_gae_matches_naive_loop():
    torch.manual_seed(1)
    rewards, values = torch.randn(4, 9), torch.randn(4, 9)
    lengths = [9, 4, 1, 6]
    mask = torch.zeros(4, 9)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    advantages = generalized_advantages(rewards, values, mask, gamma=0.97, lam=0.9)
    for i, n in enumerate(lengths):
        a = 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1] if t + 1 < n else 0.0
            a = rewards[i, t] + 0.97 * next_value - values[i, t] + 0.97 * 0.9 * a
            assert abs(advantages[i, t].item() - float(a)) < 1e-5
        assert torch.all(advantages[i, n:] == 0)


def test_masked_mean_and_normalize():
    x = torch.tensor([[1.0, 3.0, 100.0], [2.0, 4.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([2.0, 4.0]))
    z = normalize(x, mask, dim=(-1,))
    assert z[0, 2] == 0
    torch.testing.assert_close(masked_mean(z, mask, dim=-1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(z[0, :2], torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)
