"""What MAML-TRPO's curvature products keep between products, and the time of one inner-loss Hessian
product and one Fisher product (tanh policy, float32, the training's threads), for the metarl on the
path, at ML1's sizes (20 tasks x 5,000 steps, a (128, 128) policy) or 2D navigation's (20 tasks x
2,000 steps, (100, 100)). Run it alternately against two checkouts in fresh processes:

    PYTHONPATH=/tmp/old python experiments/results/metaworld/cached_passes.py 5 ml1
    PYTHONPATH=. python experiments/results/metaworld/cached_passes.py 5 ml1
    PYTHONPATH=. python experiments/results/metaworld/cached_passes.py 5 navigation recompute

``recompute`` sets `metarl.curvature.KEEP_DERIVED_BYTES` to 0 (the slopes recomputed at any size).
"cached" is every tensor the two products hold (the curvature objects' and their closures'), each
counted once. Freed memory is kept for reuse, as in training (`train.reuse_freed_memory`).
"""

import sys
import time

import numpy as np
import torch
from chunked_products import product_inputs  # this script's folder

import metarl.curvature
from metarl.curvature import GaussianMLPCurvature
from metarl.memory import reuse_freed_memory
from metarl.threads import available_cpus


def held_tensors(root: object, seen: set[int] | None = None) -> dict[int, int]:
    """Bytes of every distinct tensor storage reachable from `root` through attributes, lists and
    closures (keyed by storage address)."""
    seen = set() if seen is None else seen
    found: dict[int, int] = {}
    if id(root) in seen:
        return found
    seen.add(id(root))
    if isinstance(root, torch.Tensor):
        storage = root.untyped_storage()
        found[storage.data_ptr()] = storage.nbytes()
    elif isinstance(root, list | tuple):
        for item in root:
            found |= held_tensors(item, seen)
    elif isinstance(root, dict):
        for item in root.values():
            found |= held_tensors(item, seen)
    elif callable(root) and getattr(root, "__closure__", None):
        for cell in root.__closure__:
            found |= held_tensors(cell.cell_contents, seen)
    elif isinstance(root, GaussianMLPCurvature):
        found |= held_tensors(vars(root), seen)
    return found


if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    torch.set_num_threads(available_cpus())
    sizes = sys.argv[2] if len(sys.argv) > 2 else "ml1"
    if "recompute" in sys.argv[3:]:
        metarl.curvature.KEEP_DERIVED_BYTES = 0
    reuse_freed_memory()
    if sizes == "navigation":
        policy, params, episodes, vectors = product_inputs(20, 2000, obs_dim=2, act_dim=2, hidden=(100, 100))
    else:
        policy, params, episodes, vectors = product_inputs()
    steps = episodes.mask.shape[-1]
    start = time.perf_counter()
    hessian = GaussianMLPCurvature(policy, params, episodes.observations).reinforce_hessian_product(episodes)
    fisher = GaussianMLPCurvature(policy, params, episodes.observations).fisher_product(episodes.mask / steps)
    built = time.perf_counter() - start
    cached = sum(held_tensors([hessian, fisher]).values()) / 2**20
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fisher(hessian(vectors))
        times.append(time.perf_counter() - start)
    print(
        f"{sizes}: cached {cached:,.0f} MiB, set-up {built:.2f} s, one Hessian + one Fisher product: median "
        f"{np.median(times) * 1e3:,.0f} ms ({', '.join(f'{t * 1e3:,.0f}' for t in times)})"
    )
