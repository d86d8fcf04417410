"""Summaries of a long readout table: per layer, per depth bin, the convergence gap (IT - PT),
and commitment layers. Every interval is a bootstrap over prompts (positions are averaged
within a prompt first); counts of prompts and tokens are always reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from hooklab.errors import HooklabError
from hooklab.metric_specs import SUMMARY_METRICS
from hooklab.metrics import LATE_START_DEPTH, first_committed_layer, late_layers, layers_label
from hooklab.stats import bootstrap_mean_ci

__all__ = [
    "layer_summary",
    "depth_summary",
    "convergence_gap",
    "commitment_layers",
    "commitment_summary",
]

DEFAULT_METRICS = SUMMARY_METRICS


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise HooklabError(f"the table has no column(s) {missing}; columns: {list(frame.columns)}")


def _ci_rows(prompt_level: pd.DataFrame, keys: list[str], value: str, seed: int) -> pd.DataFrame:
    """Bootstrap CI of ``value`` over the prompts of each group of ``keys``.

    Every ``n_tokens*`` column of ``prompt_level`` (one count per prompt) is summed over the
    group's prompts.
    """
    counts = [c for c in prompt_level.columns if c.startswith("n_tokens")]
    rows = []
    for key, group in prompt_level.groupby(keys, sort=True, observed=True):
        ci = bootstrap_mean_ci(group[value].to_numpy(), seed=seed)
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "mean": ci.mean,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "sem": ci.sem,
                "n_prompts": ci.n,
                **{c: int(group[c].sum()) for c in counts},
            }
        )
    return pd.DataFrame(rows)


def _prompt_means(frame: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Per group of ``keys`` and prompt: the mean of ``metric`` over the prompt's rows, and
    ``n_tokens``, the number of distinct positions read (not rows: a group may span layers)."""
    grouped = frame.groupby([*keys, "prompt_id"], sort=True, observed=True)
    out = grouped.agg(value=(metric, "mean"), n_tokens=("position", "nunique"))
    return out.reset_index()


def _metric_cis(
    frame: pd.DataFrame, metrics: Sequence[str], keys: list[str], seed: int
) -> pd.DataFrame:
    """Per metric and group of ``keys``: the mean over prompts of per-prompt means, with CIs.

    ``n_prompts`` counts the prompts and ``n_tokens`` the distinct (prompt, position) pairs read
    in the group (a position read at several layers of the group counts once).
    """
    parts = []
    for metric in metrics:
        data = frame.assign(**{metric: frame[metric].astype(np.float64)})
        summary = _ci_rows(_prompt_means(data, keys, metric), keys, "value", seed)
        summary.insert(0, "metric", metric)
        parts.append(summary)
    return pd.concat(parts, ignore_index=True)


def layer_summary(
    frame: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS, *, seed: int = 0
) -> pd.DataFrame:
    """Mean and 95% CI of each metric per (condition, model, layer), over prompts.

    ``n_tokens`` is the number of distinct (prompt, position) pairs read by that model.
    """
    _check_columns(frame, [*metrics, "condition", "model", "layer", "prompt_id", "position"])
    out = _metric_cis(frame, metrics, ["condition", "model", "layer"], seed)
    n_layers = int(frame["n_layers"].iloc[0])
    out["depth"] = out["layer"] / max(n_layers - 1, 1)
    return out


def _depth_bins(frame: pd.DataFrame, n_bins: int) -> pd.Series:
    return np.minimum((frame["depth"].to_numpy() * n_bins).astype(int), n_bins - 1)


