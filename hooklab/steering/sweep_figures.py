"""Figures of a ``steer`` run folder: dose-response curves, direction stability, cosines and
the logit-lens view of the steered direction (style of :mod:`hooklab.steering.figures`)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hooklab.steering.directions import layer_cosine_matrix
from hooklab.steering.figures import _PALETTE, _band, cosine_matrix_figure, stability_figure
from hooklab.steering.io import load_directions
from hooklab.viz.figures import ci_band

__all__ = ["dose_response_figure", "direction_tokens_figure", "steer_figures"]


def dose_response_figure(
    dose: pd.DataFrame, measures: Sequence[str] = ("governance", "content")
) -> go.Figure:
    """Mean score against α per arm with its 95% CI band, one panel per measure (rows of
    :func:`~hooklab.steering.dose.dose_response`)."""
    measures = [m for m in measures if m in set(dose["measure"])]
    figure = make_subplots(rows=1, cols=max(len(measures), 1), subplot_titles=measures)
    arms = list(dict.fromkeys(dose["arm"]))
    for col, measure in enumerate(measures, start=1):
        for i, arm in enumerate(arms):
            rows = dose[(dose["measure"] == measure) & (dose["arm"] == arm)].sort_values("alpha")
            if rows.empty:
                continue
            colour = _PALETTE[i % len(_PALETTE)]
            dash = "dot" if "random" in arm else "solid"
            figure.add_trace(
                ci_band(rows["alpha"], rows["ci_low"], rows["ci_high"], _band(colour), arm),
                row=1,
                col=col,
            )
            figure.add_trace(
                go.Scatter(
                    x=rows["alpha"],
                    y=rows["mean"],
                    mode="lines+markers",
                    name=arm,
                    line={"color": colour, "dash": dash},
                    legendgroup=arm,
                    showlegend=col == 1,
                    customdata=rows[["ci_low", "ci_high", "n_prompts"]],
                    hovertemplate=(
                        f"{html.escape(arm)} α=%{{x}}: %{{y:.4f}} "
                        "[%{customdata[0]:.4f}, %{customdata[1]:.4f}], "
                        "%{customdata[2]} prompts<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
        figure.update_xaxes(title_text="α (1 = unsteered)", row=1, col=col)
    figure.update_layout(
        title="dose-response: mean score over prompts against α (95% bootstrap CI)",
        template="plotly_white",
    )
    return figure


def direction_tokens_figure(tokens: pd.DataFrame, title: str) -> go.Figure:
    """A table per layer of promoted / suppressed tokens (rows of
    :func:`~hooklab.steering.figures.direction_tokens`)."""

    def cell(rows: pd.DataFrame) -> str:
        return "<br>".join(
            f"{html.escape(repr(r.token), quote=False)} ({r.logit:+.2f})" for r in rows.itertuples()
        )

    layers = sorted(set(tokens["layer"]))
    kinds = {
        kind: [cell(tokens[(tokens.layer == x) & (tokens.kind == kind)]) for x in layers]
        for kind in ("promoted", "suppressed")
    }
    figure = go.Figure(
        go.Table(
            header={"values": ["layer", "promoted", "suppressed"]},
            cells={"values": [layers, kinds["promoted"], kinds["suppressed"]], "align": "left"},
        )
    )
    figure.update_layout(title=title, template="plotly_white")
    return figure


def steer_figures(run_dir: Path, figures_dir: Path) -> list[Path]:
    """Every figure a steer run folder supports (missing inputs are skipped)."""
    from hooklab.viz.figures import save_html

    run_dir, figures_dir = Path(run_dir), Path(figures_dir)
    folder = run_dir / "directions"
    written = []
    if (run_dir / "dose_response.csv").is_file():
        dose = pd.read_csv(run_dir / "dose_response.csv")
        measures = ("governance", "content", "late_kl_to_final")
        written.append(
            save_html(dose_response_figure(dose, measures), figures_dir / "dose_response.html")
        )
    if (folder / "stability.csv").is_file():
        stability = stability_figure(pd.read_csv(folder / "stability.csv"))
        written.append(save_html(stability, figures_dir / "direction_stability.html"))
    if (folder / "random.json").is_file():
        hook = json.loads((folder / "random.json").read_text())["hook"]
        directions = load_directions(folder / hook)
        matrix = cosine_matrix_figure(
            layer_cosine_matrix(directions),
            [str(x) for x in directions.layers],
            title=f"cosines of the IT−PT {hook} direction across steered layers",
        )
        written.append(save_html(matrix, figures_dir / "direction_cosines.html"))
    if (folder / "direction_tokens.csv").is_file():
        tokens = pd.read_csv(folder / "direction_tokens.csv", keep_default_na=False)
        view = direction_tokens_figure(tokens, "logit-lens view of the steered IT−PT direction")
        written.append(save_html(view, figures_dir / "direction_lens.html"))
    return written
