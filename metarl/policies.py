"""Gaussian and categorical MLP policies: plain ``nn.Module``s that return distributions.

Both accept parameters with a leading task dimension (``weight: [B, out, in]``, observations
``[B, ...rows, in]``), in which case every task is evaluated with its own parameters in one
batched matrix product. That is how the sampler runs all tasks in a single forward pass.

``forward_with(params, observations)`` evaluates a policy with explicit parameters (named as in
``named_parameters()``): the same arithmetic as ``torch.func.functional_call``, without swapping
the module's tensors on every call (about 45 µs of the sampler's per-step work).

``GaussianMLPPolicy.numpy_actor(params)`` is the same policy as numpy arithmetic, which the sampler
steps with (`NumpyGaussianActor`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from metarl.config import PolicyConfig
from metarl.functional import Params

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0)}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x W^T + b``; with a batched ``weight [B, out, in]`` each leading slice of `x` uses its own."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    num_tasks = weight.shape[0]
    rows = x.reshape(num_tasks, -1, x.shape[-1])
    if torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad or bias.requires_grad):
        out = BatchedLinear.apply(rows, weight, bias)
    else:  # no graph (the sampler's every step): without the autograd.Function's overhead
        out = batched_affine(rows, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[1])


def batched_affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x Wᵀ + b`` for ``x [B, N, in]``, ``W [B, out, in]``, ``b [B, out]``: one batched product."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class BatchedLinear(torch.autograd.Function):
    """``x Wᵀ + b`` per task (``x [B, N, in]``, ``W [B, out, in]``, ``b [B, out]``), with a backward
    pass whose own derivatives keep activation-sized tensors contiguous.

    Autograd's backward of `baddbmm` forms the weight gradient ``xᵀ g`` from a transposed view of
    x. Differentiating that backward (second-order MAML: the meta-gradient through the inner step)
    then returns x's gradient transposed, and adding it to x's other gradient is 4–10× slower than
    a contiguous add (bfloat16 on CPU). Here every derivative is a product that is contiguous in N.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return batched_affine(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # In the product's arithmetic (bfloat16 under autocast), cast here so that the casts are
        # differentiated too; autograd casts the gradients back to the inputs' dtypes.
        x, weight = (t.to(grad.dtype) for t in ctx.saved_tensors)
        grad_x = grad.bmm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = RowProduct.apply(grad, x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class RowProduct(torch.autograd.Function):
    """``aᵀ b`` summed over the rows of each task (``[B, N, p]``, ``[B, N, q]`` → ``[B, p, q]``),
    whose gradients ``b gᵀ`` and ``a g`` come out contiguous (`BatchedLinear`)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return a.transpose(1, 2).bmm(b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, b = ctx.saved_tensors
        grad_a = b.bmm(grad.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_b = a.bmm(grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


class MLP(nn.Module):
    """Fully connected trunk ``in -> hidden... -> out`` with a chosen activation."""

    def __init__(self, in_dim: int, out_dim: int, hidden_sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = activation
        self.names = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(len(self.layers))]
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with(dict(self.named_parameters()), x)

    def forward_with(self, params: Params, x: Tensor, prefix: str = "") -> Tensor:
        """The trunk with ``params[prefix + name]`` for each of its parameters."""
        act = ACTIVATIONS[self.activation]
        last = len(self.names) - 1
        for i, (weight, bias) in enumerate(self.names):
            x = linear(x, params[prefix + weight], params[prefix + bias])
            if i < last:
                x = act(x)
        return x


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian with an MLP mean and a learned, state-independent log standard deviation."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_std: float = 1.0,
        min_std: float = 1e-6,
    ) -> None:
        super().__init__()
        self.mean = MLP(obs_dim, act_dim, hidden_sizes, activation)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.min_log_std = math.log(min_std)

    def forward(self, observations: Tensor) -> Distribution:
        return self.forward_with(dict(self.named_parameters()), observations)

    def forward_with(self, params: Params, observations: Tensor) -> Distribution:
        """π(·|observations) with `params` instead of the module's own (see the module docstring)."""
        mean = self.mean.forward_with(params, observations, "mean.")
        log_std = params["log_std"].clamp(min=self.min_log_std)
        if log_std.dim() == 2:  # one log-std per task: broadcast over that task's rows
            log_std = log_std.reshape(log_std.shape[0], *([1] * (mean.dim() - 2)), log_std.shape[1])
        return Independent(Normal(mean, log_std.exp()), 1)

    def numpy_actor(self, params: Params) -> NumpyGaussianActor | None:
        """This policy with per-task `params` (``[B, ...]``) as numpy arithmetic; None for
        parameters without a task dimension."""
        if params["log_std"].dim() != 2:
            return None
        arrays = {name: value.detach().cpu().numpy() for name, value in params.items()}
        layers = [
            (np.ascontiguousarray(arrays[f"mean.{w}"].transpose(0, 2, 1)), arrays[f"mean.{b}"][:, None, :])
            for w, b in self.mean.names
        ]
        log_std = np.maximum(arrays["log_std"], np.float32(self.min_log_std))[:, None, :]
        return NumpyGaussianActor(layers, NUMPY_ACTIVATIONS[self.mean.activation], log_std)


class NumpyGaussianActor:
    """A `GaussianMLPPolicy` with fixed per-task parameters, evaluated in numpy: the sampler's
    every step, between two batches of environment steps.

    By then torch's code is out of the CPU's caches, and each of its operations costs 50–100 µs
    instead of 4: torch's forward, noise and log-probabilities took 460–700 µs per step of 20
    Meta-World copies, numpy's forward 60–80 µs (`experiments/results/metaworld/free_running/`).
    The arithmetic is the module's (float32; equal to it within float32 rounding, tested), not bit
    for bit.
    """

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray]],
        activation: Callable[[np.ndarray], np.ndarray],
        log_std: np.ndarray,
    ) -> None:
        """`layers`: per layer ``(Wᵀ [B, in, out], b [B, 1, out])``; `log_std` ``[B, 1, action]``."""
        self.layers, self.activation = layers, activation
        self.log_std, self.std = log_std, np.exp(log_std)

    def mean(self, observations: np.ndarray) -> np.ndarray:
        """The mean action for observations ``[B, N, obs]`` (float32), ``[B, N, action]``."""
        x = observations
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight + bias
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x

    def act(self, observations: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions ``ε·σ + μ`` for standard-normal `noise` ε ``[B, N, action]``, and their
        log-probabilities ``Σ (−ε²/2 − log σ − log √(2π))`` ``[B, N]``."""
        spread, log_probs = self.noise_terms(noise)
        return self.mean(observations) + spread, log_probs

    def noise_terms(self, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the noise ``[..., B, N, action]`` alone decides of `act`: ``ε·σ`` and the log-probabilities.
        The sampler computes them for a whole horizon at once (the same numbers as step by step)."""
        return noise * self.std, (-0.5 * np.square(noise) - self.log_std - np.float32(LOG_SQRT_2PI)).sum(-1)


class CategoricalMLPPolicy(nn.Module):
    """Categorical distribution over discrete actions with MLP logits."""

    def __init__(
        self, obs_dim: int, num_actions: int, hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh"
    ) -> None:
        super().__init__()
        self.logits = MLP(obs_dim, num_actions, hidden_sizes, activation)

    def forward(self, observations: Tensor) -> Distribution:
        return self.forward_with(dict(self.named_parameters()), observations)

    def forward_with(self, params: Params, observations: Tensor) -> Distribution:
        """π(·|observations) with `params` instead of the module's own (see the module docstring)."""
        return Categorical(logits=self.logits.forward_with(params, observations, "logits."))


def make_policy(observation_space: gym.Space, action_space: gym.Space, config: PolicyConfig | None = None) -> nn.Module:
    """The policy for an environment's spaces: Gaussian for Box actions, categorical for Discrete."""
    config = config or PolicyConfig()
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"metarl policies need a flat Box observation space, got {observation_space}")
    obs_dim = observation_space.shape[0]
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        return GaussianMLPPolicy(
            obs_dim, action_space.shape[0], config.hidden_sizes, config.activation, config.init_std
        )
    if isinstance(action_space, spaces.Discrete):
        return CategoricalMLPPolicy(obs_dim, int(action_space.n), config.hidden_sizes, config.activation)
    raise ValueError(f"unsupported action space {action_space}: metarl handles flat Box and Discrete actions")
