"""Plotly figures of steering directions (style of :mod:`hooklab.viz.figures`).

* :func:`stability_figure`: bootstrap cosine to the full-data direction against the number of
  prompts, one line per layer with its percentile band;
* :func:`cosine_matrix_figure`: a heatmap of cosines (across layers, splits or sources);
* :func:`direction_lens_figure`: the logit-lens view of a direction, per layer the tokens it
  promotes and suppresses (:func:`direction_tokens`).

The logit-lens view reads ``d`` through the model's own readout,
:func:`hooklab.architectures.read_logits` (final norm, unembedding, any soft-cap). On the
RMS-norm families hooklab supports, the norm rescales the unit vector ``d`` uniformly and then
multiplies it by the final norm's scale, and the soft-cap is monotone, so the ranking is that
of ``W_U (scale ⊙ d)``: the tokens whose logits a small push along ``d`` raises (promoted) or
lowers (suppressed) most, ignoring the norm's dependence on the rest of the residual.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch

from hooklab.architectures import read_logits, unembedding_weight
from hooklab.steering.directions import Directions
from hooklab.viz.figures import ci_band

__all__ = [
    "stability_figure",
    "cosine_matrix_figure",
    "direction_tokens",
    "direction_lens_figure",
]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def _band(colour: str) -> str:
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},0.15)"


def stability_figure(table: pd.DataFrame, layers: Sequence[int] | None = None) -> go.Figure:
    """Cosine to the full-data direction against ``n`` prompts (from
    :func:`~hooklab.steering.directions.bootstrap_stability`), mean and percentile band."""
    layers = sorted(set(table["layer"])) if layers is None else list(layers)
    figure = go.Figure()
    for i, layer in enumerate(layers):
        rows = table[table["layer"] == layer].sort_values("n")
        colour = _PALETTE[i % len(_PALETTE)]
        figure.add_trace(
            ci_band(rows["n"], rows["cos_low"], rows["cos_high"], _band(colour), str(layer))
        )
        figure.add_trace(
            go.Scatter(
                x=rows["n"],
                y=rows["cos_mean"],
                mode="lines+markers",
                name=f"layer {layer}",
                line={"color": colour},
                legendgroup=str(layer),
                customdata=rows[["cos_low", "cos_high", "n_resamples"]],
                hovertemplate=(
                    "n = %{x}: cos %{y:.4f} [%{customdata[0]:.4f}, %{customdata[1]:.4f}]"
                    "<br>%{customdata[2]} resamples<extra></extra>"
                ),
            )
        )
    figure.update_layout(
        title="direction stability: cosine of a resample of n prompts to the full direction",
        xaxis_title="prompts resampled (n)",
        yaxis_title="cosine to the full-data direction",
        template="plotly_white",
    )
    return figure


def cosine_matrix_figure(
    matrix: torch.Tensor | Any, labels: Sequence[str], *, title: str = "cosines"
) -> go.Figure:
    """A symmetric heatmap of cosines in [-1, 1], e.g.
    :func:`~hooklab.steering.directions.layer_cosine_matrix`."""
    values = torch.as_tensor(matrix, dtype=torch.float64).numpy()
    labels = [str(label) for label in labels]
    figure = go.Figure(
        go.Heatmap(
            z=values,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            colorbar={"title": "cos"},
            hovertemplate="%{y} vs %{x}: %{z:.4f}<extra></extra>",
        )
    )
    figure.update_layout(title=title, template="plotly_white", yaxis={"autorange": "reversed"})
    return figure


def direction_tokens(
    model: Any, directions: Directions, tokenizer: Any | None = None, *, k: int = 10
) -> pd.DataFrame:
    """Per layer, the ``k`` tokens with the largest (promoted) and smallest (suppressed)
    readout logits of the direction (see the module docstring).

    Returns rows ``layer, kind, rank, token_id, token, logit``.
    """
    rows = []
    with torch.no_grad():
        vectors = directions.vectors.to(unembedding_weight(model).dtype)
        logits = read_logits(model, vectors).float().cpu()
    for i, layer in enumerate(directions.layers):
        for kind, largest in (("promoted", True), ("suppressed", False)):
            values, ids = torch.topk(logits[i], k, largest=largest)
            for rank, (value, token_id) in enumerate(zip(values, ids, strict=True)):
                text = tokenizer.decode([int(token_id)]) if tokenizer is not None else ""
                rows.append(
                    {
                        "layer": layer,
                        "kind": kind,
                        "rank": rank,
                        "token_id": int(token_id),
                        "token": text,
                        "logit": float(value),
                    }
                )
    return pd.DataFrame(rows)


def direction_lens_figure(
    model: Any, directions: Directions, tokenizer: Any | None = None, *, k: int = 8
) -> go.Figure:
    """A table, one row per layer, of the tokens the direction promotes and suppresses."""
    tokens = direction_tokens(model, directions, tokenizer, k=k)

    def label(r: Any) -> str:
        name = html.escape(repr(r.token), quote=False) if r.token else f"#{r.token_id}"
        return f"{name} ({r.logit:+.2f})"

    def cell(rows: pd.DataFrame) -> str:
        return "<br>".join(label(r) for r in rows.itertuples())

    layers = list(directions.layers)
    promoted = [cell(tokens[(tokens.layer == x) & (tokens.kind == "promoted")]) for x in layers]
    suppressed = [cell(tokens[(tokens.layer == x) & (tokens.kind == "suppressed")]) for x in layers]
    figure = go.Figure(
        go.Table(
            header={"values": ["layer", f"top {k} promoted", f"top {k} suppressed"]},
            cells={"values": [layers, promoted, suppressed], "align": "left"},
        )
    )
    figure.update_layout(
        title=f"logit-lens view of the {directions.source} direction ({directions.hook})",
        template="plotly_white",
    )
    return figure
