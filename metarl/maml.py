"""Model-Agnostic Meta-Learning for reinforcement learning (Finn, Abbeel & Levine 2017, Algorithm 3).

    for each task T_i in the meta-batch:
        D_i  ← episodes of f_θ on T_i                         (line 5)
        θ'_i = θ − α ∇θ L_Ti(f_θ; D_i)                        (lines 6–7, REINFORCE with baseline)
        D'_i ← episodes of f_θ'_i on T_i                      (line 8)
    θ ← outer step on Σ_i L_Ti(f_θ'_i(θ); D'_i)               (line 10: TRPO, or Adam/SGD)

Everything is batched over tasks: parameters carry a leading task dimension, so the inner
gradients of all tasks come from one backward pass (each task's loss depends on its own slice).
The gradient estimator is the standard MAML-RL one (as in the paper and pytorch-maml-rl): it
differentiates through the inner update but not through the sampling distribution of D_i.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from metarl.baselines import fit_linear_baseline
from metarl.config import AdvantageConfig, InnerConfig, OuterConfig
from metarl.curvature import GaussianMLPCurvature, Product, autograd_hessian, supports_fast_curvature
from metarl.functional import Params, detach, distribution, parameters_of, per_task, sgd_step
from metarl.returns import discounted_returns, generalized_advantages, masked_mean, normalize
from metarl.sampler import Episodes, NonFiniteError, Sampler, pack_steps
from metarl.trpo import conjugate_gradient, flat, line_search


@dataclasses.dataclass(frozen=True)
class MetaBatch:
    """Episodes of a meta-batch: ``inner[k]`` was sampled with the policy adapted k times, `outer`
    with the fully adapted policy (``len(inner)`` steps)."""

    tasks: list[Any]
    inner: tuple[Episodes, ...]
    outer: Episodes
    returns: tuple[Tensor, ...]  # mean episode return per task [B] after 0, 1, …, len(inner) steps
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # What sampling computed on the way, which the outer step reuses while θ is unchanged: the flat
    # θ, the adapted parameters θ^(1), …, θ^(K) = θ' per task, and each inner step's loss per task.
    sampled_with: Tensor | None = None
    adapted: tuple[Params, ...] = ()
    inner_losses: tuple[Tensor, ...] = ()

    def adaptation_at(self, policy: nn.Module) -> list[Params] | None:
        """θ^(0), θ^(1), …, θ' per task if the batch was sampled with the policy's current θ, else None."""
        theta = parameters_of(policy)
        if self.sampled_with is None or not torch.equal(flat(list(theta.values())).detach(), self.sampled_with):
            return None
        return [per_task(detach(theta), len(self.tasks)), *self.adapted]


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


def inner_loss(policy: nn.Module, params: Params, episodes: Episodes) -> Tensor:
    """REINFORCE with baseline, ``-mean_t log π(a_t|s_t) Â_t`` per task: shape ``[B]``."""
    log_probs = distribution(policy, params, episodes.observations).log_prob(episodes.actions)
    return -masked_mean(log_probs * episodes.advantages, episodes.mask, dim=(-2, -1))


def inner_step(
    policy: nn.Module, params: Params, episodes: Episodes, lr: float, *, create_graph: bool
) -> tuple[Params, Tensor]:
    """One SGD step on the inner loss (Alg. 3, lines 6–7), and that loss per task ``[B]`` at `params`.

    `params` has a leading task dimension; task ``b`` is adapted on slice ``b`` of `episodes`. With
    ``create_graph=True`` the result is differentiable in `params` (second-order MAML).
    """
    # Called under no_grad, or with parameters that do not require grad: θ is a constant here.
    constant = not torch.is_grad_enabled()
    with torch.enable_grad():
        params = {n: p.detach().requires_grad_() if constant or not p.requires_grad else p for n, p in params.items()}
        losses = inner_loss(policy, params, episodes)
        # Summing over tasks gives every task's slice of `params` the gradient of its own loss.
        return sgd_step(losses.sum(), params, lr, create_graph=create_graph), losses.detach()


def adapt(
    policy: nn.Module, params: Params, inner_episodes: Sequence[Episodes], lr: float, *, create_graph: bool
) -> Params:
    """Fast adaptation: one `inner_step` per batch of episodes. The sampler (no graph) and the
    meta-loss (with graph, differentiable in `params`) both adapt with `inner_step`."""
    for episodes in inner_episodes:
        params, _ = inner_step(policy, params, episodes, lr, create_graph=create_graph)
    return params


def sample_meta_batch(
    sampler: Sampler, policy: nn.Module, tasks: Sequence[Any], inner: InnerConfig, advantages: AdvantageConfig
) -> MetaBatch:
    """Alg. 3, lines 5–8 for every task at once: sample, adapt, sample again with θ'."""
    timings = {"sample_s": 0.0, "advantages_s": 0.0, "adapt_s": 0.0}

    def sample_with(params: Params) -> tuple[Episodes, Tensor]:
        start = time.perf_counter()
        sampled = sampler.sample(policy, params, tasks)
        middle = time.perf_counter()
        episodes = estimate_advantages(sampled, advantages)
        timings["sample_s"] += middle - start
        timings["advantages_s"] += time.perf_counter() - middle
        return episodes, sampled.mean_returns

    theta = detach(parameters_of(policy))
    params = per_task(theta, len(tasks))
    inner_episodes, returns, adapted, inner_losses = [], [], [], []
    for _ in range(inner.steps):
        episodes, mean_returns = sample_with(params)
        start = time.perf_counter()
        params, losses = inner_step(policy, params, episodes, inner.lr, create_graph=False)
        params = detach(params)
        check_finite("adapted parameters after the inner step", params, tasks)
        timings["adapt_s"] += time.perf_counter() - start
        inner_episodes.append(episodes)
        returns.append(mean_returns)
        adapted.append(params)
        inner_losses.append(losses)
    outer_episodes, mean_returns = sample_with(params)
    returns.append(mean_returns)
    return MetaBatch(
        list(tasks),
        tuple(inner_episodes),
        outer_episodes,
        tuple(returns),
        timings,
        sampled_with=flat(list(theta.values())).clone(),
        adapted=tuple(adapted),
        inner_losses=tuple(inner_losses),
    )


