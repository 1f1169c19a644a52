"""Run logging: TensorBoard scalars, one JSON line per iteration, and a progress bar.

The only module that writes logs. Scalar tags (also the keys of ``metrics.jsonl``):
``returns/pre_adaptation``, ``returns/post_adaptation``, ``returns/adaptation_gain``,
``returns/after_step_<k>`` (multi-step), ``loss/inner``, ``loss/outer``, ``loss/outer_after``,
``policy/kl``, ``policy/std``, ``policy/entropy``, ``optim/grad_norm``, ``optim/step_norm``,
``optim/line_search_steps``, ``optim/step_accepted``, ``time/env_steps``, ``time/env_steps_per_s``,
``time/sample_s`` (stepping the environments, policy forward included), ``time/advantages_s``
(baseline fits and GAE), ``time/adapt_s``, ``time/outer_s`` (for TRPO split into
``time/meta_gradient_s``, ``time/conjugate_gradient_s`` and ``time/line_search_s``),
``time/iteration_s`` and ``time/previous_log_s`` (logging and checkpointing, one iteration late).
Families whose steps report ``info["success"]`` add ``success/pre_adaptation``,
``success/post_adaptation`` (and ``success/after_step_<k>``): the share of successful episodes, and
likewise for every other key of ``env.info_metrics``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _open_truncated(path: Path, keep_until: int):
    """Open a JSON-lines log for appending, keeping only the lines of iterations <= `keep_until`."""
    if path.exists():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and _iteration_of(line) <= keep_until]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


def _iteration_of(line: str) -> float:
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):  # a line cut off by a crash
        return math.inf


class RunLogger:
    """Writes the metrics of every meta-iteration to TensorBoard, ``metrics.jsonl`` and a progress bar."""

    def __init__(
        self, run_dir: Path, config: dict[str, Any], total: int, start: int = 0, progress: bool = True
    ) -> None:
        self.run_dir = run_dir
        self.config = _flatten(config)
        # Resuming after iteration `start`: whatever was logged after it (a run killed between two
        # checkpoints) is dropped, so every iteration appears exactly once.
        self.writer = SummaryWriter(str(run_dir), purge_step=start + 1 if start else None)
        self.jsonl = _open_truncated(run_dir / "metrics.jsonl", start)
        self.tasks_jsonl = _open_truncated(run_dir / "tasks.jsonl", start)
        if start == 0:
            table = "\n".join(f"|{k}|{v}|" for k, v in self.config.items())
            self.writer.add_text("config", f"|parameter|value|\n|-|-|\n{table}")
        self.bar = tqdm(total=total, initial=start, desc="meta-training", unit="it", disable=not progress)
        self.last: dict[str, float] = {}

    def log(self, iteration: int, metrics: dict[str, float], tasks: list[Any] | None = None) -> None:
        """Record one meta-iteration's metrics (and, in ``tasks.jsonl``, its training tasks)."""
        if tasks is not None:
            self.tasks_jsonl.write(json.dumps({"iteration": iteration, "tasks": tasks}) + "\n")
            self.tasks_jsonl.flush()
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, iteration)
        self.jsonl.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        self.jsonl.flush()
        self.last = metrics
        success = (
            {"success": f"{metrics['success/pre_adaptation']:.0%}→{metrics['success/post_adaptation']:.0%}"}
            if "success/post_adaptation" in metrics
            else {}
        )
        self.bar.set_postfix(
            pre=f"{metrics['returns/pre_adaptation']:.1f}",
            post=f"{metrics['returns/post_adaptation']:.1f}",
            **success,
            s_per_it=f"{metrics['time/iteration_s']:.2f}",
            steps_per_s=f"{metrics['time/env_steps_per_s']:,.0f}",
        )
        self.bar.update(1)

    def skipped(self, iteration: int, reason: str) -> None:
        """An iteration whose meta-batch was dropped (``train.on_nonfinite: skip``)."""
        self.writer.add_scalar("optim/skipped_batch", 1.0, iteration)
        self.jsonl.write(json.dumps({"iteration": iteration, "optim/skipped_batch": 1.0, "message": reason}) + "\n")
        self.jsonl.flush()
        self.message(reason)
        self.bar.update(1)

    def message(self, text: str) -> None:
        """A line for the user on stderr, printed without breaking the progress bar."""
        tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.last:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.config.items()}
            finals = {f"final/{k.split('/')[-1]}": v for k, v in self.last.items() if k.startswith("returns/")}
            finals = {k: v for k, v in finals.items() if math.isfinite(v)}
            self.writer.add_hparams(hparams, finals, run_name="hparams")
        self.bar.close()
        self.writer.close()
        self.jsonl.close()
        self.tasks_jsonl.close()
