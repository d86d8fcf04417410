"""Cross-pair figures of a study, from its merged tables only (:mod:`hooklab.study.tables`).

* Figure 1: one panel per pair, ``kl_to_final`` against depth, PT vs IT, mean and 95% CI band
  over prompts; one figure per lens (and condition).
* Figure 2: one panel per pair, the late-region change of ``kl_to_final`` for each window and
  direction, each graft mode (the random control included) beside the true graft, with CIs.
* The commitment-delay table: IT - PT commitment depth per pair, rule and condition.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hooklab.viz.figures import ci_band, save_html

__all__ = ["figure_convergence", "figure_grafts", "commitment_delay", "write_study_figures"]

_COLOURS = {"pt": "#1f77b4", "it": "#d62728"}
_BANDS = {"pt": "rgba(31,119,180,0.18)", "it": "rgba(214,39,40,0.18)"}
_MODES = {"module": "#2ca02c", "splice": "#9467bd", "random": "#7f7f7f"}


def _plain(value: object) -> str:
    return html.escape(str(value), quote=False)


def figure_convergence(
    layers: pd.DataFrame, *, lens: str, condition: str, metric: str = "kl_to_final"
) -> go.Figure:
    """Figure 1 from the stacked ``summary_layers`` table: one panel per pair."""
    rows = layers[
        (layers["lens"] == lens) & (layers["condition"] == condition) & (layers["metric"] == metric)
    ]
    pairs = list(dict.fromkeys(rows["pair"]))
    titles = [_plain(p) for p in pairs]
    figure = make_subplots(rows=1, cols=max(len(pairs), 1), subplot_titles=titles)
    for column, pair in enumerate(pairs, start=1):
        for model in ("pt", "it"):
            line = rows[(rows["pair"] == pair) & (rows["model"] == model)].sort_values("depth")
            if line.empty:
                continue
            figure.add_trace(
                ci_band(line["depth"], line["ci_low"], line["ci_high"], _BANDS[model], model),
                row=1,
                col=column,
            )
            figure.add_trace(
                go.Scatter(
                    x=line["depth"],
                    y=line["mean"],
                    mode="lines+markers",
                    name=model.upper(),
                    line={"color": _COLOURS[model]},
                    legendgroup=model,
                    showlegend=column == 1,
                    customdata=line[["layer", "n_prompts", "n_tokens"]],
                    hovertemplate="layer %{customdata[0]}: %{y:.4f}<br>%{customdata[1]} prompts, "
                    "%{customdata[2]} tokens<extra></extra>",
                ),
                row=1,
                col=column,
            )
        figure.update_xaxes(title_text="depth", row=1, col=column)
    figure.update_yaxes(title_text=f"{metric} (nats)", row=1, col=1)
    figure.update_layout(
        title=_plain(
            f"Figure 1: {metric} by depth, PT vs IT ({condition}, {lens} lens; mean, "
            "95% CI over prompts)"
        ),
        template="plotly_white",
    )
    return figure


def figure_grafts(effects: pd.DataFrame, metric: str = "kl_to_final") -> go.Figure:
    """Figure 2 from the stacked ``effects`` table: one panel per pair; x = window and
    direction, one bar per mode (the random control beside the true graft), 95% CIs."""
    order = {pair: i for i, pair in enumerate(dict.fromkeys(effects["pair"]))}  # study order
    rows = effects[effects["metric"] == metric]
    rows = rows.assign(order=rows["pair"].map(order)).sort_values(
        ["order", "direction", "window_start"], kind="stable"
    )
    pairs = list(dict.fromkeys(rows["pair"]))
    titles = [_plain(p) for p in pairs]
    # each pair on its own scale: effects differ by orders of magnitude between models
    figure = make_subplots(rows=1, cols=max(len(pairs), 1), subplot_titles=titles)
    for column, pair in enumerate(pairs, start=1):
        mine = rows[rows["pair"] == pair]
        for (mode, part), bars in mine.groupby(["mode", "part"], sort=False):
            label = mode if part == "mlp" else f"{mode} ({part})"
            figure.add_trace(
                go.Bar(
                    x=[bars["direction"].astype(str), bars["window"].astype(str)],
                    y=bars["mean"],
                    name=label,
                    marker_color=_MODES.get(mode),
                    legendgroup=label,
                    showlegend=column == 1,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": bars["ci_high"] - bars["mean"],
                        "arrayminus": bars["mean"] - bars["ci_low"],
                    },
                    customdata=bars[["n_prompts", "n_tokens"]],
                    hovertemplate="%{y:+.4f}<br>%{customdata[0]} prompts, %{customdata[1]} "
                    "tokens<extra></extra>",
                ),
                row=1,
                col=column,
            )
    figure.update_yaxes(title_text=f"late-region change of {metric} (nats)", row=1, col=1)
    figure.update_layout(
        barmode="group",
        template="plotly_white",
        title="Figure 2: graft effects (grafted - host), random control beside each (95% CI)",
    )
    return figure


def commitment_delay(commitment: pd.DataFrame) -> pd.DataFrame:
    """Per pair, condition and rule: PT and IT mean commitment depth and IT - PT (paired by
    prompt) with its CI and counts, from the stacked ``commitment`` table."""
    keys = ["pair", "lens", "condition", "rule"]
    wide = commitment.pivot_table(index=keys, columns="model", values="mean", observed=True)
    gap = commitment[commitment["model"] == "it-pt"].set_index(keys)
    out = pd.DataFrame(
        {
            "pt_depth": wide.get("pt"),
            "it_depth": wide.get("it"),
            "delay": gap["mean"],
            "ci_low": gap["ci_low"],
            "ci_high": gap["ci_high"],
            "n_prompts": gap["n_prompts"],
        }
    )
    return out.reset_index()


def write_study_figures(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    """Figures 1 and 2 as offline HTML in ``folder`` (PNGs are made by the report)."""
    written = []
    layers = tables.get("summary_layers")
    if layers is not None:
        combos = layers[["lens", "condition"]].drop_duplicates().itertuples(index=False)
        for lens, condition in combos:
            name = "figure1_convergence" + (
                "" if (lens, condition) == ("logit", "native") else f"_{_slug(lens)}_{condition}"
            )
            figure = figure_convergence(layers, lens=lens, condition=condition)
            written.append(save_html(figure, folder / f"{name}.html"))
    effects = tables.get("effects")
    if effects is not None:
        written.append(save_html(figure_grafts(effects), folder / "figure2_grafts.html"))
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)[:40]
