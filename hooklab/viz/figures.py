"""Plotly figures computed from result tables only (a readout or graft table, or their
summaries), saved as self-contained HTML that works offline (plotly.js inlined, no CDN).

Figures: convergence curves (metric vs depth, PT vs IT, mean and 95% CI, one panel per pair or
condition), commitment-layer distributions, graft effects (late-region change by window and
direction with CIs, the random control beside the true graft), and a layer x position heatmap
for one prompt.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hooklab.errors import HooklabError
from hooklab.graft.effects import graft_effects
from hooklab.summaries import commitment_layers, layer_summary

__all__ = [
    "convergence_figure",
    "commitment_figure",
    "graft_effects_figure",
    "heatmap_figure",
    "save_html",
]

COLOURS = {"pt": "#1f77b4", "it": "#d62728"}
_BAND = {"pt": "rgba(31,119,180,0.18)", "it": "rgba(214,39,40,0.18)"}


def _plain(value: object) -> str:
    """A table value as plain text in a plotly title, which plotly reads as a subset of HTML
    (links, styles): ``&``, ``<``, ``>`` escaped (plotly decodes just those entities)."""
    return html.escape(str(value), quote=False)


def convergence_figure(
    table: pd.DataFrame, metric: str = "kl_to_final", *, seed: int = 0
) -> go.Figure:
    """``metric`` against depth for PT and IT, mean over prompts with 95% bootstrap CI bands,
    one panel per condition."""
    summary = layer_summary(table, [metric], seed=seed)
    conditions = list(dict.fromkeys(summary["condition"]))
    figure = make_subplots(
        rows=1,
        cols=len(conditions),
        shared_yaxes=True,
        subplot_titles=[_plain(c) for c in conditions],
    )
    for column, condition in enumerate(conditions, start=1):
        for model in ("pt", "it"):
            rows = summary[(summary["condition"] == condition) & (summary["model"] == model)]
            if rows.empty:
                continue
            rows = rows.sort_values("depth")
            figure.add_trace(
                ci_band(rows["depth"], rows["ci_low"], rows["ci_high"], _BAND[model], model),
                row=1,
                col=column,
            )
            figure.add_trace(
                go.Scatter(
                    x=rows["depth"],
                    y=rows["mean"],
                    mode="lines+markers",
                    name=model.upper(),
                    line={"color": COLOURS[model]},
                    legendgroup=model,
                    showlegend=column == 1,
                    customdata=rows[["layer", "n_prompts", "n_tokens"]],
                    hovertemplate=(
                        "layer %{customdata[0]}: %{y:.4f}<br>%{customdata[1]} prompts, "
                        "%{customdata[2]} tokens<extra></extra>"
                    ),
                ),
                row=1,
                col=column,
            )
        figure.update_xaxes(title_text="depth (layer / (L - 1))", row=1, col=column)
    figure.update_yaxes(title_text=metric, row=1, col=1)
    figure.update_layout(
        title=f"{metric} by depth, PT vs IT (mean, 95% CI over prompts)", template="plotly_white"
    )
    return figure


def commitment_figure(table: pd.DataFrame, rule: str = "kl<0.1") -> go.Figure:
    """Distribution of commitment depth per model and condition (box plots)."""
    commitments = commitment_layers(table)
    column = f"commit_depth_{rule}"
    if column not in commitments.columns:
        rules = [
            c.removeprefix("commit_depth_")
            for c in commitments.columns
            if c.startswith("commit_depth_")
        ]
        raise HooklabError(f"rule={rule!r}: choose one of {rules}.")
    figure = go.Figure()
    for model in ("pt", "it"):
        rows = commitments[commitments["model"] == model]
        figure.add_trace(
            go.Box(
                x=rows["condition"].astype(str),
                y=rows[column],
                name=model.upper(),
                marker_color=COLOURS[model],
                boxmean=True,
            )
        )
    figure.update_layout(
        boxmode="group",
        template="plotly_white",
        title=f"commitment depth ({rule}), per position",
        yaxis_title="commitment depth",
        xaxis_title="condition",
    )
    return figure


def graft_effects_figure(
    table: pd.DataFrame, metric: str = "kl_to_final", *, seed: int = 0
) -> go.Figure:
    """Late-region change of ``metric`` per window and direction, with 95% CIs; each mode
    (the random control included) is its own bar beside the true graft."""
    effects = graft_effects(table, metric, seed=seed)
    directions = list(dict.fromkeys(effects["direction"]))
    figure = make_subplots(
        rows=1,
        cols=len(directions),
        shared_yaxes=True,
        subplot_titles=[_plain(d) for d in directions],
    )
    palette = {"module": "#2ca02c", "splice": "#9467bd", "random": "#7f7f7f"}
    for column, direction in enumerate(directions, start=1):
        for (mode, part), rows in effects[effects["direction"] == direction].groupby(
            ["mode", "part"], observed=True, sort=False
        ):
            label = mode if part == "mlp" else f"{mode} ({part})"
            figure.add_trace(
                go.Bar(
                    x=rows["window"].astype(str),
                    y=rows["mean"],
                    name=label,
                    marker_color=palette.get(mode),
                    legendgroup=label,
                    showlegend=column == 1,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": rows["ci_high"] - rows["mean"],
                        "arrayminus": rows["mean"] - rows["ci_low"],
                    },
                    customdata=rows[["p_sign_flip", "n_prompts", "n_tokens"]],
                    hovertemplate=(
                        "%{y:+.4f}<br>p = %{customdata[0]:.3g}<br>%{customdata[1]} "
                        "prompts, %{customdata[2]} tokens<extra></extra>"
                    ),
                ),
                row=1,
                col=column,
            )
    figure.update_yaxes(title_text=f"late-region change of {metric}", row=1, col=1)
    figure.update_layout(
        barmode="group",
        template="plotly_white",
        title="graft effects (grafted - host), mean and 95% CI over prompts",
    )
    return figure


def heatmap_figure(
    table: pd.DataFrame,
    prompt_id: str,
    *,
    condition: str | None = None,
    model: str = "it",
    metric: str = "kl_to_final",
) -> go.Figure:
    """``metric`` for one prompt as a layer x position heatmap."""
    rows = table[(table["prompt_id"] == prompt_id) & (table["model"] == model)]
    if condition is not None:
        rows = rows[rows["condition"] == condition]
    if rows.empty:
        raise HooklabError(
            f"no rows for prompt_id={prompt_id!r}, model={model!r}, "
            f"condition={condition!r} in the table."
        )
    if condition is None:
        condition = str(rows["condition"].iloc[0])
        rows = rows[rows["condition"] == condition]
    grid = rows.pivot_table(index="layer", columns="position", values=metric, observed=True)
    figure = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=grid.columns,
            y=grid.index,
            colorscale="Viridis",
            colorbar={"title": metric},
        )
    )
    figure.update_layout(
        title=_plain(f"{metric}: {model.upper()} on {prompt_id} ({condition})"),
        xaxis_title="position",
        yaxis_title="layer",
        template="plotly_white",
    )
    return figure


def save_html(figure: go.Figure, path: str | Path) -> Path:
    """Write ``figure`` as one self-contained HTML file (plotly.js inlined: works offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def ci_band(x, low, high, fillcolor: str, group: str) -> go.Scatter:
    """A filled 95% band between ``low`` and ``high`` over ``x`` (no hover, no legend entry)."""
    x = list(x)
    return go.Scatter(
        x=x + x[::-1],
        y=list(high) + list(low)[::-1],
        mode="lines",
        fill="toself",
        fillcolor=fillcolor,
        line={"width": 0},
        hoverinfo="skip",
        showlegend=False,
        legendgroup=group,
    )
