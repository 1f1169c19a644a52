"""Videos of adaptation: one episode before and one after adapting, per task (``evaluate --video``).

Recorded with Gymnasium's ``RecordVideo`` from ``rgb_array`` frames, which needs ``moviepy``
(``pip install "metarl[video]"``) and an environment that can render here (MuJoCo needs an
OpenGL backend: ``MUJOCO_GL=egl`` or ``osmesa``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import RecordVideo

from metarl.config import Config
from metarl.make import make_env


class AdaptablePolicy(Protocol):
    """What a video needs of a policy (`metarl.evaluation.MetaPolicy` is one)."""

    config: Config
    observes_task: bool

    def adapt(
        self, env: gym.Env, episodes: int, steps: int, lr: float | None, seed: int, later_lr_scale: float
    ) -> Any: ...

    def act(self, observation: Any, action_space: gym.Space | None = None, task: Any = None) -> np.ndarray: ...


class VideoUnavailable(RuntimeError):
    """Videos cannot be recorded here; the message says why and what would fix it."""


def record_adaptation_videos(
    meta_policy: AdaptablePolicy, tasks: Sequence[Any], out_dir: Path, protocol: Mapping[str, Any]
) -> dict[str, Any]:
    """Record an episode with θ and one with θ' (after ``protocol["adapt_steps"]`` steps) per task.

    Returns ``{"files": [...]}``, or ``{"skipped": reason}`` (also printed) when this machine cannot
    record: never an error, since the numbers of the evaluation are already written.
    """
    try:
        _check_can_record(meta_policy)
    except VideoUnavailable as reason:
        print(f"videos skipped: {reason}")
        return {"skipped": str(reason)}
    files = []
    for i, task in enumerate(tasks):
        adapted = meta_policy
        if not meta_policy.observes_task:
            env = _env(meta_policy, task)
            adapted = meta_policy.adapt(
                env,
                protocol["episodes_per_task"],
                steps=protocol["adapt_steps"],
                lr=meta_policy.config.evaluation.lr,
                seed=protocol["seed"],
                later_lr_scale=protocol["later_lr_scale"],
            )
            env.close()
        for label, policy in (("before", meta_policy), ("after", adapted)):
            prefix = f"task{i:02d}_{label}_adaptation"
            with warnings.catch_warnings():  # one folder for all the videos, each with its own prefix
                warnings.filterwarnings("ignore", message=".*Overwriting existing videos")
                recorder = RecordVideo(
                    _env(meta_policy, task, "rgb_array"),
                    str(out_dir),
                    episode_trigger=lambda _: True,
                    name_prefix=prefix,
                    disable_logger=True,
                )
            observation, _ = recorder.reset(seed=protocol["seed"] + i)
            done = False
            while not done:
                action = policy.act(observation, action_space=recorder.action_space, task=task)
                observation, _, terminated, truncated, _ = recorder.step(action)
                done = terminated or truncated
            recorder.close()
            files += sorted(str(p) for p in out_dir.glob(f"{prefix}*.mp4"))
    print(f"videos: {len(files)} files in {out_dir}")
    return {"files": files}


def _env(meta_policy: AdaptablePolicy, task: Any = None, render_mode: str | None = None) -> gym.Env:
    """The run's environment, set to `task` (or left at its default task)."""
    env_config = meta_policy.config.env
    kwargs = {**env_config.kwargs, **({"render_mode": render_mode} if render_mode else {})}
    env = make_env(env_config.id, kwargs, env_config.horizon, env_config.task_space, check=False)
    if task is not None:
        env.set_wrapper_attr("task", task)
    return env


def _check_can_record(meta_policy: AdaptablePolicy) -> None:
    try:
        import moviepy  # noqa: F401  (RecordVideo writes its files with moviepy)
    except ImportError:
        raise VideoUnavailable('recording needs moviepy: pip install "metarl[video]"') from None
    env_id = meta_policy.config.env.id
    try:
        env = _env(meta_policy, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
        env.close()
    except Exception as error:  # renderers fail in many ways (no display, no GL library, no render mode)
        raise VideoUnavailable(
            f"{env_id} cannot render rgb_array frames here ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "MuJoCo environments need an OpenGL backend, e.g. MUJOCO_GL=egl or MUJOCO_GL=osmesa"
        ) from None
    if frame is None:
        raise VideoUnavailable(f"{env_id} returned no frame for render_mode='rgb_array'")
