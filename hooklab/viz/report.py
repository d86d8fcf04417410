"""``hooklab report DIR``: one HTML page from run folders: manifests, summary tables with CIs,
the figures, links to the token views. Everything is computed from the result tables; each
run's section comes from its experiment (:meth:`~hooklab.experiment.Experiment.report_section`).
Every value shown is escaped."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hooklab.atomic import atomic_write_text
from hooklab.errors import HooklabError
from hooklab.experiment import get_experiment
from hooklab.tables import MANIFEST
from hooklab.viz.browser import find_browser, screenshot

__all__ = ["write_figures", "write_report"]


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HooklabError(
            f"run_dirs: {str(run_dir)!r} is not a hooklab run folder ({path.name} is missing or "
            f"unreadable: {error.__class__.__name__}). Pass folders written by `hooklab run` "
            "(e.g. a demo's readout/ and graft/ folders)."
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise HooklabError(
            f"run_dirs: {str(run_dir)!r} holds a manifest.json without a 'config' object, so it "
            "is not a finished hooklab run; run or merge it again (`hooklab run SPEC`)."
        )
    return manifest


def write_figures(run_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    """The figures of a finished run folder, as offline HTML (and PNG where Chromium is)."""
    run_dir, figures_dir = Path(run_dir), Path(figures_dir)
    experiment = get_experiment(_manifest(run_dir)["config"].get("experiment", "?"))
    written = experiment.figures(run_dir, figures_dir)
    if find_browser() is not None:  # static PNGs beside the HTML (Chromium as the renderer)
        for path in list(written):
            screenshot(path, path.with_suffix(".png"))
    return written


def _text(value: Any) -> str:
    """Any value as HTML text (quotes escaped too, so it is safe in an attribute)."""
    return html.escape(str(value), quote=True)


def _href(target: str | Path, base: Path) -> str:
    """``target`` as a relative, percent-encoded URL from folder ``base``, escaped for HTML."""
    relative = Path(os.path.relpath(Path(target).resolve(), base.resolve())).as_posix()
    return html.escape(quote(relative), quote=True)


def _run_section(run_dir: Path, out: Path) -> list[str]:
    manifest = _manifest(run_dir)
    experiment = get_experiment(manifest["config"].get("experiment", "?"))
    text = html.escape
    pair = manifest.get("pair", {})
    sections = [
        f"<h2>{text(experiment.name)}: {text(str(run_dir))}</h2>",
        f"<p>pair: <code>{text(json.dumps(pair))}</code><br>"
        f"prompts: {text(str(manifest.get('n_prompts')))} (set "
        f"{text(str(manifest.get('prompt_set_hash', ''))[:12])}), seed "
        f"{text(str(manifest.get('seed')))}, rows {text(str(manifest.get('n_rows')))}, created "
        f"{text(str(manifest.get('created')))}, git {text(str(manifest.get('git_commit')))}</p>",
        experiment.report_section(run_dir),
    ]
    for figure in write_figures(run_dir, out / "figures"):
        sections.append(
            f"<h3>{text(figure.stem.replace('_', ' '))}</h3><iframe src='{_href(figure, out)}' "
            "width='100%' height='520' frameborder='0'></iframe>"
        )
    return sections


def write_report(
    out: str | Path,
    run_dirs: Sequence[str | Path],
    *,
    token_views: Sequence[tuple[str, Path] | Path] = (),
    title: str = "hooklab report",
) -> Path:
    """Assemble ``out/report.html`` from run folders (figures are written to ``out/figures``).

    ``token_views`` are files under ``out``, or (label, file) pairs; labels are escaped.
    """
    out = Path(out)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    for run_dir in map(Path, run_dirs):
        sections += _run_section(run_dir, out)
    if token_views:
        items = []
        for view in token_views:
            label, path = view if isinstance(view, tuple) else (Path(view).stem, Path(view))
            items.append(f"<li><a href='{_href(Path(path), out)}'>{html.escape(label)}</a></li>")
        sections.append(f"<h2>Token views</h2><ul>{''.join(items)}</ul>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table.summary{border-collapse:collapse}"
        "table.summary td,table.summary th{padding:3px 8px;border-bottom:1px solid #ddd}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
    return atomic_write_text(out / "report.html", page)
