"""Figures from result tables (plotly, offline HTML)."""

from hooklab.viz.figures import (
    commitment_figure,
    convergence_figure,
    graft_effects_figure,
    heatmap_figure,
    save_html,
)

__all__ = [
    "commitment_figure",
    "convergence_figure",
    "graft_effects_figure",
    "heatmap_figure",
    "save_html",
]