def depth_summary(
    frame: pd.DataFrame,
    metrics: Sequence[str] = ("kl_to_final",),
    *,
    n_bins: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Per depth bin (``depth`` = layer / (L - 1), in ``n_bins`` equal bins): mean and CI.

    ``n_tokens`` is the number of distinct (prompt, position) pairs read by that model in the
    bin, whatever the number of layers in it.
    """
    _check_columns(frame, [*metrics, "depth", "prompt_id", "position"])
    binned = frame.assign(depth_bin=_depth_bins(frame, n_bins))
    out = _metric_cis(binned, metrics, ["condition", "model", "depth_bin"], seed)
    out["depth_low"] = out["depth_bin"] / n_bins
    out["depth_high"] = (out["depth_bin"] + 1) / n_bins
    return out


def convergence_gap(
    frame: pd.DataFrame,
    metric: str = "kl_to_final",
    *,
    late_start_depth: float = LATE_START_DEPTH,
    seed: int = 0,
) -> pd.DataFrame:
    """IT minus PT of ``metric``, paired by prompt, per (condition, layer) and for the late region.

    The late region is :func:`~hooklab.metrics.late_layers`: the layers of depth
    ``layer / (L - 1) >= late_start_depth`` (default ``LATE_START_DEPTH``, the last 25% of
    layers), final layer excluded. Its row has ``layer = -1`` and ``region = "late"``; every
    row records the setting in ``late_start_depth`` and the region's layers in ``late_layers``
    (e.g. ``"24-30"``).

    ``n_prompts`` counts the paired prompts; ``n_tokens_pt`` and ``n_tokens_it`` count the
    distinct (prompt, position) pairs each model read in the row's cell, over those prompts (a
    position read at several late layers counts once; the two models' counts differ under
    ``native``, where each reads its own continuation).
    """
    _check_columns(
        frame, [metric, "model", "condition", "layer", "n_layers", "prompt_id", "position"]
    )
    data = frame.assign(value=frame[metric].astype(np.float64))
    late_set = late_layers(int(frame["n_layers"].iloc[0]), late_start_depth)
    late = data[data["layer"].isin(late_set)].assign(layer=-1)
    rows = []
    for region, part in (("layer", data), ("late", late)):
        means = (
            part.groupby(["condition", "layer", "model", "prompt_id"], observed=True)
            .agg(value=("value", "mean"), n_tokens=("position", "nunique"))
            .reset_index()
        )
        wide = means.pivot_table(
            index=["condition", "layer", "prompt_id"],
            columns="model",
            values=["value", "n_tokens"],
            observed=True,
        )
        if ("value", "pt") not in wide.columns or ("value", "it") not in wide.columns:
            raise HooklabError("convergence_gap needs rows of both models, 'pt' and 'it'.")
        paired = (
            pd.DataFrame(
                {
                    "value": wide[("value", "it")] - wide[("value", "pt")],
                    "n_tokens_pt": wide[("n_tokens", "pt")],
                    "n_tokens_it": wide[("n_tokens", "it")],
                }
            )
            .dropna()
            .reset_index()
        )
        summary = _ci_rows(paired, ["condition", "layer"], "value", seed)
        summary.insert(0, "region", region)
        rows.append(summary)
    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "metric", metric)
    out["late_start_depth"] = late_start_depth
    out["late_layers"] = layers_label(late_set)
    return out


def commitment_layers(
    frame: pd.DataFrame,
    *,
    kl_thresholds: Sequence[float] = (0.1, 0.5, 1.0),
    relative_thresholds: Sequence[float] = (0.1,),
    top1: bool = True,
) -> pd.DataFrame:
    """Commitment layer of every (prompt, condition, model, position) under several rules.

    Rules (docs/definitions.md): ``kl<tau`` (``kl_to_final`` below ``tau`` nats at every
    later layer), ``kl<r*max`` (below ``r`` times the position's largest ``kl_to_final``),
    and ``top1`` (top-1 equals the final top-1 at every later layer). Columns
    ``commit_<rule>`` hold the layer and ``never_<rule>`` flag positions that never commit
    (they get ``n_layers - 1``); ``commit_depth_<rule>`` is the layer / (L - 1).
    """
    _check_columns(frame, ["kl_to_final", "top1_agree", "layer", "position"])
    keys = ["prompt_id", "condition", "model", "position"]
    ordered = frame.sort_values([*keys, "layer"])
    n_layers = int(ordered["n_layers"].iloc[0])
    kl = torch.from_numpy(
        ordered["kl_to_final"].to_numpy(np.float64, copy=True).reshape(-1, n_layers)
    )
    agree = torch.from_numpy(ordered["top1_agree"].to_numpy(bool, copy=True).reshape(-1, n_layers))
    out = ordered.loc[ordered["layer"] == 0, [*keys, "category", "n_layers"]].reset_index(drop=True)
    rules: dict[str, torch.Tensor] = {f"kl<{tau:g}": kl < tau for tau in kl_thresholds}
    peak = kl.max(dim=-1, keepdim=True).values
    rules |= {f"kl<{r:g}*max": kl < r * peak for r in relative_thresholds}
    if top1:
        rules["top1"] = agree
    for rule, committed in rules.items():
        layer, never = first_committed_layer(committed)
        out[f"commit_{rule}"] = layer.numpy()
        out[f"never_{rule}"] = never.numpy()
        out[f"commit_depth_{rule}"] = layer.numpy() / max(n_layers - 1, 1)
    return out


def commitment_summary(commitments: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Mean commitment depth per (condition, model, rule) with CIs over prompts, and IT - PT.

    ``n_tokens`` counts the distinct (prompt, position) pairs of a model's rows; the IT - PT rows
    (``model == "it-pt"``, paired by prompt) count each side in ``n_tokens_pt`` and
    ``n_tokens_it`` instead.
    """
    rules = [
        c.removeprefix("commit_depth_")
        for c in commitments.columns
        if c.startswith("commit_depth_")
    ]
    rows = []
    for rule in rules:
        column = f"commit_depth_{rule}"
        means = (
            commitments.groupby(["condition", "model", "prompt_id"], observed=True)
            .agg(
                value=(column, "mean"),
                n_tokens=("position", "nunique"),
                never=(f"never_{rule}", "mean"),
            )
            .reset_index()
        )
        summary = _ci_rows(means, ["condition", "model"], "value", seed)
        never = means.groupby(["condition", "model"], observed=True)["never"].mean()
        summary["never_fraction"] = never.to_numpy()
        wide = means.pivot_table(
            index=["condition", "prompt_id"],
            columns="model",
            values=["value", "n_tokens"],
            observed=True,
        )
        if {("value", "pt"), ("value", "it")} <= set(wide.columns):
            gap = pd.DataFrame(
                {
                    "value": wide[("value", "it")] - wide[("value", "pt")],
                    "n_tokens_pt": wide[("n_tokens", "pt")],
                    "n_tokens_it": wide[("n_tokens", "it")],
                }
            )
            gap = gap.dropna().reset_index()
            gap_rows = _ci_rows(gap, ["condition"], "value", seed).assign(model="it-pt")
            summary = pd.concat([summary, gap_rows], ignore_index=True)
        summary.insert(0, "rule", rule)
        rows.append(summary)
    return pd.concat(rows, ignore_index=True)
