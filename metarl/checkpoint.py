"""Checkpoints: written atomically, loaded safely (``weights_only``), versioned.

A run directory's ``checkpoints/`` holds ``iter_<N>.pt`` every ``train.checkpoint_every``
iterations (the last ``train.keep_checkpoints`` of them), ``best.pt`` (the parameters with the
highest post-adaptation return measured so far), ``last.pt`` when a run stops early, and
``final.pt`` when it completes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from metarl.config import RESUMABLE_OVERRIDES
from metarl.errors import CheckpointError
from metarl.rundir import describe_os_error

FORMAT_VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` via a temporary file, fsync and rename: never half-written.

    If writing fails (a full disk, a crash mid-save) the temporary file is removed and whatever
    was at `path` before is untouched; a `CheckpointError` says what happened.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)  # the rename itself survives a power cut
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a full disk as a RuntimeError
        if isinstance(error, OSError):
            reason = describe_os_error(error)
        else:
            reason = "the disk is full" if _disk_full(path.parent) else str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"could not write checkpoint '{path}': {reason}; "
            + ("the previous version of that file is intact" if path.exists() else "no file was written")
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _disk_full(directory: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(directory).free < margin
    except OSError:
        return False


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointKeeper:
    """Writes a run's checkpoints: every `every` iterations (keeping the newest `keep`), the best.

    `newest` is the checkpoint a resume would continue from, as ``(path, iteration)`` (None before
    the first): every checkpoint holds the whole training state, ``best.pt`` included.
    """

    def __init__(self, directory: Path, every: int, keep: int, newest: tuple[Path, int] | None = None) -> None:
        self.directory, self.every, self.keep = directory, every, keep
        self.newest = newest

    def _save(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.directory / name
        save_checkpoint(path, payload)
        if self.newest is None or payload["iteration"] >= self.newest[1]:
            self.newest = (path, payload["iteration"])
        return path

    def iteration_done(self, payload: dict[str, Any]) -> None:
        """Save ``iter_<N>.pt`` if the iteration is due, then delete all but the newest `keep`."""
        if payload["iteration"] % self.every:
            return
        self._save(f"iter_{payload['iteration']:06d}.pt", payload)
        for old in _numbered_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)

    def best(self, payload: dict[str, Any]) -> None:
        self._save("best.pt", payload)

    def final(self, payload: dict[str, Any]) -> Path:
        return self._save("final.pt", payload)

    def last(self, payload: dict[str, Any]) -> Path:
        return self._save("last.pt", payload)


def latest_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint of a run directory (`find_checkpoint`), where ``metarl train --resume``
    continues; None when the run has none yet (it stopped during its first iteration)."""
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"'{run_dir}' is not a directory; pass the run directory that `metarl train` printed")
    if not _run_checkpoints(Path(run_dir)):
        return None
    return load_checkpoint(find_checkpoint(run_dir))


# On equal iterations the first of these names wins.
_NAMED = ("final.pt", "last.pt", "best.pt")


def _run_checkpoints(run_dir: Path) -> list[Path]:
    directory = run_dir / "checkpoints"
    return [directory / n for n in _NAMED if (directory / n).is_file()] + _numbered_checkpoints(directory)


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a file, else the newest checkpoint of a run directory: of ``final.pt``,
    ``last.pt`` (written when a run stops early), ``best.pt`` and the ``iter_<N>.pt`` files, the one
    with the highest iteration. Every one of them must belong to the run: a checkpoint whose config
    differs from the run's ``config.yaml`` (other than in `RESUMABLE_OVERRIDES`) is an error."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist; pass a run directory or a checkpoint file")
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is not a file or a directory; pass a run directory or a checkpoint file")
    candidates = _run_checkpoints(path)
    if not candidates:
        raise CheckpointError(
            f"'{path}' has no checkpoints/ with a .pt file; is it a metarl run directory? (a run writes its "
            "first checkpoint after its first iteration)"
        )
    run_config = _run_config(path)
    iterations = {}
    for file in candidates:
        payload = load_checkpoint(file)
        if run_config is not None:
            _check_belongs(file, payload.get("config"), run_config, path)
        iterations[file] = payload["iteration"]
    return max(candidates, key=lambda file: iterations[file])  # max keeps the first of equals


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def _check_belongs(file: Path, config: Any, run_config: dict[str, Any], run_dir: Path) -> None:
    """Refuse a checkpoint of another run dropped into `run_dir` (resuming it would continue that run)."""
    ours, theirs = _flat(run_config), _flat(config if isinstance(config, dict) else {})
    # Where a run lives (it may have been moved) and how it runs do not make it another run.
    keys = (ours.keys() | theirs.keys()) - {*RESUMABLE_OVERRIDES, "train.logdir", "train.run_name"}
    differing = sorted(key for key in keys if ours.get(key) != theirs.get(key))
    if differing:
        key = differing[0]
        raise CheckpointError(
            f"'{file}' belongs to another run: its config differs from {run_dir / 'config.yaml'} "
            f"({key}: {theirs.get(key)!r} there, {ours.get(key)!r} here"
            + (f", and {len(differing) - 1} more" if len(differing) > 1 else "")
            + "); move it out of the run directory, or evaluate it by its file path"
        )


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "kwargs" and key != "task_space":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _numbered_checkpoints(directory: Path) -> list[Path]:
    """The ``iter_<N>.pt`` files of a checkpoint directory, oldest first."""
    return sorted(directory.glob("iter_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it (``torch.load(weights_only=True)``)."""
    file = find_checkpoint(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"cannot load checkpoint '{file}': it is corrupt, truncated, or contains objects other than tensors "
            f"and plain data, which metarl refuses to unpickle ({type(error).__name__}). Use a checkpoint written "
            "by metarl train."
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"'{file}' is not a metarl checkpoint (no format_version)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"'{file}' has checkpoint format {payload['format_version']}, this metarl reads format {FORMAT_VERSION}"
        )
    payload["path"] = str(file)
    return payload
