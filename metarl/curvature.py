"""Curvature products for MAML-TRPO: ``v -> ∇²L v`` of the inner loss and ``v -> F v`` of the KL.

The trust region of MAML-TRPO needs, at every conjugate-gradient iteration, Hessian-vector products
of the inner REINFORCE loss (through the Jacobian of the adaptation) and of the KL between old and
new adapted policies. Two implementations give the same numbers:

- `autograd_hessian` works for any policy: double back-propagation through a retained graph.
- `GaussianMLPCurvature` is for metarl's `GaussianMLPPolicy`: Pearlmutter's R-operator written out
  for the MLP. The forward activations, the backward errors and the loss derivatives do not
  change during the conjugate-gradient solve, so they are computed once; each product is then one
  forward and one backward sweep of directional derivatives, about half the work of autograd's
  double backward. For the KL at equal old and new policies the Hessian is exactly the Fisher
  matrix ``Jᵀ diag(1/σ², 2) J`` (the terms with second derivatives of the network vanish there).
  Its products can also run in bfloat16 (`outer.curvature_precision`): 2–3× faster on CPUs with
  bfloat16 units, at about three significant digits.

Vectors are lists of tensors in the policy's parameter order, each with a leading task dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from metarl.episodes import Episodes
from metarl.functional import Params
from metarl.policies import GaussianMLPPolicy

Product = Callable[[list[Tensor]], list[Tensor]]
ChunkProduct = Callable[[slice, dict[str, Tensor]], dict[str, Tensor]]
# Steps per group of tasks in `GaussianMLPCurvature`'s products and the meta-gradient: a product's
# intermediate values take about ten floats per step and hidden unit (~50 MiB for 10,000 steps of a
# (128, 128) policy). Groups this small also stay in the CPU's caches: at ML1 sizes a product took
# 0.39 s in groups of 10,000 steps, 0.48 s in groups of 25,000 and 0.70 s over all 100,000 at once.
CHUNK_ROWS = 10_000
# Up to this many bytes per cached pass, the products also keep what they can recompute from it
# (φ′ of the hidden layers, the inner loss's δ and second-derivative factors), which is faster where
# the matrices are small (2D navigation: 112–139 against 131–143 ms per Hessian and Fisher product);
# above it they recompute it for every group, which halves the cache (ML1: 610 → 317 MiB;
# experiments/results/metaworld/cached_passes.txt). The numbers are the same either way.
KEEP_DERIVED_BYTES = 64 * 2**20


def autograd_hessian(loss: Callable[[Params], Tensor], at: Params) -> Product:
    """``v -> ∇²loss(at) v`` by double back-propagation through a retained graph (any policy).
    `loss` is a scalar, summed over tasks."""
    leaves = {name: p.detach().requires_grad_() for name, p in at.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)

    def product(vectors: list[Tensor]) -> list[Tensor]:
        return list(torch.autograd.grad(grads, list(leaves.values()), grad_outputs=vectors, retain_graph=True))

    return product


def task_chunks(num_tasks: int, steps_per_task: int, chunk_rows: int | None = None) -> list[slice]:
    """Consecutive groups of tasks of about `chunk_rows` (default `CHUNK_ROWS`) steps in all, at least
    one task each."""
    per_chunk = max(1, (chunk_rows or CHUNK_ROWS) // max(steps_per_task, 1))
    return [slice(a, min(a + per_chunk, num_tasks)) for a in range(0, num_tasks, per_chunk)]


class GaussianMLPCurvature:
    """Cached forward and backward passes of a `GaussianMLPPolicy` with per-task parameters.

    Args:
        policy: the module (its layer structure and activation; its own parameters are not used).
        params: per-task parameters ``[B, ...]``, named as ``policy.named_parameters()``.
        observations: packed observations ``[B, 1, N, obs]``.
        dtype: arithmetic of the products (default: the parameters'). The forward pass is done in
            the parameters' dtype, the cached passes are then stored in `dtype`, and each product
            returns the parameters' dtype; ``torch.bfloat16`` is the trust region's cheap estimate.
        chunk_rows: steps per group of tasks a product runs over (`task_chunks`; the numbers do
            not depend on it).
    """

    def __init__(
        self,
        policy: GaussianMLPPolicy,
        params: Params,
        observations: Tensor,
        dtype: torch.dtype | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        self.names = [name for name, _ in policy.named_parameters()]
        self.num_layers = len(policy.mean.layers)
        self.activation = policy.mean.activation
        weights = [params[f"mean.layers.{i}.weight"].detach() for i in range(self.num_layers)]
        biases = [params[f"mean.layers.{i}.bias"].detach() for i in range(self.num_layers)]
        log_std = params["log_std"].detach()
        self.active_log_std = (log_std > policy.min_log_std).to(log_std.dtype)  # the clamp's gradient
        self.var = torch.exp(2 * log_std.clamp(min=policy.min_log_std)).unsqueeze(1)  # [B, 1, act]

        # The products' arithmetic (bfloat16 matmuls accumulate in float32 but round every stored
        # tensor to an 8-bit mantissa); the forward pass itself runs in the parameters' dtype.
        self.dtype, self.out_dtype = dtype or observations.dtype, observations.dtype
        self.weights = [w.to(self.dtype) for w in weights]

        # Forward pass: the input of every layer (a hidden layer's φ'(z) follows from its output, `_slopes`).
        num_tasks = observations.shape[0]
        h = self._rows(observations.reshape(num_tasks, -1, observations.shape[-1]).detach())
        # Products run over groups of tasks of about `chunk_rows` steps: each task's numbers are its own,
        # so only the memory of a product's intermediate values changes (a tenth at ML1's sizes).
        self.chunks = task_chunks(num_tasks, h.shape[1], chunk_rows)
        self.inputs = [h.to(self.dtype)]
        self.inputs += [h.new_empty(*h.shape[:2], w.shape[1], dtype=self.dtype) for w in weights[:-1]]
        self.mean = h.new_empty(*h.shape[:2], weights[-1].shape[1])
        for rows in self.chunks:  # a group at a time: only the stored values are full size
            x = h[rows]
            for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
                z = torch.baddbmm(bias[rows].unsqueeze(1), x, weight[rows].transpose(1, 2))
                if i == self.num_layers - 1:
                    self.mean[rows] = z
                else:
                    x = torch.tanh(z) if self.activation == "tanh" else torch.relu(z)
                    self.inputs[i + 1][rows] = x
        self.kept_slopes: list[Tensor] | None = None
        if sum(h.numel() * h.element_size() for h in self.inputs[1:]) <= KEEP_DERIVED_BYTES:
            self.kept_slopes = self._slopes(slice(None))

    def _slopes(self, rows: slice) -> list[Tensor]:
        """φ'(z) of every hidden layer for the tasks `rows`, from the layer's output (the next layer's
        input): ``1 − tanh²``, or ReLU's step (piecewise linear, no second derivative). Kept when the
        cached pass is small (`KEEP_DERIVED_BYTES`), else recomputed for every product: they would
        take as much memory as the hidden layers' inputs."""
        if self.kept_slopes is not None:
            return [slope[rows] for slope in self.kept_slopes]
        hidden = [h[rows] for h in self.inputs[1:]]
        return [1 - h * h if self.activation == "tanh" else (h > 0).to(self.dtype) for h in hidden]

    def _rows(self, x: Tensor) -> Tensor:
        """``[B, N, k]`` per-step values, zero-padded to a multiple of 64 steps in reduced precision.

        Padded steps carry zero weight, so they add nothing to any product. They keep the
        matrix shapes the same from one iteration to the next. oneDNN, which runs the bfloat16
        matmuls, caches a primitive for every new shape, and that cache grew by tens of MiB per
        iteration when the step count changed every time.
        """
        if self.dtype == self.out_dtype:
            return x
        return torch.nn.functional.pad(x, (0, 0, 0, -x.shape[1] % 64))

    def _low(self, vectors: list[Tensor]) -> dict[str, Tensor]:
        """The vectors in the products' arithmetic (log σ's part stays in the parameters' dtype)."""
        return {name: v if name == "log_std" else v.to(self.dtype) for name, v in zip(self.names, vectors, strict=True)}

    def _out(self, out: dict[str, Tensor]) -> list[Tensor]:
        return [out[name].to(self.out_dtype) for name in self.names]

    def _by_chunks(self, vectors: list[Tensor], chunk_product: ChunkProduct) -> list[Tensor]:
        """``chunk_product(rows, vectors[rows])`` for every chunk of tasks, joined along the tasks."""
        low = self._low(vectors)
        pieces = [chunk_product(rows, {name: v[rows] for name, v in low.items()}) for rows in self.chunks]
        return self._out({name: torch.cat([piece[name] for piece in pieces]) for name in self.names})

    def _forward_tangent(
        self, rows: slice, vectors: dict[str, Tensor], slopes: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``R{z_l}`` of every layer's pre-activation (the last is R{μ}) and ``R{h_l}`` of every hidden
        layer's output for the tasks `rows` (whose `slopes` these are): the directional derivatives
        along `vectors`."""
        tangents, input_tangents, rh = [], [], None
        for i, (weight, h) in enumerate(zip(self.weights, self.inputs, strict=True)):
            dw, db = vectors[f"mean.layers.{i}.weight"], vectors[f"mean.layers.{i}.bias"]
            rz = torch.baddbmm(db.unsqueeze(1), h[rows], dw.transpose(1, 2))
            if rh is not None:
                rz.baddbmm_(rh, weight[rows].transpose(1, 2))
            tangents.append(rz)
            if i < self.num_layers - 1:
                rh = slopes[i] * rz
                input_tangents.append(rh)
        return tangents, input_tangents

    def _layer_gradients(self, rows: slice, deltas: list[Tensor], extra: list[Tensor | None]) -> dict[str, Tensor]:
        """``δ_lᵀ h_{l-1}`` (+ `extra` inputs' terms) and ``Σ δ_l`` for every layer, for the tasks `rows`."""
        out = {}
        for i, delta in enumerate(deltas):
            grad_w = torch.bmm(delta.transpose(1, 2), self.inputs[i][rows])
            if extra[i] is not None:
                grad_w = grad_w + extra[i]
            out[f"mean.layers.{i}.weight"] = grad_w
            out[f"mean.layers.{i}.bias"] = delta.sum(1)
        return out

    def fisher_product(self, weights: Tensor) -> Product:
        """``v -> F v`` for the KL ``Σ_n weights_n KL(π_old(·|s_n) ‖ π(·|s_n))`` at π = π_old.

        `weights`: ``[B, 1, N]`` per-step weights (the mask divided by the averaging counts).
        """
        w = self._rows(weights.reshape(weights.shape[0], -1, 1))
        scale = (w / self.var).to(self.dtype)  # ∂²KL/∂μ² = 1/σ²
        log_std_curvature = 2 * w.sum(1)  # ∂²KL/∂(log σ)² = 2

        def chunk_product(rows: slice, v: dict[str, Tensor]) -> dict[str, Tensor]:
            slopes = self._slopes(rows)
            tangents, _ = self._forward_tangent(rows, v, slopes)
            delta = scale[rows] * tangents[-1]
            deltas = [delta]
            for i in range(self.num_layers - 1, 0, -1):
                delta = slopes[i - 1] * torch.bmm(delta, self.weights[i][rows])
                deltas.insert(0, delta)
            out = self._layer_gradients(rows, deltas, [None] * self.num_layers)
            out["log_std"] = log_std_curvature[rows] * v["log_std"] * self.active_log_std[rows]
            return out

        return lambda vectors: self._by_chunks(vectors, chunk_product)

    def reinforce_hessian_product(self, episodes: Episodes) -> Product:
        """``v -> ∇²L v`` for the inner loss ``L = Σ_b -mean_n log π(a_n|s_n) Â_n`` of `inner_loss`."""
        num_tasks = self.mean.shape[0]
        mask = self._rows(episodes.mask.reshape(num_tasks, -1, 1))
        c = mask * self._rows(episodes.advantages.reshape(num_tasks, -1, 1)) / mask.sum(1, keepdim=True).clamp(min=1)
        diff = self._rows(episodes.actions.reshape(num_tasks, -1, self.mean.shape[-1])) - self.mean
        e = -c * diff / self.var  # ∂L/∂μ
        mean_curvature = c / self.var  # ∂²L/∂μ²; ∂²L/∂μ∂(log σ) = -2e
        log_std_curvature = 2 * (c * diff * diff / self.var).sum(1)  # ∂²L/∂(log σ)²

        # Backward pass of ∂L/∂μ, kept per hidden layer as ∂L/∂h_l = δ_{l+1} W_{l+1} ("back"): a
        # product takes δ_l = φ'(z_l) ⊙ back_l and, for tanh, the second-derivative factor
        # φ''(z_l) ⊙ back_l with φ'' = -2 tanh(z) φ' (ReLU has none) from it for its own tasks.
        e_low = e.to(self.dtype)
        backs = [torch.empty_like(h) for h in self.inputs[1:]]
        for rows in self.chunks:  # a group at a time: its slopes and δ are only temporary
            delta, slopes = e_low[rows], self._slopes(rows)
            for i in range(self.num_layers - 1, 0, -1):
                backs[i - 1][rows] = torch.bmm(delta, self.weights[i][rows])
                delta = slopes[i - 1] * backs[i - 1][rows]
        mean_curvature = mean_curvature.to(self.dtype)

        def delta_and_bent(i: int, rows: slice, slopes: list[Tensor]) -> tuple[Tensor, Tensor | None]:
            """δ_i of layer i ≥ 1 (∂L/∂μ for the last) and the factor of R{z_{i-1}} in R{δ_{i-1}} (tanh
            only), for the tasks `rows`."""
            back = backs[i - 1][rows]
            delta = e_low[rows] if i == self.num_layers - 1 else slopes[i] * backs[i][rows]
            bent = -2 * self.inputs[i][rows] * slopes[i - 1] * back if self.activation == "tanh" else None
            return delta, bent

        kept = None
        if self.kept_slopes is not None:  # small enough: keep δ and the factors too
            kept = {i: delta_and_bent(i, slice(None), self.kept_slopes) for i in range(1, self.num_layers)}
            backs = []  # no longer needed: products take δ and the factors from `kept`

        def chunk_product(rows: slice, v: dict[str, Tensor]) -> dict[str, Tensor]:
            slopes = self._slopes(rows)
            v_log_std = (v["log_std"] * self.active_log_std[rows]).unsqueeze(1)
            tangents, input_tangents = self._forward_tangent(rows, v, slopes)
            r_delta = mean_curvature[rows] * tangents[-1] - (2 * e[rows] * v_log_std).to(self.dtype)
            r_deltas, extra = [r_delta], [None] * self.num_layers
            for i in range(self.num_layers - 1, 0, -1):
                dw = v[f"mean.layers.{i}.weight"]
                if kept is None:
                    delta, bent = delta_and_bent(i, rows, slopes)
                else:
                    delta, bent = (None if x is None else x[rows] for x in kept[i])
                r_back = torch.bmm(r_delta, self.weights[i][rows]).baddbmm_(delta, dw)
                r_delta = slopes[i - 1] * r_back
                if bent is not None:
                    r_delta = r_delta + bent * tangents[i - 1]
                r_deltas.insert(0, r_delta)
                # δ_lᵀ R{h_{l-1}}: the layer input's own directional derivative.
                extra[i] = torch.bmm(delta.transpose(1, 2), input_tangents[i - 1])
            out = self._layer_gradients(rows, r_deltas, extra)
            tangent_term = (-2 * e[rows] * tangents[-1].to(e.dtype)).sum(1)
            out["log_std"] = (tangent_term + log_std_curvature[rows] * v_log_std.squeeze(1)) * self.active_log_std[rows]
            return out

        return lambda vectors: self._by_chunks(vectors, chunk_product)


def supports_fast_curvature(policy: nn.Module) -> bool:
    """Whether `GaussianMLPCurvature` applies (metarl's Gaussian MLP policy, tanh or ReLU)."""
    return isinstance(policy, GaussianMLPPolicy) and policy.mean.activation in ("tanh", "relu")


def has_fast_bfloat16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (AVX-512 BF16 or AMX on CPUs,
    bfloat16 tensor cores on GPUs). Elsewhere bfloat16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False
