"""The inner loop: how a policy adapts to one task from a few of its episodes (Alg. 3, lines 5–7).

Written once and used by everything that adapts: the sampler's adaptation while collecting a
meta-batch (no graph), the meta-objective (with graph, differentiable in θ and in learned step
sizes), evaluation, videos and the deploy API (`metarl.load(...).adapt`).

- **Advantages**: GAE against a linear feature baseline fitted per task (`estimate_advantages`).
- **Inner objective** (`InnerLoop.estimator`), each a surrogate whose gradient at the sampling
  parameters is the policy gradient ``mean_t ∇log π(a_t|s_t) Â_t``; they differ in the second
  derivatives that flow into the meta-gradient through ``∂θ'/∂θ``:

  - ``reinforce``: ``log π · Â`` (the MAML paper's; the Hessian ``E[∇²log π · Â]``, term H2 of
    Rothfuss et al. 2019);
  - ``lvc``: ``π_θ/π_θo · Â`` with θo the parameters that sampled the episodes (ProMP's
    low-variance curvature J_LR; at θo its expected Hessian adds ``E[∇log π ∇log πᵀ · Â]``, H1: the
    dependence of the sampling distribution on θ, per step);
  - ``dice``: ``(□(Σ_{t'≤t} log π) − □(Σ_{t'<t} log π)) · Â`` with the magic box
    ``□(x) = exp(x − ⊥x)`` (Foerster et al. 2018, with the baseline of Farquhar et al. 2019):
    unbiased Hessian of the expected return, cross-step terms included, at a higher variance.

- **Step** (`InnerLoop.step`): ``θ' = θ − α ∘ ∇θ L(θ)`` with one α, or one per parameter entry
  (Meta-SGD, Li et al. 2017, ``inner.learn_lr``: α is then meta-learned with θ).

Parameters carry a leading task dimension; task ``b`` is adapted on slice ``b`` of the episodes,
all tasks in one backward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from metarl.baselines import fit_linear_baseline
from metarl.config import AdvantageConfig, Config
from metarl.episodes import Episodes, pack_steps
from metarl.errors import NonFiniteError
from metarl.functional import Params, distribution
from metarl.registry import OUTER_ALGORITHMS
from metarl.returns import discounted_returns, generalized_advantages, masked_mean, normalize

ESTIMATORS = ("reinforce", "lvc", "dice")
StepSize = float | Params  # one α, or one per parameter entry (shaped like θ, without the task dimension)


def estimate_advantages(episodes: Episodes, config: AdvantageConfig) -> Episodes:
    """GAE(γ, λ) against a linear feature baseline fitted per task on these same episodes.

    Returns the episodes with advantages, packed one row per task (`pack_steps`) for the losses.
    """
    returns = discounted_returns(episodes.rewards, episodes.mask, config.gamma)
    values = fit_linear_baseline(episodes.observations, returns, episodes.mask)
    advantages = generalized_advantages(episodes.rewards, values, episodes.mask, config.gamma, config.gae_lambda)
    if config.normalize:
        advantages = normalize(advantages, episodes.mask, dim=(-2, -1))
    return pack_steps(dataclasses.replace(episodes, advantages=advantages))


def check_finite(what: str, values: Params | Sequence[Tensor], tasks: Sequence[Any] | None = None) -> None:
    """Raise `NonFiniteError` naming `what`, and the tasks whose slices hold NaN or infinity when
    the values carry a leading task dimension, so a fault is reported where it arises."""
    tensors = list(values.values()) if isinstance(values, dict) else list(values)
    if all(bool(torch.isfinite(t).all()) for t in tensors):
        return
    where = ""
    if tasks is not None:
        bad = torch.zeros(len(tasks), dtype=torch.bool)
        for t in tensors:
            bad |= ~torch.isfinite(t.reshape(len(tasks), -1)).all(1).cpu()
        index = bad.nonzero().flatten().tolist()
        where = f" for task {', '.join(repr(tasks[i]) for i in index[:3])}" + (" and others" if len(index) > 3 else "")
    raise NonFiniteError(f"non-finite {what}{where}")


def magic_box(x: Tensor) -> Tensor:
    """DiCE's □(x) = exp(x − ⊥x): 1 in value, with ∇□(x) = □(x) ∇x at every order."""
    return torch.exp(x - x.detach())


