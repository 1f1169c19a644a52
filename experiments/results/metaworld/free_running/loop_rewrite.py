"""The rollout loop before and after its rewrite of 2026-12-03, alternated in one process: CPU
seconds of a 500-step round of 20 copies of an ML1 task (2 tasks x 10 episodes, a (128, 128)
policy), against the same actions replayed with nothing in between.

- before: `Rollout.run` at commit 583b590 (torch tensors made every step, torch's forward);
- after, torch forward: the new loop (every step's values written into arrays of the horizon),
  with the policy still evaluated by torch (the path of policies without a numpy actor);
- after: the new loop with the policy's numpy actor (the default for metarl's Gaussian policy).

The actions of "after" differ from torch's in the last bits (numpy's float32 arithmetic); the
script prints the largest difference.

    python experiments/results/metaworld/free_running/loop_rewrite.py reach-v3 6
"""

import copy
import sys
import time

import numpy as np
import torch
from round_cost import one_round  # this folder is on sys.path when the script runs

from metarl.episodes import FIELDS, Episodes
from metarl.functional import distribution
from metarl.info_metrics import InfoMetrics
from metarl.sampler import _check_finite, env_actions
from metarl.tasks import environment_errors, set_tasks


def loop_before(rollout, envs, obs, policy, params, act, alive, tasks) -> Episodes:  # noqa: ANN001
    """`Rollout.run` as it was at commit 583b590 (without features, first_copy and beat)."""
    width = next(iter(params.values())).shape[0]
    num_episodes = envs.num_envs // width
    steps = {k: [] for k in FIELDS}
    infos = InfoMetrics(rollout.info_metrics, envs.num_envs)
    for t in range(rollout.horizon):
        _check_finite(obs, "observations", tasks, num_episodes, 0)
        obs_t = torch.tensor(obs, dtype=torch.float32, device=rollout.device)
        obs_t = obs_t.reshape(width, num_episodes, *obs_t.shape[1:])
        pi = distribution(policy, params, obs_t)
        action = act(pi, t)
        steps["observations"].append(obs_t)
        steps["actions"].append(action)
        steps["log_probs"].append(pi.log_prob(action))
        steps["mask"].append(torch.as_tensor(alive, dtype=torch.float32).reshape(width, num_episodes))
        flat = action.reshape(envs.num_envs, *action.shape[2:]).cpu().numpy()
        with environment_errors("stepping"):
            obs, reward, terminated, truncated, info = envs.step(
                env_actions(flat, rollout.action_space, rollout.action_scaling, rollout.action_bound)
            )
        _check_finite(reward, "rewards", tasks, num_episodes, 0)
        infos.add(info, alive)
        reward = np.where(alive, reward, 0.0)
        steps["rewards"].append(torch.as_tensor(reward, dtype=torch.float32).reshape(width, num_episodes))
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    tensors = {k: torch.stack(v, dim=2) for k, v in steps.items()}
    metrics = {
        key: torch.as_tensor(values, dtype=torch.float32).reshape(width, num_episodes)
        for key, values in sorted(infos.result().items())
    }
    return Episodes(**tensors, metrics=metrics or None)


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "reach-v3"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    envs, policy, params, rollout, copies, noise = one_round(name)

    def act(pi, t):  # noqa: ANN001, ANN202
        return noise[t] * pi.base_dist.scale + pi.base_dist.loc

    torch_policy = copy.deepcopy(policy)
    torch_policy.numpy_actor = None  # the new loop's torch path
    steps = noise.numpy()  # the Gaussian noise of the horizon
    loops = {
        "before": lambda obs: loop_before(rollout, envs, obs, policy, params, act, np.ones(20, bool), copies),
        "torch": lambda obs: rollout.run(envs, obs, torch_policy, params, steps, np.ones(20, bool), copies),
        "after": lambda obs: rollout.run(envs, obs, policy, params, steps, np.ones(20, bool), copies),
    }
    spent: dict[str, list[float]] = {key: [] for key in (*loops, "replayed")}
    episodes: dict[str, Episodes] = {}
    for repeat in range(repeats):
        for key in list(loops) if repeat % 2 == 0 else list(loops)[::-1]:
            set_tasks(envs, copies)
            obs, _ = envs.reset(seed=list(range(20)))
            start = time.process_time()
            with torch.no_grad():
                episodes[key] = loops[key](obs)
            spent[key].append(time.process_time() - start)
        replay = np.clip(episodes["after"].actions.permute(2, 0, 1, 3).reshape(500, 20, -1).numpy(), -1, 1)
        set_tasks(envs, copies)
        envs.reset(seed=list(range(20)))
        start = time.process_time()
        for action in replay:
            envs.step(action)
        spent["replayed"].append(time.process_time() - start)
    same = all(torch.equal(getattr(episodes["before"], f), getattr(episodes["torch"], f)) for f in FIELDS)
    same &= all(torch.equal(episodes["before"].metrics[k], episodes["torch"].metrics[k]) for k in ("success",))
    first = episodes["before"].actions[:, :, 0]  # the first step: the same observations
    numpy_error = (first - episodes["after"].actions[:, :, 0]).abs().max().item()
    for key, values in spent.items():
        print(f"{name} {key:<9} " + " ".join(f"{v:.3f}" for v in values) + f"   median {np.median(values):.3f} CPU-s")
    replayed = np.median(spent["replayed"])
    for key in loops:
        extra = np.median(spent[key]) - replayed
        print(
            f"{name} {key:<9} loop over the replayed steps: {1e6 * extra / 500:.0f} µs per step "
            f"({100 * extra / replayed:.1f}% of them)"
        )
    print(f"{name} before and after with torch's forward: the same episodes bit for bit: {same}")
    print(f"{name} numpy actor against torch, largest difference of a first action: {numpy_error:.1e}")
