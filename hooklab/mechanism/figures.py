"""Plotly figures of the mechanism diagnostics, from their tables only: delta-cosine profiles
(PT vs IT with 95% CI bands, the late region shaded), a layer x module heatmap of weight
change, and a layer x head heatmap of attention entropy (or its IT - PT difference). Save
them with :func:`hooklab.viz.figures.save_html`."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hooklab.errors import HooklabError
from hooklab.mechanism.delta_cosine import OppositionSummary
from hooklab.mechanism.weight_change import weight_change_pivot
from hooklab.viz.figures import COLOURS, ci_band

__all__ = ["delta_cosine_figure", "weight_change_figure", "attention_entropy_figure"]

_BAND = {"pt": "rgba(31,119,180,0.18)", "it": "rgba(214,39,40,0.18)"}  # COLOURS, translucent


def delta_cosine_figure(summary: OppositionSummary, *, metric: str = "cosine") -> go.Figure:
    """Delta-cosine against depth, PT vs IT, mean and 95% CI over prompts, one panel per
    component; the late region of ``summary`` is shaded and its IT - PT difference shown."""
    components = list(dict.fromkeys(summary.per_layer["component"]))
    late = summary.late.set_index("component")
    titles = [
        f"{c}: late IT-PT {late.at[c, 'mean']:+.3f} [{late.at[c, 'ci_low']:+.3f}, "
        f"{late.at[c, 'ci_high']:+.3f}]"
        for c in components
    ]
    figure = make_subplots(rows=1, cols=len(components), shared_yaxes=True, subplot_titles=titles)
    n_layers = int(summary.per_layer["layer"].max()) + 1
    # shade half a layer either side of the late region, so one late layer is visible too
    first = min(summary.late_layers, default=n_layers - 1.5)
    last = max(summary.late_layers, default=n_layers - 1.5)
    late_start = (first - 0.5) / max(n_layers - 1, 1)
    late_end = (last + 0.5) / max(n_layers - 1, 1)
    for column, component in enumerate(components, start=1):
        for model in ("pt", "it"):
            per = summary.per_layer
            rows = per[(per["component"] == component) & (per["model"] == model)]
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
                    customdata=rows[["layer", "n_prompts"]],
                    hovertemplate=(
                        "layer %{customdata[0]}: %{y:.4f}<br>%{customdata[1]} prompts"
                        "<extra></extra>"
                    ),
                ),
                row=1,
                col=column,
            )
        figure.add_vrect(  # after the traces: plotly skips shapes on empty panels
            x0=late_start,
            x1=late_end,
            fillcolor="rgba(127,127,127,0.12)",
            line_width=0,
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="depth (layer / (L - 1))", row=1, col=column)
    figure.update_yaxes(title_text=f"{metric}(update, residual)", row=1, col=1)
    figure.update_layout(
        title="delta-cosine by depth, PT vs IT (mean, 95% CI over prompts; late region shaded)",
        template="plotly_white",
    )
    return figure


def weight_change_figure(frame: pd.DataFrame, value: str = "rel_change") -> go.Figure:
    """Layer x module heatmap of a :func:`~hooklab.mechanism.weight_change.weight_change`
    table (routed experts pooled per matrix)."""
    grid = weight_change_pivot(frame, value)
    figure = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=list(grid.columns),
            y=list(grid.index),
            colorscale="Viridis",
            colorbar={"title": value},
            hovertemplate="layer %{y}, %{x}: %{z:.4g}<extra></extra>",
        )
    )
    label = "||W_IT - W_PT|| / ||W_PT||" if value == "rel_change" else "cosine(W_PT, W_IT)"
    figure.update_layout(
        title=f"weight change by layer and module: {label}",
        xaxis_title="module",
        yaxis_title="layer",
        template="plotly_white",
    )
    return figure


def attention_entropy_figure(
    frame_pt: pd.DataFrame, frame_it: pd.DataFrame | None = None
) -> go.Figure:
    """Layer x head heatmap of mean attention entropy over prompts (nats); given both
    models, of the IT - PT difference (paired by row) on a diverging scale."""
    if frame_pt.empty:
        raise HooklabError("frame_pt is empty; pass attention_entropies rows.")
    grid = frame_pt.pivot_table(index="layer", columns="head", values="entropy", aggfunc="mean")
    title, scale, mid = "mean attention entropy (nats)", "Viridis", None
    if frame_it is not None:
        it = frame_it.pivot_table(index="layer", columns="head", values="entropy", aggfunc="mean")
        grid = it - grid
        title, scale, mid = "attention entropy, IT - PT (nats)", "RdBu_r", 0.0
    figure = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=list(grid.columns),
            y=list(grid.index),
            colorscale=scale,
            zmid=mid,
            colorbar={"title": "nats"},
            hovertemplate="layer %{y}, head %{x}: %{z:.4f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title, xaxis_title="head", yaxis_title="layer", template="plotly_white"
    )
    return figure