def inner_loss(
    policy: nn.Module, params: Params, episodes: Episodes, estimator: str = "reinforce", pi: Distribution | None = None
) -> Tensor:
    """The inner objective to minimise, ``-mean_t surrogate_t · Â_t`` per task: shape ``[B]``.

    `episodes` are packed (`pack_steps`) with advantages; `estimator` picks the surrogate (module
    docstring). All three have the same value of the gradient at the sampling parameters. `pi`:
    π_params on ``episodes.observations``, if already computed.
    """
    pi = distribution(policy, params, episodes.observations) if pi is None else pi
    log_probs = pi.log_prob(episodes.actions)
    if estimator == "reinforce":
        surrogate = log_probs
    elif estimator == "lvc":
        # π_θ/π_θo with θo the sampling parameters (ProMP's J_LR): 1 at θo, importance-weighted away
        # from it (the epochs of PPO and ProMP adapt again from a θ that has moved).
        surrogate = torch.exp(log_probs - episodes.log_probs)
    elif estimator == "dice":
        so_far = within_episode_cumsum(log_probs * episodes.mask, episodes.first_step)
        surrogate = magic_box(so_far) - magic_box(so_far - log_probs)
    else:
        raise ValueError(f"unknown inner estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    return -masked_mean(surrogate * episodes.advantages, episodes.mask, dim=(-2, -1))


def within_episode_cumsum(x: Tensor, first_step: Tensor | None) -> Tensor:
    """``Σ_{t' ≤ t} x_t'`` over the steps of each step's own episode, in packed rows ``[B, 1, N]``.

    `first_step` holds, for every packed step, the index of its episode's first step in the row
    (`pack_steps`)."""
    if first_step is None:
        raise ValueError("the DiCE estimator needs packed episodes with first_step (metarl.episodes.pack_steps)")
    total = torch.cumsum(x, dim=-1)
    before_episode = total.gather(-1, first_step) - x.gather(-1, first_step)
    return total - before_episode


def sgd_step(loss: Tensor, params: Params, lr: StepSize, *, create_graph: bool) -> Params:
    """θ' = θ − α ∘ ∇θ loss, as new tensors (α one number, or one per parameter entry).

    With ``create_graph=True`` θ' stays a differentiable function of θ and of a learned α
    (second-order MAML); otherwise the gradient is a constant and ∂θ'/∂θ = I (first-order MAML).
    """
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    if isinstance(lr, dict):
        return {name: p - lr[name] * g for (name, p), g in zip(params.items(), grads, strict=True)}
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}


def scaled(lr: StepSize, factor: float) -> StepSize:
    """`lr` × `factor`, for one α or per-parameter ones."""
    if isinstance(lr, dict):
        return {name: a * factor for name, a in lr.items()}
    return lr * factor


class LearnedStepSizes(nn.Module):
    """Meta-SGD's α (Li et al. 2017): one learnable step size per entry of every policy parameter,
    initialised to `lr`; the outer algorithm updates them with θ."""

    def __init__(self, policy: nn.Module, lr: float) -> None:
        super().__init__()
        self.names = [name for name, _ in policy.named_parameters()]
        self.alphas = nn.ParameterList(nn.Parameter(torch.full_like(p.detach(), lr)) for p in policy.parameters())

    def as_params(self) -> Params:
        """α by parameter name (the live parameters: differentiable, updated in place)."""
        return dict(zip(self.names, self.alphas, strict=True))

    def summary(self) -> dict[str, float]:
        """`step_size_summary` of these step sizes."""
        return step_size_summary(self.as_params())


def step_size_summary(alphas: Params) -> dict[str, float]:
    """Mean, spread and range of learned step sizes, and their mean per parameter tensor."""
    values = torch.cat([a.detach().reshape(-1) for a in alphas.values()])
    return {
        "mean": values.mean().item(),
        "std": values.std().item() if values.numel() > 1 else 0.0,
        "min": values.min().item(),
        "max": values.max().item(),
        **{f"mean/{name}": a.detach().mean().item() for name, a in alphas.items()},
    }


