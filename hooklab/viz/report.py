"""``hooklab report DIR``: one HTML page from run folders: manifests, summary tables with CIs,
the figures, links to the token views. Everything is computed from the result tables."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from hooklab.errors import HooklabError
from hooklab.viz.browser import find_browser, screenshot
from hooklab.viz.figures import (
    commitment_figure,
    convergence_figure,
    graft_effects_figure,
    heatmap_figure,
    save_html,
)

__all__ = ["write_figures", "write_report"]


def write_figures(run_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    """The figures of a readout or graft run folder, as offline HTML files."""
    run_dir, figures_dir = Path(run_dir), Path(figures_dir)
    written = []
    if (run_dir / "readout.parquet").is_file():
        table = pd.read_parquet(run_dir / "readout.parquet")
        written.append(save_html(convergence_figure(table), figures_dir / "convergence.html"))
        written.append(save_html(commitment_figure(table), figures_dir / "commitment.html"))
        first = str(table["prompt_id"].iloc[0])
        written.append(save_html(heatmap_figure(table, first), figures_dir / "heatmap.html"))
    if (run_dir / "graft.parquet").is_file():
        table = pd.read_parquet(run_dir / "graft.parquet")
        written.append(save_html(graft_effects_figure(table), figures_dir / "graft_effects.html"))
    if not written:
        raise HooklabError(f"{run_dir} holds neither readout.parquet nor graft.parquet.")
    if find_browser() is not None:  # static PNGs beside the HTML (Chromium as the renderer)
        for path in list(written):
            screenshot(path, path.with_suffix(".png"))
    return written


def _table(path: Path, columns: list[str], query=None) -> str:
    frame = pd.read_csv(path)
    if query is not None:
        frame = query(frame)
    return frame[[c for c in columns if c in frame.columns]].to_html(
        index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="summary"
    )


def write_report(
    out: str | Path,
    run_dirs: list[str | Path],
    *,
    token_views: list[Path] = (),
    title: str = "hooklab report",
) -> Path:
    """Assemble ``out/report.html`` from run folders (figures are written to ``out/figures``)."""
    out = Path(out)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    for run_dir in map(Path, run_dirs):
        manifest = json.loads((run_dir / "manifest.json").read_text())
        experiment = manifest["config"].get("experiment", "?")
        sections.append(f"<h2>{experiment}: {html.escape(str(run_dir))}</h2>")
        pair = manifest.get("pair", {})
        sections.append(
            f"<p>pair: <code>{html.escape(json.dumps(pair))}</code><br>"
            f"prompts: {manifest['n_prompts']} (set {manifest['prompt_set_hash'][:12]}),"
            f" seed {manifest['seed']}, rows {manifest.get('n_rows')}, created "
            f"{manifest['created']}, git {manifest.get('git_commit')}</p>"
        )
        figures = write_figures(run_dir, out / "figures")
        if experiment == "readout":
            sections.append("<h3>Convergence gap (IT - PT, kl_to_final, late region)</h3>")
            sections.append(
                _table(
                    run_dir / "convergence_gap.csv",
                    [
                        "condition",
                        "late_layers",
                        "mean",
                        "ci_low",
                        "ci_high",
                        "n_prompts",
                        "n_tokens_pt",
                        "n_tokens_it",
                    ],
                    lambda f: f[f["region"] == "late"],
                )
            )
            sections.append("<h3>Commitment depth</h3>")
            sections.append(
                _table(
                    run_dir / "commitment.csv",
                    [
                        "rule",
                        "condition",
                        "model",
                        "mean",
                        "ci_low",
                        "ci_high",
                        "never_fraction",
                        "n_prompts",
                    ],
                    lambda f: f[f["rule"].isin(["kl<0.1", "top1"])],
                )
            )
        else:
            sections.append("<h3>Graft effects (late-region change of kl_to_final)</h3>")
            sections.append(
                _table(
                    run_dir / "effects.csv",
                    [
                        "direction",
                        "mode",
                        "part",
                        "window",
                        "mean",
                        "ci_low",
                        "ci_high",
                        "bca_low",
                        "bca_high",
                        "p_sign_flip",
                        "n_prompts",
                        "n_tokens",
                    ],
                )
            )
        for figure in figures:
            relative = figure.relative_to(out)
            sections.append(
                f"<h3>{figure.stem.replace('_', ' ')}</h3><iframe src='{relative}' "
                "width='100%' height='520' frameborder='0'></iframe>"
            )
    if token_views:
        links = "".join(
            f"<li><a href='{Path(v).relative_to(out)}'>{Path(v).stem}</a></li>" for v in token_views
        )
        sections.append(f"<h2>Token views</h2><ul>{links}</ul>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table.summary{border-collapse:collapse}"
        "table.summary td,table.summary th{padding:3px 8px;border-bottom:1px solid #ddd}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
