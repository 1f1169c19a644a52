"""One CG solve's curvature work (both products set up, then ten iterations of J, H, Jᵀ... as
``f(h(h(v)))``) with this checkout's `metarl/curvature.py` and another checkout's, alternated in one
process (the other modules are this checkout's), at 2D navigation's or ML1's sizes.

    git worktree add /tmp/old 55cdd72
    python experiments/results/metaworld/curvature_ab.py navigation /tmp/old 8
"""

import importlib.util
import sys
import time

import numpy as np
import torch
from chunked_products import product_inputs  # this script's folder

import metarl.curvature as new
from metarl.memory import reuse_freed_memory

if __name__ == "__main__":
    sizes, other, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = importlib.util.spec_from_file_location("old_curvature", f"{other}/metarl/curvature.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    reuse_freed_memory()
    torch.set_num_threads(2)
    if sizes == "navigation":
        policy, params, ep, vec = product_inputs(20, 2000, obs_dim=2, act_dim=2, hidden=(100, 100))
    else:
        policy, params, ep, vec = product_inputs()
    times = {"old": [], "new": []}
    for _ in range(repeats):
        for name, mod in (("old", old), ("new", new)):
            start = time.perf_counter()
            h = mod.GaussianMLPCurvature(policy, params, ep.observations).reinforce_hessian_product(ep)
            f = mod.GaussianMLPCurvature(policy, params, ep.observations).fisher_product(ep.mask / ep.mask.shape[-1])
            for _iteration in range(10):  # one CG solve: J, H, J^T per iteration
                f(h(h(vec)))
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(sizes, name, f"median {np.median(t):.2f} s", " ".join(f"{x:.2f}" for x in t))
