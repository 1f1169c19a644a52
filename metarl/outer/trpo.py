"""MAML-TRPO (Finn et al. 2017, after Schulman et al. 2015): the MAML paper's outer loop.

A natural-gradient step on the meta-objective, as large as the trust region allows: the mean KL
between old and new *adapted* policies on the post-adaptation episodes stays within ``max_kl``.
The step direction solves ``F x = g`` by conjugate gradient, with ``F`` the Hessian of that KL in θ
(through the inner update unless first-order), applied as products (`AdaptationCurvature`); a
backtracking line search then accepts the first step that lowers the meta-objective within the
trust region, or keeps θ.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from metarl.config import OuterConfig
from metarl.curvature import GaussianMLPCurvature, Product, autograd_hessian, supports_fast_curvature, task_chunks
from metarl.episodes import Episodes, every_nth_step, select_tasks
from metarl.functional import Params, assign, detach, distribution, flat, parameters_of, per_task
from metarl.inner import InnerLoop, StepSize, check_finite
from metarl.maml import MetaBatch, inner_loss_stats, loss_and_kl, mean_kl, outer_statistics, surrogate_losses
from metarl.outer.base import meta_parameters


class TRPO:
    """MAML-TRPO over θ: no state of its own between meta-batches."""

    def __init__(self, policy: nn.Module, inner: InnerLoop, config: OuterConfig) -> None:
        self.policy, self.inner, self.config = policy, inner, config

    def step(self, batch: MetaBatch) -> dict[str, float]:
        """A natural-gradient step within ``max_kl`` (Alg. 3, line 10); returns its statistics."""
        policy, inner, outer = self.policy, self.inner, self.config
        start = time.perf_counter()
        params = meta_parameters(policy, inner)  # θ, and the learned step sizes
        inner_loss_before = inner_loss_stats(policy, batch, inner)
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
            assign(params, theta - step)
            return loss_and_kl(policy, batch, inner, old_pi)

        accepted, loss_after, kl_after = line_search(
            evaluate, full_step, loss.item(), outer.max_kl, outer.ls_max_steps, outer.ls_backtrack_ratio
        )
        if accepted is None:  # no step improved within the trust region: keep θ
            assign(params, theta)
            loss_after, kl_after = loss.item(), 0.0
        check_finite("parameters after the outer step", params)
        step_norm = 0.0 if accepted is None else (outer.ls_backtrack_ratio**accepted * full_step).norm().item()
        end = time.perf_counter()
        return {
            "loss/outer": loss.item(),
            "loss/outer_after": loss_after,
            **inner_loss_before,
            "policy/kl": kl_after,
            **outer_statistics(policy, batch, old_pi),
            "optim/grad_norm": grad.norm().item(),
            "optim/step_norm": step_norm,
            "optim/line_search_steps": float(accepted + 1 if accepted is not None else outer.ls_max_steps),
            "optim/step_accepted": float(accepted is not None),
            "time/meta_gradient_s": gradient_done - start,
            "time/conjugate_gradient_s": cg_done - gradient_done,
            "time/line_search_s": end - cg_done,
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class AdaptationCurvature:
    """Derivatives of the adaptation θ → θ'(θ) at the current θ, computed once per outer step.

    At the current θ the KL between old and new adapted policies is minimal in θ', so its Hessian
    in θ is exactly ``Σ_i J_iᵀ H_i J_i``, with ``H_i`` the Hessian of task i's KL in θ'_i and
    ``J_i = ∂θ'_i/∂θ``. For one inner step ``J_i = I − α ∇²L_i(θ)`` (symmetric for one α; a
    product of such factors for several steps, the identity for first-order MAML). The
    meta-gradient is likewise ``Σ_i J_iᵀ ∇θ'L(θ'_i)``. Applying the factors as Hessian-vector
    products avoids back-propagating through the inner update's own gradient graph (third
    derivatives for the KL).

    With learned step sizes (Meta-SGD) the meta-parameters are (θ, α): step k,
    ``θ^(k+1) = θ^(k) − α ∘ g_k``, adds ``∂θ^(k+1)/∂α = (I − diag(α) H_k) ∂θ^(k)/∂α − diag(g_k)``,
    so the vectors of the conjugate-gradient solve and the meta-gradient carry an α part too.
    """

    adapted: Params  # θ'_i for every task (constants)
    old_pi: Distribution  # π_θ' on the post-adaptation observations
    lr: StepSize
    inner_hessians: list[Product]  # v -> ∇²L_j v at θ^(j), one per inner step (none for first-order)
    kl_hessian: Product  # v -> H v in θ'
    # Exact inner-loss products (all steps, full precision) when the two above are estimates: for
    # the meta-gradient.
    exact_inner_hessians: list[Product] | None = None
    # Learned step sizes only: the inner gradients g_k per task, one list per inner step.
    inner_gradients: list[list[Tensor]] | None = None

    @property
    def learned(self) -> bool:
        return isinstance(self.lr, dict)

    def jacobian_product(
        self,
        vectors: list[Tensor],
        transpose: bool = False,
        exact: bool = False,
        alpha_vectors: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """``J v`` (or ``Jᵀ v``) per task, for vectors with a leading task dimension.

        One step's factor is ``I − diag(α) ∇²L``: ``v − α ∘ ∇²L v``, transposed ``v − ∇²L (α ∘ v)``
        (the same for one α; the identity for first-order MAML). With learned step sizes, ``J v``
        adds ``−g_k ∘ v_α`` at every step for the α part `alpha_vectors` of the direction
        (`transpose_alpha` gives ``J_αᵀ u``)."""
        hessians, alphas = self._hessians(exact), self._alphas()
        if transpose:
            for hessian in reversed(hessians):
                vectors = self._transposed_factor(hessian, alphas, vectors)
            return vectors
        for k in range(self._steps()):
            if hessians:
                vectors = [v - a * h for v, a, h in zip(vectors, alphas, hessians[k](vectors), strict=True)]
            if alpha_vectors is not None:
                gradients = self.inner_gradients[k]
                vectors = [v - g * va for v, g, va in zip(vectors, gradients, alpha_vectors, strict=True)]
        return vectors

    def transpose_alpha(self, vectors: list[Tensor], exact: bool = False) -> list[Tensor]:
        """``J_αᵀ u``: the α part of the transposed product, summed over tasks (α is shared)."""
        hessians, alphas = self._hessians(exact), self._alphas()
        out = [torch.zeros_like(v[0]) for v in vectors]
        for k in reversed(range(self._steps())):
            # `vectors` is the cotangent after step k: the step contributes −g_k ∘ u_{k+1}.
            out = [o - (g * v).sum(0) for o, g, v in zip(out, self.inner_gradients[k], vectors, strict=True)]
            if hessians:
                vectors = self._transposed_factor(hessians[k], alphas, vectors)
        return out

    def _transposed_factor(self, hessian: Product, alphas: list[Tensor | float], vectors: list[Tensor]) -> list[Tensor]:
        """``(I − diag(α) ∇²L)ᵀ v = v − ∇²L (α ∘ v)`` (for one α: ``v − α ∇²L v``, the same)."""
        if self.learned:
            products = hessian([a * v for a, v in zip(alphas, vectors, strict=True)])
            return [v - h for v, h in zip(vectors, products, strict=True)]
        return [v - a * h for v, a, h in zip(vectors, alphas, hessian(vectors), strict=True)]

    def _steps(self) -> int:
        return len(self.inner_gradients) if self.inner_gradients is not None else len(self.inner_hessians)

    def _hessians(self, exact: bool) -> list[Product]:
        return self.exact_inner_hessians if exact and self.exact_inner_hessians is not None else self.inner_hessians

    def _alphas(self) -> list[Tensor | float]:
        """α per parameter, in parameter order (one number repeated for a single α)."""
        if isinstance(self.lr, dict):
            return [self.lr[name].detach() for name in self.adapted]
        return [self.lr] * len(self.adapted)

    def meta_gradient(
        self, policy: nn.Module, outer: Episodes, tasks: Sequence[Any] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The meta-objective at θ and its gradient ``Σ_i J_iᵀ ∇θ'L(θ'_i)`` as a flat vector (θ, then α
        when the step sizes are learned)."""
        # Over groups of tasks: each task's gradient is its own, only the memory of the graph changes.
        num_tasks = outer.mask.shape[0]
        losses, pieces = [], []
        for rows in task_chunks(num_tasks, outer.mask[0].numel()):
            adapted = {name: p[rows].detach().requires_grad_() for name, p in self.adapted.items()}
            with torch.enable_grad():
                task_losses = surrogate_losses(policy, adapted, select_tasks(outer, rows))
                pieces.append(torch.autograd.grad(task_losses.sum() / num_tasks, list(adapted.values())))
            losses.append(task_losses.detach())
        loss, grads = torch.cat(losses).mean(), [torch.cat(piece) for piece in zip(*pieces, strict=True)]
        check_finite("post-adaptation loss gradient", grads, tasks)
        theta_part = [g.sum(0) for g in self.jacobian_product(list(grads), transpose=True, exact=True)]
        alpha_part = self.transpose_alpha(list(grads), exact=True) if self.learned else []
        return loss.detach(), flat([*theta_part, *alpha_part])

    def kl_hessian_product(self, damping: float) -> Callable[[Tensor], Tensor]:
        """``v -> (∇² KL + damping·I) v`` on flat vectors of the meta-parameters (θ, and learned α)."""
        shapes = [p.shape[1:] for p in self.adapted.values()]
        sizes = [math.prod(s) for s in shapes] * (2 if self.learned else 1)
        num_tasks = next(iter(self.adapted.values())).shape[0]

        def product(v: Tensor) -> Tensor:
            pieces = torch.split(v, sizes)
            w = [piece.view(s).expand(num_tasks, *s).contiguous() for piece, s in zip(pieces, shapes, strict=False)]
            alpha_v = None
            if self.learned:
                alpha_v = [piece.view(s) for piece, s in zip(pieces[len(shapes) :], shapes, strict=True)]
            u = self.kl_hessian(self.jacobian_product(w, alpha_vectors=alpha_v))
            theta_part = [x.sum(0) for x in self.jacobian_product(u, transpose=True)]
            alpha_part = self.transpose_alpha(u) if self.learned else []
            return flat([*theta_part, *alpha_part]) + damping * v

        return product


