"""Graft effects with uncertainty: paired differences against the ungrafted host, over prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hooklab.errors import HooklabError
from hooklab.metrics import LATE_START_DEPTH, late_layers, layers_label
from hooklab.stats import bootstrap_mean_ci, sign_flip_test

__all__ = ["graft_effects", "layer_effects", "write_graft_summaries"]


def graft_effects(
    table: pd.DataFrame,
    metric: str = "kl_to_final",
    *,
    late_start_depth: float = LATE_START_DEPTH,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (direction, mode, window): the late-region mean of ``delta_<metric>`` over prompts.

    Each prompt contributes its mean over the late layers (:func:`~hooklab.metrics.late_layers`:
    depth ``layer / (L - 1) >= late_start_depth``, final layer excluded) of the grafted minus
    ungrafted host. Reported: mean, percentile and BCa bootstrap CIs, the standard error, a
    sign-flip permutation p-value, ``n_prompts``, and ``n_tokens``: the number of distinct
    response tokens read (each prompt's read positions once, not once per late layer). Every row
    records ``late_start_depth`` and the region's layers in ``late_layers`` (e.g. ``"24-30"``).
    """
    column = f"delta_{metric}"
    if column not in table.columns:
        raise HooklabError(f"metric={metric!r}: the graft table has no column {column!r}.")
    n_layers = int(table["n_layers"].iloc[0])
    late_set = late_layers(n_layers, late_start_depth)
    late = table[table["layer"].isin(late_set) & (table["mode"] != "none")]
    # A table row is one (prompt, layer); its n_tokens is the prompt's read positions, the same
    # at every layer, so a prompt counts its tokens once.
    per_prompt = (
        late.groupby(["direction", "mode", "part", "window", "prompt_id"], observed=True)
        .agg(value=(column, "mean"), n_tokens=("n_tokens", "max"), low=("n_tokens", "min"))
        .reset_index()
    )
    if (per_prompt["n_tokens"] != per_prompt["low"]).any():
        raise HooklabError(
            "the graft table's n_tokens differs between layers of one prompt; it must be the "
            "prompt's number of read positions (write the table with hooklab.graft.run_graft)."
        )
    rows = []
    keys = ["direction", "mode", "part", "window"]
    for key, group in per_prompt.groupby(keys, observed=True, sort=True):
        values = group["value"].to_numpy()
        percentile = bootstrap_mean_ci(values, level=level, seed=seed)
        bca = bootstrap_mean_ci(values, level=level, seed=seed, method="bca")
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "metric": metric,
                "region": "late",
                "late_start_depth": late_start_depth,
                "late_layers": layers_label(late_set),
                "mean": percentile.mean,
                "ci_low": percentile.low,
                "ci_high": percentile.high,
                "bca_low": bca.low,
                "bca_high": bca.high,
                "sem": percentile.sem,
                "p_sign_flip": sign_flip_test(values, seed=seed),
                "n_prompts": percentile.n,
                "n_tokens": int(group["n_tokens"].sum()),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    # windows in depth order (early, mid, late), not by name
    starts = table.groupby("window", observed=True)["window_start"].first()
    out.insert(4, "window_start", out["window"].map(starts).astype(int))
    return out.sort_values(
        ["direction", "mode", "part", "window_start"], kind="stable", ignore_index=True
    )


def layer_effects(table: pd.DataFrame, metric: str = "kl_to_final") -> pd.DataFrame:
    """Per (direction, mode, window, layer): mean ``delta_<metric>`` with its standard error."""
    column = f"delta_{metric}"
    grafted = table[table["mode"] != "none"]
    grouped = grafted.groupby(["direction", "mode", "part", "window", "layer"], observed=True)[
        column
    ]
    out = grouped.agg(
        mean="mean",
        sem=lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"),
        n_prompts="size",
    ).reset_index()
    out.insert(5, "metric", metric)
    return out


def write_graft_summaries(
    table: pd.DataFrame,
    out: Path,
    *,
    seed: int = 0,
    late_start_depth: float = LATE_START_DEPTH,
) -> list[Path]:
    """``effects.csv`` (late-region effects with CIs) and ``layer_effects.csv``."""
    from hooklab.atomic import atomic_write_csv

    out = Path(out)
    return [
        atomic_write_csv(
            out / "effects.csv",
            graft_effects(table, late_start_depth=late_start_depth, seed=seed),
        ),
        atomic_write_csv(out / "layer_effects.csv", layer_effects(table)),
    ]
