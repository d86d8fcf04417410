"""Resumable storage: a run's results as small parts, each written atomically.

A part holds the rows of a fixed group of prompts (its index and prompt ids come from the
plan, so they are the same on every restart and in every shard). It is written to a temporary
file and renamed into place, then a marker with its SHA-256 is written the same way; a part
counts as done only when the marker exists and the file's hash matches. A run killed at any
moment (SIGKILL included) leaves at worst a stray temporary file or a part without a valid
marker, and a restart redoes that part. Nothing half-written is ever merged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hooklab.atomic import atomic_write, clean_stale_temporaries, file_sha256
from hooklab.errors import HooklabError

__all__ = ["PromptPart", "plan_parts", "select_shard", "parse_shard", "PartStore"]

PARTS_DIR = "parts"


@dataclass(frozen=True)
class PromptPart:
    """A fixed group of prompts whose rows are stored together."""

    index: int
    prompt_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


def plan_parts(prompt_ids: Sequence[str], part_size: int) -> list[PromptPart]:
    """Consecutive groups of ``part_size`` prompts, in prompt order."""
    return [
        PromptPart(i, tuple(prompt_ids[start : start + part_size]))
        for i, start in enumerate(range(0, len(prompt_ids), part_size))
    ]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise HooklabError(
            f"shard={text!r}: write it as i/n, e.g. 0/4 for the first of four."
        ) from None
    if not 0 <= index < count:
        raise HooklabError(f"shard={text!r}: need 0 <= i < n (shards are numbered from 0).")
    return index, count


def select_shard(parts: Sequence[PromptPart], shard: tuple[int, int]) -> list[PromptPart]:
    """The parts of shard ``i`` of ``n``: every ``n``-th part, starting at ``i``."""
    index, count = shard
    return [part for part in parts if part.index % count == index]


class PartStore:
    """The ``parts/`` folder of a run."""

    def __init__(self, out_dir: str | Path):
        self.folder = Path(out_dir) / PARTS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)

    def _paths(self, part: PromptPart) -> tuple[Path, Path]:
        return self.folder / f"{part.name}.parquet", self.folder / f"{part.name}.json"

    def marker(self, part: PromptPart) -> dict[str, Any] | None:
        """The part's marker if the part is complete and intact, else ``None``."""
        table, marker = self._paths(part)
        if not table.is_file() or not marker.is_file():
            return None
        try:
            info = json.loads(marker.read_text())
        except (json.JSONDecodeError, OSError):
            return None
        same_prompts = info.get("prompt_ids") == list(part.prompt_ids)
        if not same_prompts or info.get("sha256") != file_sha256(table):
            return None
        return info

    def is_done(self, part: PromptPart) -> bool:
        return self.marker(part) is not None

    def write(self, part: PromptPart, frame: pd.DataFrame, info: dict[str, Any]) -> None:
        """Write the part's table, then its marker, each atomically."""
        table, marker = self._paths(part)
        atomic_write(table, lambda tmp: frame.to_parquet(tmp, index=False))
        payload = {
            **info,
            **asdict(part),
            "prompt_ids": list(part.prompt_ids),
            "n_rows": len(frame),
            "sha256": file_sha256(table),
        }
        atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))

    def read(self, part: PromptPart) -> pd.DataFrame:
        if not self.is_done(part):
            raise HooklabError(f"{part.name} is missing or damaged; run the spec again to redo it.")
        return pd.read_parquet(self._paths(part)[0])

    def clean_temporaries(self, parts: Sequence[PromptPart] | None = None) -> int:
        """Remove the temporaries a killed writer left for ``parts``; returns how many.

        Pass the shard's own parts: another shard's temporaries are never looked at, and a
        temporary still being written (its writer holds a lock on it) is never removed, so a
        late-starting shard cannot pull a file from under a running one. ``None`` looks at
        every part's temporaries (still sparing those being written).
        """
        prefixes = None if parts is None else [part.name for part in parts]
        return clean_stale_temporaries(self.folder, prefixes)