def adaptation_curvature(
    policy: nn.Module,
    batch: MetaBatch,
    inner: InnerLoop,
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
    params = batch.adaptation_at(policy, inner)  # θ^(j) before inner step j, and θ'
    if params is None:  # θ moved since sampling: adapt again
        params = [per_task(detach(parameters_of(policy)), len(batch.tasks))]
        for episodes in batch.inner:
            params.append(detach(inner.adapt(policy, params[-1], [episodes], create_graph=False)))
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
    gradients = _inner_gradients(policy, params, batch.inner, inner) if inner.learned else None
    return AdaptationCurvature(
        adapted,
        old_pi,
        inner.lr if not inner.learned else {name: a.detach() for name, a in inner.lr.items()},
        inner_hessians=_inner_hessians(policy, params, sample, inner, backend, dtype),
        kl_hessian=_kl_hessian(policy, adapted, sample_outer, backend, dtype, None if stride > 1 else old_pi),
        exact_inner_hessians=_inner_hessians(policy, params, inner_batches, inner, backend) if estimated else None,
        inner_gradients=gradients,
    )


def _inner_gradients(
    policy: nn.Module, params: list[Params], inner_batches: Sequence[Episodes], inner: InnerLoop
) -> list[list[Tensor]]:
    """``g_k = ∇L_k(θ^(k))`` per task, for every inner step (first-order: the gradients still scale α)."""
    gradients = []
    for at, episodes in zip(params, inner_batches, strict=False):
        leaves = {name: p.detach().requires_grad_() for name, p in at.items()}
        with torch.enable_grad():
            loss = inner.loss(policy, leaves, episodes).sum()
            gradients.append(list(torch.autograd.grad(loss, list(leaves.values()))))
    return gradients


def _lazy(build: Callable[[], Product]) -> Product:
    """A curvature product whose cached passes are computed when it is first applied, so that only
    the cached passes in use take memory."""
    built: list[Product] = []

    def product(vectors: list[Tensor]) -> list[Tensor]:
        if not built:
            built.append(build())
        return built[0](vectors)

    return product


def _inner_hessians(
    policy: nn.Module,
    params: list[Params],
    inner_batches: Sequence[Episodes],
    inner: InnerLoop,
    backend: str,
    dtype: torch.dtype | None = None,
) -> list[Product]:
    """``v -> ∇²L_j v`` of inner step j's objective on its episodes at θ^(j) (`params[j]`), multiplied
    in `dtype` (default: the parameters'). R-operator products exist for the REINFORCE objective;
    the other estimators use double back-propagation."""
    steps = list(zip(params[: len(inner_batches)], inner_batches, strict=True))
    if backend == "auto" and supports_fast_curvature(policy) and inner.estimator == "reinforce":

        def hessian(at: Params, episodes: Episodes) -> Product:
            return GaussianMLPCurvature(policy, at, episodes.observations, dtype).reinforce_hessian_product(episodes)

        return [_lazy(lambda at=at, e=e: hessian(at, e)) for at, e in steps]
    return [autograd_hessian(lambda p, e=e: inner.loss(policy, p, e).sum(), at) for at, e in steps]


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
    policy: nn.Module, batch: MetaBatch, inner: InnerLoop, damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> (∇²θ KL + damping·I) v`` for the KL between old and new adapted policies at θ."""
    return adaptation_curvature(policy, batch, inner).kl_hessian_product(damping)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given ``x -> A x``.

    Returns ``x`` and ``A x``. CG keeps the residual ``r = b - A x`` up to date, so ``A x = b - r``
    comes for free (saving the extra product TRPO needs for the step's curvature ``xᵀ A x``).
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    if rr < tol:  # b = 0 (e.g. all advantages zero): x = 0, not 0/0
        return x, b - r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = r @ r
        if rr_next < tol:
            break
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x, b - r


def line_search(
    evaluate: Callable[[Tensor], tuple[float, float]],
    full_step: Tensor,
    loss_before: float,
    max_kl: float,
    max_steps: int,
    ratio: float,
) -> tuple[int | None, float, float]:
    """Try steps ``ratio^k · full_step``; accept the first that lowers the loss within `max_kl`.

    Args:
        evaluate: ``step -> (loss, kl)`` for the parameters moved by `step`.
    Returns:
        The accepted backtracking index (None if no step was accepted), and the loss and KL of the
        last step tried.
    """
    loss, kl = loss_before, 0.0
    for k in range(max_steps):
        loss, kl = evaluate(ratio**k * full_step)
        if loss < loss_before and kl <= max_kl:
            return k, loss, kl
    return None, loss, kl