@dataclasses.dataclass(frozen=True)
class InnerLoop:
    """How a policy adapts: its step sizes, the inner objective, and whether θ' is differentiated
    to second order. `lr` is one α, or per-parameter α that may require grad (Meta-SGD)."""

    lr: StepSize
    estimator: str = "reinforce"
    first_order: bool = False

    @classmethod
    def from_config(cls, config: Config, step_sizes: LearnedStepSizes | None = None) -> InnerLoop:
        """The inner loop a config describes, with the meta-learned step sizes when ``inner.learn_lr``.
        A null ``inner.estimator`` is the outer algorithm's (`metarl.registry`)."""
        estimator = config.inner.estimator or OUTER_ALGORITHMS[config.outer.algo].estimator
        lr = step_sizes.as_params() if step_sizes is not None else config.inner.lr
        return cls(lr, estimator, config.inner.first_order)

    @property
    def learned(self) -> bool:
        """Whether the step sizes are meta-learned, one per parameter entry (Meta-SGD)."""
        return isinstance(self.lr, dict)

    def learned_parameters(self) -> list[Tensor]:
        """The learned step sizes, in the policy's parameter order (none for a single α)."""
        return list(self.lr.values()) if isinstance(self.lr, dict) else []

    def loss(self, policy: nn.Module, params: Params, episodes: Episodes, pi: Distribution | None = None) -> Tensor:
        """The inner objective per task ``[B]`` (`inner_loss`)."""
        return inner_loss(policy, params, episodes, self.estimator, pi)

    def step(
        self,
        policy: nn.Module,
        params: Params,
        episodes: Episodes,
        *,
        create_graph: bool,
        lr: StepSize | None = None,
    ) -> tuple[Params, Tensor]:
        """One step on the inner objective (Alg. 3, lines 6–7), and that objective per task ``[B]`` at `params`.

        With ``create_graph=True`` the result is differentiable in `params` (and in a learned α).
        `lr` overrides the step size (evaluation's later, smaller steps).
        """
        adapted, losses, _ = self.step_with_policy(policy, params, episodes, create_graph=create_graph, lr=lr)
        return adapted, losses

    def step_with_policy(
        self, policy: nn.Module, params: Params, episodes: Episodes, *, create_graph: bool, lr: StepSize | None = None
    ) -> tuple[Params, Tensor, Distribution]:
        """`step`, and π_params on the episodes' observations that its loss evaluated (part of
        the step's graph: `detach_distribution` it to keep it)."""
        lr = self.lr if lr is None else lr
        # Called under no_grad, or with parameters that do not require grad: θ is a constant here.
        constant = not torch.is_grad_enabled()
        if constant and isinstance(lr, dict):
            lr = {name: a.detach() for name, a in lr.items()}
        with torch.enable_grad():
            params = {
                n: p.detach().requires_grad_() if constant or not p.requires_grad else p for n, p in params.items()
            }
            pi = distribution(policy, params, episodes.observations)
            losses = self.loss(policy, params, episodes, pi)
            # Summing over tasks gives every task's slice of `params` the gradient of its own loss.
            return sgd_step(losses.sum(), params, lr, create_graph=create_graph), losses.detach(), pi

    def adapt(
        self, policy: nn.Module, params: Params, inner_episodes: Sequence[Episodes], *, create_graph: bool
    ) -> Params:
        """Fast adaptation: one `step` per batch of episodes. The sampler (no graph) and the
        meta-objective (with graph, differentiable in `params`) both adapt with it."""
        return self.adaptation_path(policy, params, inner_episodes, create_graph=create_graph)[-1]

    def adaptation_path(
        self, policy: nn.Module, params: Params, inner_episodes: Sequence[Episodes], *, create_graph: bool
    ) -> list[Params]:
        """θ^(0) = `params`, θ^(1), …, θ^(K) = θ': the parameters before and after every step."""
        return self.adaptation(policy, params, inner_episodes, create_graph=create_graph)[0]

    def adaptation(
        self, policy: nn.Module, params: Params, inner_episodes: Sequence[Episodes], *, create_graph: bool
    ) -> tuple[list[Params], list[Distribution]]:
        """`adaptation_path`, and π_θ^(k) on step k's observations for every step: the inner losses'
        own policy evaluations (differentiable like θ^(k)), for terms that reuse them instead of
        evaluating the policy again (ProMP's KL penalty)."""
        path, policies = [params], []
        for episodes in inner_episodes:
            params, _, pi = self.step_with_policy(policy, params, episodes, create_graph=create_graph)
            path.append(params)
            policies.append(pi)
        return path, policies

    def evaluation_lr(self, k: int, lr: float | None, later_lr_scale: float) -> StepSize:
        """Step size of evaluation step ``k`` (0-based): `lr` if given, else this loop's α (learned
        per-parameter ones included), for the first step; × `later_lr_scale` for the later ones
        (the MAML paper: 0.1, then 0.05)."""
        base = self.lr if lr is None else lr
        return base if k == 0 else scaled(base, later_lr_scale)
