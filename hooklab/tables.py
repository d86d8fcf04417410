"""The long results table (docs/tables.md), its Parquet file and ``manifest.json``.

One row per (prompt_id, condition, model, position, layer), metric columns named as in
docs/definitions.md, plus ``token_id``, ``target_id``, ``n_layers`` and ``depth``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hooklab.atomic import atomic_write
from hooklab.conditions import ReadSequence
from hooklab.stream import LensReadout
from hooklab.versions import library_versions

__all__ = ["readout_frame", "environment", "write_table"]


def readout_frame(
    sequences: Sequence[ReadSequence],
    readout: LensReadout,
    *,
    lens: str,
    categories: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Long rows for sequences read in one batch (``readout`` row ``b`` is ``sequences[b]``)."""
    batch_index, positions = readout.read.nonzero(as_tuple=True)
    n_layers = readout.n_layers
    n_rows = int(batch_index.numel())
    b = batch_index.numpy()
    p = positions.numpy()
    tokens = np.full(readout.read.shape, -1, dtype=np.int64)
    targets = np.full(readout.read.shape, -1, dtype=np.int64)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq.tokens)] = seq.tokens
        targets[i, : len(seq.tokens) - 1] = seq.tokens[1:]
    layer = np.tile(np.arange(n_layers, dtype=np.int16), n_rows)
    repeat = lambda values: np.repeat(np.asarray(values), n_layers)  # noqa: E731
    read_from = np.array([seq.read_from for seq in sequences])
    frame = pd.DataFrame(
        {
            "prompt_id": repeat([sequences[i].prompt_id for i in b]),
            "category": repeat([(categories or {}).get(sequences[i].prompt_id, "") for i in b]),
            "condition": repeat([sequences[i].condition for i in b]),
            "model": repeat([sequences[i].model for i in b]),
            "lens": lens,
            "position": repeat(p.astype(np.int32)),
            "step": repeat((p - read_from[b]).astype(np.int32)),
            "layer": layer,
            "n_layers": np.int16(n_layers),
            "depth": (layer / max(n_layers - 1, 1)).astype(np.float32),
            "token_id": repeat(tokens[b, p]),
            "target_id": repeat(targets[b, p]),
            "final_top1_id": repeat(readout.final_top1[batch_index, positions].numpy()),
        }
    )
    for name, values in readout.metrics.items():
        frame[name] = values[batch_index, positions].reshape(-1).numpy()
    return frame


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Where and with what a result was made: time, package versions, git commit, host."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": library_versions(),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "python": platform.python_version(),
    }


#: The file beside a merged table that says what made it (written last: a run is finished
#: when its folder holds one).
MANIFEST = "manifest.json"


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """A finished run's ``manifest.json`` as a dict, or ``None`` where there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def write_table(
    frame: pd.DataFrame, out_dir: str | Path, name: str, manifest: dict[str, Any]
) -> Path:
    """Write ``{name}.parquet`` and ``manifest.json`` to ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    table_path = out_dir / f"{name}.parquet"
    atomic_write(table_path, lambda tmp: frame.to_parquet(tmp, index=False))
    manifest = {**manifest, "table": table_path.name, "n_rows": len(frame)}
    atomic_write(
        out_dir / MANIFEST,
        lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2, default=str)),
    )
    return table_path