def adapted_parameters(policy: nn.Module, batch: MetaBatch, inner: InnerConfig, *, create_graph: bool) -> Params:
    """θ'_i(θ) for every task of the batch, recomputed from the policy's current θ."""
    params = per_task(parameters_of(policy), len(batch.tasks))
    return adapt(policy, params, batch.inner, inner.lr, create_graph=create_graph)


def surrogate_loss(policy: nn.Module, adapted: Params, episodes: Episodes, pi: Distribution | None = None) -> Tensor:
    """Post-adaptation loss ``-E[π_θ'(a|s) / π_old(a|s) · Â]``, averaged over tasks.

    At the sampling parameters the ratio is 1 and its gradient is the policy gradient. `pi`: π_θ'
    on ``episodes.observations``, if already computed.
    """
    pi = distribution(policy, adapted, episodes.observations) if pi is None else pi
    log_probs = pi.log_prob(episodes.actions)
    ratio = torch.exp(log_probs - episodes.log_probs)
    return -masked_mean(ratio * episodes.advantages, episodes.mask, dim=(-2, -1)).mean()


def mean_kl(old: Distribution, new: Distribution, mask: Tensor) -> Tensor:
    """KL(old ‖ new) averaged over the valid steps of each task, then over tasks."""
    return masked_mean(kl_divergence(old, new), mask, dim=(-2, -1)).mean()


