"""One meta-batch of the 2-worker sampler (`scripts/benchmark.py`'s `sampler_rate`, second call timed)
for a config, as JSON: run it alternately from two checkouts to compare commits on this host.

    git worktree add /tmp/old a866341
    for r in 1 2 3 4; do
      (cd /tmp/old && PYTHONPATH=/tmp/old python $PWD/experiments/results/metaworld/free_running/ab_sampler.py \\
          experiments/metaworld_ml1_reach.yaml)
      python experiments/results/metaworld/free_running/ab_sampler.py experiments/metaworld_ml1_reach.yaml
    done
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "scripts"))  # the benchmark of the checkout it runs from
import benchmark  # noqa: E402

from metarl.config import load_config  # noqa: E402

if __name__ == "__main__":
    result = benchmark.sampler_rate(load_config(sys.argv[1]).to_dict(), 2)
    print(json.dumps({"env_steps_per_s": result["env_steps_per_s"], "peak_mib": result["total_peak_rss_mib"]}))
