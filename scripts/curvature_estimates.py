"""How good are the cheap trust-region estimates? Compares TRPO steps along a real training run.

    python scripts/curvature_estimates.py experiments/navigation_2d.yaml [--iterations 30] [--at 1,10,20,30]

Trains with the config (exact trust region) and, at the iterations in ``--at``, solves the
conjugate-gradient system ``F x = g`` on that iteration's meta-batch four ways: exact, with
bfloat16 products (``outer.curvature_precision``), with every fifth step (``outer.curvature_stride``),
and with both. For each it reports the solve's seconds and two numbers about the step it gives:

- efficiency: the first-order improvement ``gᵀx`` of the step scaled to the trust region's
  boundary under the *exact* curvature (``x·sqrt(2δ / xᵀFx)``), relative to the exact solve's
  (1.0 = as good as exact);
- cosine: the angle between its direction and the exact solve's.

The meta-gradient g is the same in all four (it is always exact). Writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from torch import nn

from metarl.config import Config, load_config
from metarl.inner import InnerLoop
from metarl.maml import MetaBatch
from metarl.outer.trpo import adaptation_curvature, conjugate_gradient
from metarl.training import build_training, training_iteration

ESTIMATES = {
    "exact": {},
    "bfloat16": {"precision": "bfloat16"},
    "stride5": {"stride": 5},
    "bfloat16_stride5": {"precision": "bfloat16", "stride": 5},
}


def compare(policy: nn.Module, inner: InnerLoop, batch: MetaBatch, config: Config) -> dict[str, dict[str, float]]:
    """Solve the trust-region system every way on one meta-batch; efficiency and cosine against exact."""
    exact_product = adaptation_curvature(policy, batch, inner).kl_hessian_product(config.outer.cg_damping)
    rows, reference = {}, None
    for name, kwargs in ESTIMATES.items():
        curvature = adaptation_curvature(policy, batch, inner, **kwargs)
        _, gradient = curvature.meta_gradient(policy, batch.outer)
        product = curvature.kl_hessian_product(config.outer.cg_damping)
        start = time.perf_counter()
        direction, _ = conjugate_gradient(product, gradient, config.outer.cg_iters)
        seconds = time.perf_counter() - start
        # gᵀx at the boundary xᵀFx = 2δ under the exact F, up to the common factor sqrt(2δ)
        gain = (gradient @ direction).item() / (direction @ exact_product(direction)).item() ** 0.5
        reference = reference or (gain, direction)
        cosine = (direction @ reference[1] / direction.norm() / reference[1].norm()).item()
        rows[name] = {"cg_s": seconds, "efficiency": gain / reference[0], "cosine": cosine}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config to train with")
    parser.add_argument("--iterations", type=int, default=30, help="meta-iterations to train")
    parser.add_argument("--at", default="1,10,20,30", help="comma-separated iterations to compare at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    config = load_config(args.config, [*args.set, f"train.seed={args.seed}"])
    checks = {int(i) for i in args.at.split(",")}
    state = build_training(config)  # as `metarl train` sets a run up
    results = {}

    def inspect(batch: MetaBatch) -> None:
        """Compare the solves on this iteration's meta-batch, before the outer step."""
        iteration = state.iteration
        if iteration in checks:
            results[iteration] = compare(state.policy, state.inner, batch, config)
            print(
                f"iteration {iteration}: "
                + " | ".join(
                    f"{name} CG {r['cg_s']:.2f} s, efficiency {r['efficiency']:.3f}, cosine {r['cosine']:.3f}"
                    for name, r in results[iteration].items()
                ),
                flush=True,
            )

    for iteration in range(1, args.iterations + 1):
        state.iteration = iteration
        training_iteration(state, inspect)
    state.sampler.close()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"config": args.config, "overrides": args.set, "seed": args.seed, "iterations": results}
        args.out.write_text(json.dumps(summary, indent=1))
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