def meta_step(
    policy: nn.Module,
    batch: MetaBatch,
    inner: InnerConfig,
    outer: OuterConfig,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """One outer update of θ (Alg. 3, line 10) with the configured optimiser; returns statistics."""
    if outer.algo == "trpo":
        return trpo_step(policy, batch, inner, outer)
    if optimizer is None:
        raise ValueError(f"outer.algo={outer.algo!r} needs a torch optimiser")
    return gradient_step(policy, optimizer, batch, inner, outer)


def meta_loss(policy: nn.Module, batch: MetaBatch, inner: InnerConfig) -> tuple[Tensor, Distribution]:
    """The meta-objective ``mean_i L(θ'_i(θ); D'_i)`` (Alg. 3, line 10), differentiable in θ, and the
    current adapted policies π_θ' on the post-adaptation observations (detached, for KLs)."""
    adapted = adapted_parameters(policy, batch, inner, create_graph=not inner.first_order)
    with torch.no_grad():
        old_pi = distribution(policy, detach(adapted), batch.outer.observations)
    return surrogate_loss(policy, adapted, batch.outer), old_pi


def loss_and_kl(policy: nn.Module, batch: MetaBatch, inner: InnerConfig, old_pi: Distribution) -> tuple[float, float]:
    """Meta-objective and mean KL from `old_pi` at the policy's current θ (no graph)."""
    adapted = adapted_parameters(policy, batch, inner, create_graph=False)
    with torch.no_grad():
        pi = distribution(policy, adapted, batch.outer.observations)
        loss = surrogate_loss(policy, adapted, batch.outer, pi)
        kl = mean_kl(old_pi, pi, batch.outer.mask)
    return loss.item(), kl.item()


def trpo_step(policy: nn.Module, batch: MetaBatch, inner: InnerConfig, outer: OuterConfig) -> dict[str, float]:
    """MAML-TRPO: a natural-gradient step on the post-adaptation surrogate, within ``max_kl``.

    The KL is between the old and the new *adapted* policies on the post-adaptation episodes; its
    Hessian (through the inner update unless first-order) defines the trust region.
    """
    start = time.perf_counter()
    params = list(policy.parameters())
    inner_loss_before = _inner_loss_stats(policy, batch)
    curvature = adaptation_curvature(
        policy, batch, inner, stride=outer.curvature_stride, precision=outer.curvature_precision
    )
    loss, grad = curvature.meta_gradient(policy, batch.outer, batch.tasks)
    curvature = dataclasses.replace(curvature, exact_inner_hessians=None)  # frees them when separate
    check_finite("meta-gradient", [grad])
    old_pi = curvature.old_pi
    gradient_done = time.perf_counter()

    fvp = curvature.kl_hessian_product(outer.cg_damping)
    direction, f_direction = conjugate_gradient(fvp, grad, outer.cg_iters)  # ≈ F⁻¹ g, and F F⁻¹ g
    check_finite("natural-gradient direction (conjugate gradient on the KL Hessian)", [direction, f_direction])
    step_curvature = 0.5 * (direction @ f_direction)
    full_step = direction * math.sqrt(outer.max_kl / max(step_curvature.item(), 1e-12))
    del fvp, curvature  # free the cached passes before the line search builds its own
    cg_done = time.perf_counter()

    theta = flat(params).detach()

    def evaluate(step: Tensor) -> tuple[float, float]:
        _assign(params, theta - step)
        return loss_and_kl(policy, batch, inner, old_pi)

    accepted, loss_after, kl_after = line_search(
        evaluate, full_step, loss.item(), outer.max_kl, outer.ls_max_steps, outer.ls_backtrack_ratio
    )
    if accepted is None:  # no step improved within the trust region: keep θ
        _assign(params, theta)
        loss_after, kl_after = loss.item(), 0.0
    check_finite("parameters after the outer step", dict(policy.named_parameters()))
    step_norm = 0.0 if accepted is None else (outer.ls_backtrack_ratio**accepted * full_step).norm().item()
    end = time.perf_counter()
    return {
        "loss/outer": loss.item(),
        "loss/outer_after": loss_after,
        **inner_loss_before,
        "policy/kl": kl_after,
        "policy/entropy": masked_mean(old_pi.entropy(), batch.outer.mask).item(),
        "optim/grad_norm": grad.norm().item(),
        "optim/step_norm": step_norm,
        "optim/line_search_steps": float(accepted + 1 if accepted is not None else outer.ls_max_steps),
        "optim/step_accepted": float(accepted is not None),
        "time/meta_gradient_s": gradient_done - start,
        "time/conjugate_gradient_s": cg_done - gradient_done,
        "time/line_search_s": end - cg_done,
    }


@dataclasses.dataclass(frozen=True)
class AdaptationCurvature:
    """Derivatives of the adaptation θ → θ'(θ) at the current θ, computed once per outer step.

    At the current θ the KL between old and new adapted policies is minimal in θ', so its Hessian
    in θ is exactly ``Σ_i J_iᵀ H_i J_i``, with ``H_i`` the Hessian of task i's KL in θ'_i and
    ``J_i = ∂θ'_i/∂θ``. For one inner step ``J_i = I − α ∇²L_i(θ)`` (symmetric; a product of such
    factors for several steps, the identity for first-order MAML). The meta-gradient is likewise
    ``Σ_i J_iᵀ ∇θ'L(θ'_i)``. Applying the factors as Hessian-vector products avoids
    back-propagating through the inner update's own gradient graph (third derivatives for the KL).
    """

    adapted: Params  # θ'_i for every task (constants)
    old_pi: Distribution  # π_θ' on the post-adaptation observations
    lr: float
    inner_hessians: list[Product]  # v -> ∇²L_j v at θ^(j), one per inner step (none for first-order)
    kl_hessian: Product  # v -> H v in θ'
    # Exact inner-loss products (all steps, full precision) when the two above are estimates: for
    # the meta-gradient.
    exact_inner_hessians: list[Product] | None = None

    def jacobian_product(self, vectors: list[Tensor], transpose: bool = False, exact: bool = False) -> list[Tensor]:
        """``J v`` (or ``Jᵀ v``) per task, for vectors with a leading task dimension."""
        hessians = self.exact_inner_hessians if exact and self.exact_inner_hessians is not None else self.inner_hessians
        for hessian in reversed(hessians) if transpose else hessians:
            vectors = [v - self.lr * h for v, h in zip(vectors, hessian(vectors), strict=True)]
        return vectors

    def meta_gradient(
        self, policy: nn.Module, outer: Episodes, tasks: Sequence[Any] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The meta-objective at θ and its gradient ``Σ_i J_iᵀ ∇θ'L(θ'_i)`` as a flat vector."""
        adapted = {name: p.detach().requires_grad_() for name, p in self.adapted.items()}
        with torch.enable_grad():
            loss = surrogate_loss(policy, adapted, outer)
            grads = torch.autograd.grad(loss, list(adapted.values()))
        check_finite("post-adaptation loss gradient", grads, tasks)
        return loss.detach(), flat([g.sum(0) for g in self.jacobian_product(list(grads), transpose=True, exact=True)])

    def kl_hessian_product(self, damping: float) -> Callable[[Tensor], Tensor]:
        """``v -> (∇²θ KL + damping·I) v`` on flat vectors of θ's size."""
        shapes = [p.shape[1:] for p in self.adapted.values()]
        num_tasks = next(iter(self.adapted.values())).shape[0]

        def product(v: Tensor) -> Tensor:
            pieces = torch.split(v, [math.prod(s) for s in shapes])
            w = [piece.view(s).expand(num_tasks, *s).contiguous() for piece, s in zip(pieces, shapes, strict=True)]
            w = self.jacobian_product(self.kl_hessian(self.jacobian_product(w)), transpose=True)
            return flat([x.sum(0) for x in w]) + damping * v

        return product


def adaptation_curvature(
    policy: nn.Module,
    batch: MetaBatch,
    inner: InnerConfig,
    backend: str = "auto",
    stride: int = 1,
    precision: str = "full",
) -> AdaptationCurvature:
    """θ^(j) along the inner steps, θ', and the curvature products at them (see `AdaptationCurvature`):
    R-operator products for metarl's Gaussian MLP, double back-propagation for any other policy
    (or for any policy with ``backend="autograd"``; the numbers are the same).

    The trust region's products may be estimates: with ``stride > 1`` they use every stride-th
    step of each task, with ``precision="bfloat16"`` they multiply in bfloat16 (R-operator
    products only). θ', the old policy and the meta-gradient's Jacobian products stay exact."""
    if precision != "full" and not (backend == "auto" and supports_fast_curvature(policy)):
        raise ValueError(
            f"outer.curvature_precision={precision!r} needs metarl's Gaussian MLP policy (tanh or ReLU); "
            f"use outer.curvature_precision=full for {type(policy).__name__}"
        )
    params = batch.adaptation_at(policy)  # θ^(j) before inner step j, and θ'
    if params is None:  # θ moved since sampling: adapt again
        params = [per_task(detach(parameters_of(policy)), len(batch.tasks))]
        for episodes in batch.inner:
            params.append(detach(adapt(policy, params[-1], [episodes], inner.lr, create_graph=False)))
    adapted = params.pop()
    with torch.no_grad():
        old_pi = distribution(policy, adapted, batch.outer.observations)
    dtype = getattr(torch, precision) if precision != "full" else None
    inner_batches = () if inner.first_order else batch.inner
    sample, sample_outer = inner_batches, batch.outer  # the trust region's episodes
    if stride > 1:
        sample = tuple(every_nth_step(e, stride) for e in inner_batches)
        sample_outer = every_nth_step(batch.outer, stride)
    estimated = stride > 1 or precision != "full"
    return AdaptationCurvature(
        adapted,
        old_pi,
        inner.lr,
        inner_hessians=_inner_hessians(policy, params, sample, backend, dtype),
        kl_hessian=_kl_hessian(policy, adapted, sample_outer, backend, dtype, None if stride > 1 else old_pi),
        exact_inner_hessians=_inner_hessians(policy, params, inner_batches, backend) if estimated else None,
    )


def _lazy(build: Callable[[], Product]) -> Product:
    """A curvature product whose cached passes are computed when it is first applied, so that only
    the cached passes in use take memory."""
    built: list[Product] = []

    def product(vectors: list[Tensor]) -> list[Tensor]:
        if not built:
            built.append(build())
        return built[0](vectors)

    return product


def every_nth_step(episodes: Episodes, stride: int) -> Episodes:
    """Every stride-th step of each task's packed row (`pack_steps`): a cheaper curvature sample."""
    return Episodes(**{f.name: _every(getattr(episodes, f.name), stride) for f in dataclasses.fields(Episodes)})


def _every(x: Tensor | None, stride: int) -> Tensor | None:
    return None if x is None else x[:, :, ::stride]


def _inner_hessians(
    policy: nn.Module,
    params: list[Params],
    inner_batches: Sequence[Episodes],
    backend: str,
    dtype: torch.dtype | None = None,
) -> list[Product]:
    """``v -> ∇²L_j v`` of inner step j's loss on its episodes at θ^(j) (`params[j]`), multiplied in
    `dtype` (default: the parameters')."""
    steps = list(zip(params[: len(inner_batches)], inner_batches, strict=True))
    if backend == "auto" and supports_fast_curvature(policy):

        def hessian(at: Params, episodes: Episodes) -> Product:
            return GaussianMLPCurvature(policy, at, episodes.observations, dtype).reinforce_hessian_product(episodes)

        return [_lazy(lambda at=at, e=e: hessian(at, e)) for at, e in steps]
    return [autograd_hessian(lambda p, e=e: inner_loss(policy, p, e).sum(), at) for at, e in steps]


def _kl_hessian(
    policy: nn.Module,
    adapted: Params,
    outer: Episodes,
    backend: str,
    dtype: torch.dtype | None = None,
    old_pi: Distribution | None = None,
) -> Product:
    """``v -> H v`` of the mean KL on `outer`'s episodes at θ' (`adapted`), where it is the Fisher
    matrix. `old_pi`: π_θ' on ``outer.observations``, if already computed."""
    if backend == "auto" and supports_fast_curvature(policy):
        weights = outer.mask / outer.mask.sum((-2, -1), keepdim=True).clamp(min=1) / outer.mask.shape[0]
        return _lazy(lambda: GaussianMLPCurvature(policy, adapted, outer.observations, dtype).fisher_product(weights))
    if old_pi is None:
        with torch.no_grad():
            old_pi = distribution(policy, adapted, outer.observations)
    return autograd_hessian(lambda p: mean_kl(old_pi, distribution(policy, p, outer.observations), outer.mask), adapted)


def adapted_fisher_product(
    policy: nn.Module, batch: MetaBatch, inner: InnerConfig, damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> (∇²θ KL + damping·I) v`` for the KL between old and new adapted policies at θ."""
    return adaptation_curvature(policy, batch, inner).kl_hessian_product(damping)


def gradient_step(
    policy: nn.Module, optimizer: torch.optim.Optimizer, batch: MetaBatch, inner: InnerConfig, outer: OuterConfig
) -> dict[str, float]:
    """θ ← θ − β ∇θ Σ_i L(θ'_i(θ)) with Adam or SGD (the update rule of the MAML paper's Alg. 3)."""
    params = list(policy.parameters())
    inner_loss_before = _inner_loss_stats(policy, batch)
    loss, old_pi = meta_loss(policy, batch, inner)
    optimizer.zero_grad()
    loss.backward()
    check_finite("meta-gradient", [p.grad for p in params if p.grad is not None])
    if outer.max_grad_norm is not None:
        grad_norm = nn.utils.clip_grad_norm_(params, outer.max_grad_norm)
    else:
        grad_norm = flat([p.grad for p in params]).norm()
    optimizer.step()
    check_finite("parameters after the outer step", dict(policy.named_parameters()))
    loss_after, kl_after = loss_and_kl(policy, batch, inner, old_pi)
    return {
        "loss/outer": loss.item(),
        "loss/outer_after": loss_after,
        **inner_loss_before,
        "policy/kl": kl_after,
        "policy/entropy": masked_mean(old_pi.entropy(), batch.outer.mask).item(),
        "optim/grad_norm": grad_norm.item(),
    }


def _inner_loss_stats(policy: nn.Module, batch: MetaBatch) -> dict[str, float]:
    """The first inner-step loss at the current θ, averaged over tasks (none without inner steps)."""
    if not batch.inner:
        return {}
    if batch.inner_losses and batch.adaptation_at(policy) is not None:  # recorded while sampling
        return {"loss/inner": batch.inner_losses[0].mean().item()}
    with torch.no_grad():
        params = per_task(detach(parameters_of(policy)), len(batch.tasks))
        return {"loss/inner": inner_loss(policy, params, batch.inner[0]).mean().item()}


def _assign(params: Sequence[Tensor], vector: Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(vector[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
