"""Files that are never half-written: write to a temporary file beside the target, fsync, rename.

A process killed at any moment (SIGKILL included) leaves either the old file, the new file, or
a stray ``.NAME.*.tmp`` beside it; never a truncated target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_csv"]


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text))


def atomic_write_csv(path: str | Path, frame: Any) -> Path:
    """Write a pandas DataFrame as CSV to ``path`` atomically (no index column)."""
    return atomic_write(path, lambda temporary: frame.to_csv(temporary, index=False))
