"""Run directories: one per training run, owned by one live process, never reused by accident.

A run directory lives directly under the log directory (its name cannot climb out of it). A new
run gets a directory that did not exist (or was empty): an existing run is refused unless the user
asks to resume it or to overwrite it, and default names take a numbered suffix instead of colliding.
While a process trains in it, the directory is locked (``.lock``, an OS lock released when the
process ends, however it ends), so a second training or a ``--resume`` of a live run is refused
instead of interleaving its logs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import IO

from metarl.errors import RunDirError

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_FILE = ".lock"


def resume_command(run_dir: str | Path) -> str:
    """The command that continues a run, quoted for a POSIX shell."""
    return f"metarl train --resume {shlex.quote(str(run_dir))}"


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a run directory under the log directory, or None if it can."""
    if not name or name.strip() != name:
        return "must be a non-empty name without leading or trailing spaces"
    if name in (".", "..") or "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "must be a plain directory name (no '/', '\\', '.' or '..'): runs stay inside train.logdir"
    if "\0" in name:
        return "must not contain a NUL character"
    return None


def describe_os_error(error: OSError) -> str:
    """What an OS error on a run directory means, in words."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (the directory is read-only or belongs to another user)"
    return error.strerror or str(error)


class RunDirectory:
    """A locked run directory. Create a new one with `create`, reopen a run with `reopen`; `release`
    (or leaving the ``with`` block) unlocks it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None

    @classmethod
    def create(cls, logdir: str | Path, name: str | None, default_stem: str, overwrite: bool = False) -> RunDirectory:
        """A new, locked run directory ``logdir/name`` (default ``logdir/<default_stem>``, with ``_2``,
        ``_3`` … appended when taken). An existing non-empty `name` is refused unless `overwrite`,
        which deletes its contents, and never while another process trains in it."""
        logdir = Path(logdir)
        try:
            logdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"cannot create the log directory '{logdir}': {describe_os_error(error)}; choose another with --logdir"
            ) from None
        if name is None:
            for attempt in range(1, 10_000):
                path = logdir / (default_stem if attempt == 1 else f"{default_stem}_{attempt}")
                if _make_directory(path):  # atomic: two runs started in the same second get different names
                    return cls(path)._locked()
            raise RunDirError(f"no free run directory name under '{logdir}' for '{default_stem}'; clean up old runs")
        problem = run_name_problem(name)
        if problem is not None:
            raise RunDirError(f"run name {name!r} {problem}")
        path = logdir / name
        if _make_directory(path) or not any(path.iterdir()):
            return cls(path)._locked()
        run = cls(path)._locked()  # refuses a directory another process is training in
        if not overwrite:
            run.release()
            raise RunDirError(
                f"run directory '{path}' already exists; continue it with `{resume_command(path)}`, choose another "
                "--run-name, or pass --overwrite to delete it and start again"
            )
        for entry in path.iterdir():
            if entry.name != LOCK_FILE:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return run

    @classmethod
    def reopen(cls, path: str | Path) -> RunDirectory:
        """An existing run directory, locked (refused while another process trains in it)."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"'{path}' is not a directory; pass the run directory that `metarl train` printed")
        return cls(path)._locked()

    def _locked(self) -> RunDirectory:
        lock_path = self.path / LOCK_FILE
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 (held open for the life of the run)
        except OSError as error:
            raise RunDirError(f"cannot write to run directory '{self.path}': {describe_os_error(error)}") from None
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(
                f"run directory '{self.path}' is in use by {holder}, which is training in it now; wait for it to "
                f"finish (or stop it), or start another run with a different --run-name"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        self._lock = handle
        return self

    def release(self) -> None:
        """Unlock the directory (the lock file stays; the OS lock is what counts)."""
        if self._lock is not None:
            with contextlib.suppress(OSError):
                _unlock(self._lock)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def write_text(self, name: str, text: str) -> None:
        """Write a file of the run; an OS error becomes a `RunDirError` saying what to fix."""
        try:
            (self.path / name).write_text(text)
        except OSError as error:
            raise RunDirError(
                f"cannot write '{self.path / name}': {describe_os_error(error)}; free space or fix the directory's "
                "permissions, or choose another --logdir"
            ) from None

    def remove_stale_temporary_files(self) -> None:
        """Delete half-written checkpoint files left by a process killed while saving (we hold the lock,
        so no one is writing them now)."""
        for stale in (self.path / "checkpoints").glob(".*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def default_run_name(env_id: str, seed: int, timestamp: str) -> str:
    """``<env>__seed<seed>__<timestamp>``, with the env id reduced to characters safe in a file name."""
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", env_id.split("/")[-1].split(":")[-1])
    return f"{env}__seed{seed}__{timestamp}"


def _make_directory(path: Path) -> bool:
    """Create `path`; False if it exists. Other OS errors become a `RunDirError`."""
    try:
        path.mkdir()
        return True
    except FileExistsError:
        if not path.is_dir():
            raise RunDirError(f"'{path}' exists and is not a directory; choose another --run-name") from None
        return False
    except OSError as error:
        raise RunDirError(f"cannot create run directory '{path}': {describe_os_error(error)}") from None


def _try_lock(handle: IO[str]) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _unlock(handle: IO[str]) -> None:
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    else:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
