"""Cross-pair tables of a study: each finished run's summaries, stacked with a ``pair`` column.

Written to ``OUT/tables/``; the study's figures and claims are computed from these and from the
runs' merged tables (``graft.parquet`` for per-prompt paired differences), never from models.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hooklab.atomic import atomic_write_csv
from hooklab.study.spec import StudySpec
from hooklab.tables import MANIFEST, read_manifest

__all__ = ["STUDY_TABLES", "collect_tables", "write_tables", "late_prompt_effects"]

TABLES_DIR = "tables"

#: study table -> (experiment, the run's summary file)
STUDY_TABLES = {
    "summary_layers": ("readout", "summary_layers.csv"),
    "convergence_gap": ("readout", "convergence_gap.csv"),
    "commitment": ("readout", "commitment.csv"),
    "effects": ("graft", "effects.csv"),
}


def _finished(study: StudySpec, experiment: str) -> list[tuple[str, Path]]:
    if experiment not in study.experiments:
        return []
    runs = [(p.label, study.run_dir(p, experiment)) for p in study.pairs]
    return [(label, folder) for label, folder in runs if (folder / MANIFEST).is_file()]


def _lens(folder: Path) -> str:
    manifest = read_manifest(folder) or {}
    return str(manifest.get("config", {}).get("lens", "logit"))


def collect_tables(study: StudySpec) -> dict[str, pd.DataFrame]:
    """Each study table: the finished runs' summary file, stacked, ``pair`` and ``lens`` first.

    A table is absent when no run of its experiment has finished.
    """
    tables = {}
    for name, (experiment, file) in STUDY_TABLES.items():
        frames = []
        for label, folder in _finished(study, experiment):
            frame = pd.read_csv(folder / file)
            frame.insert(0, "lens", _lens(folder))
            frame.insert(0, "pair", label)
            frames.append(frame)
        if frames:
            tables[name] = pd.concat(frames, ignore_index=True)
    effects = late_prompt_effects(study)
    if not effects.empty:
        tables["graft_prompt_effects"] = effects
    return tables


def late_prompt_effects(study: StudySpec, metric: str = "kl_to_final") -> pd.DataFrame:
    """Per pair, direction, mode, part, window and prompt: the late-region mean of
    ``delta_<metric>`` and the prompt's token count, from each graft run's merged table (the
    per-prompt values whose mean is ``effects.csv``'s ``mean``)."""
    from hooklab.metrics import LATE_START_DEPTH, late_layers

    frames = []
    for label, folder in _finished(study, "graft"):
        table = pd.read_parquet(folder / "graft.parquet")
        manifest = read_manifest(folder) or {"config": {}}
        start = float(manifest["config"].get("late_start_depth", LATE_START_DEPTH))
        late = late_layers(int(table["n_layers"].iloc[0]), start)
        rows = table[table["layer"].isin(late) & (table["mode"] != "none")]
        keys = ["direction", "mode", "part", "window", "prompt_id"]
        per_prompt = (
            rows.groupby(keys, observed=True)
            .agg(value=(f"delta_{metric}", "mean"), n_tokens=("n_tokens", "max"))
            .reset_index()
        )
        per_prompt.insert(0, "pair", label)
        frames.append(per_prompt)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    for column in ("direction", "mode", "part", "window", "prompt_id"):
        out[column] = out[column].astype(str)
    return out


def write_tables(study: StudySpec) -> dict[str, Path]:
    """Write every study table as ``OUT/tables/NAME.csv``; returns their paths."""
    folder = study.out_dir / TABLES_DIR
    return {
        name: atomic_write_csv(folder / f"{name}.csv", frame)
        for name, frame in collect_tables(study).items()
    }
