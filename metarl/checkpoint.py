"""Checkpoints: written atomically, loaded safely (``weights_only``), versioned.

A run directory's ``checkpoints/`` holds ``iter_<N>.pt`` every ``train.checkpoint_every``
iterations (the last ``train.keep_checkpoints`` of them), ``best.pt`` (the parameters with the
highest post-adaptation return measured so far), ``last.pt`` when a run stops early, and
``final.pt`` when it completes.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe or incompatible."""


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
    except OSError as error:
        reason = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror or str(error)
        raise CheckpointError(
            f"could not write checkpoint '{path}': {reason}; "
            + ("the previous version of that file is intact" if path.exists() else "no file was written")
            + ". Free space or fix the directory, then resume the run with: metarl train --resume "
            f"{path.parent.parent}"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


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
    """Writes a run's checkpoints: every `every` iterations (keeping the newest `keep`), the best."""

    def __init__(self, directory: Path, every: int, keep: int) -> None:
        self.directory, self.every, self.keep = directory, every, keep

    def iteration_done(self, payload: dict[str, Any]) -> None:
        """Save ``iter_<N>.pt`` if the iteration is due, then delete all but the newest `keep`."""
        if payload["iteration"] % self.every:
            return
        save_checkpoint(self.directory / f"iter_{payload['iteration']:06d}.pt", payload)
        for old in _numbered_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)

    def best(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.directory / "best.pt", payload)

    def final(self, payload: dict[str, Any]) -> Path:
        save_checkpoint(self.directory / "final.pt", payload)
        return self.directory / "final.pt"

    def last(self, payload: dict[str, Any]) -> Path:
        save_checkpoint(self.directory / "last.pt", payload)
        return self.directory / "last.pt"


def latest_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The newest checkpoint of a run directory (`find_checkpoint`): where ``metarl train --resume``
    continues."""
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"'{run_dir}' is not a directory; pass the run directory that `metarl train` printed")
    return load_checkpoint(find_checkpoint(run_dir))


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a file, else the newest checkpoint of a run directory: of ``final.pt``,
    ``last.pt`` (written when a run stops early) and the newest ``iter_<N>.pt``, the one with the
    highest iteration (``final.pt`` on a tie)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"'{path}' does not exist; pass a run directory or a checkpoint file")
    directory = path / "checkpoints"
    candidates = [directory / n for n in ("final.pt", "last.pt") if (directory / n).is_file()]
    candidates += _numbered_checkpoints(directory)[-1:]
    if not candidates:
        raise CheckpointError(
            f"'{path}' has no checkpoints/ with a .pt file; is it a metarl run directory? (a run writes its "
            "first checkpoint after train.checkpoint_every iterations, or when it is interrupted)"
        )
    if len(candidates) == 1:
        return candidates[0]
    return max(candidates, key=lambda file: load_checkpoint(file)["iteration"])


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
