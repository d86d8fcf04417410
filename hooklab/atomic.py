"""Files that are never half-written: write to a temporary file beside the target, fsync, rename.

A process killed at any moment (SIGKILL included) leaves either the old file, the new file, or
a stray ``.NAME.*.tmp`` beside it; never a truncated target. The writer holds an exclusive
``flock`` on its temporary while it writes, so :func:`clean_stale_temporaries` can tell a
stray temporary (no lock: its writer is gone) from one still being written. The result gets
the permissions an ordinary ``open(path, "w")`` would give it (``0o666`` less the umask).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "file_sha256",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_csv",
    "clean_stale_temporaries",
    "file_mode",
]


def file_mode() -> int:
    """``0o666`` less this process's umask: the mode ``open(path, "w")`` creates files with."""
    try:
        with open("/proc/self/status") as status:  # Linux: read without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(umask)
    return 0o666 & ~umask


def _locked_temporary(path: Path) -> tuple[int, str]:
    """A new temporary beside ``path`` and an open descriptor holding its exclusive lock."""
    while True:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a cleaner may have removed it before we locked it: then take another
            if os.path.samestat(os.fstat(fd), os.stat(temporary)):
                return fd, temporary
        except FileNotFoundError:
            pass
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result onto ``path`` atomically.

    ``write`` must write into the temporary file it is given (not delete and recreate it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = _locked_temporary(path)  # locked until we are done: cleaners leave it alone
    try:
        write(temporary)
        os.chmod(temporary, file_mode())  # mkstemp made it 0600 whatever the umask
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
        os.close(fd)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text))


def atomic_write_csv(path: str | Path, frame: Any) -> Path:
    """Write a pandas DataFrame as CSV to ``path`` atomically (no index column)."""
    return atomic_write(path, lambda temporary: frame.to_csv(temporary, index=False))


def clean_stale_temporaries(folder: str | Path, own_prefixes: Sequence[str] | None) -> int:
    """Remove the stray temporaries of :func:`atomic_write` in ``folder`` (not its subfolders).

    Only temporaries of targets named in ``own_prefixes`` are looked at (``".{prefix}.*.tmp"``,
    e.g. ``"manifest.json"`` or ``"part-00003"``; ``None``: every target), and only those no
    writer holds a lock on: a concurrent writer's temporary is never touched. Returns how many
    were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for candidate in sorted(folder.glob(".*.tmp")):
        name = candidate.name
        if own_prefixes is not None and not any(name.startswith(f".{p}.") for p in own_prefixes):
            continue
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone already, or a link: not ours to follow
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a writer holds it
            os.close(fd)
            continue
        try:
            if os.path.samestat(os.fstat(fd), os.lstat(candidate)):  # still the file we locked
                candidate.unlink()
                removed += 1
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
