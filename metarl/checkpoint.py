"""Checkpoints: written atomically, loaded safely (``weights_only``), versioned."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe or incompatible."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` via a temporary file, fsync and rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a file, else the newest checkpoint of a run directory: ``final.pt``,
    then ``last.pt`` (written when a run stops early), then the highest ``iter_*.pt``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("final.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        candidates = sorted((path / "checkpoints").glob("iter_*.pt"))
        if candidates:
            return candidates[-1]
        raise CheckpointError(f"'{path}' has no checkpoints/ with a .pt file; is it a metarl run directory?")
    raise CheckpointError(f"'{path}' does not exist; pass a run directory or a checkpoint file")


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
