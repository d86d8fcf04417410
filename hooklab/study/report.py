"""A study's outputs, from its finished runs: cross-pair tables (``tables/``), Figures 1 and 2
(``figures/``, HTML and, with Chromium, PNG), ``commitment_delay.csv``, ``claims.csv``, one
report per pair (``<label>/report.html``, :func:`hooklab.viz.report.write_report`) and
``report.html`` linking them. Every value shown is escaped."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from hooklab.atomic import atomic_write_csv, atomic_write_text
from hooklab.study.claims import evaluate_claims
from hooklab.study.figures import commitment_delay, write_study_figures
from hooklab.study.spec import StudySpec
from hooklab.study.tables import STUDY_TABLES, TABLES_DIR, collect_tables, write_tables
from hooklab.tables import MANIFEST
from hooklab.viz.browser import find_browser, screenshot
from hooklab.viz.report import _href, write_report

__all__ = ["write_study_outputs", "write_study_report"]

_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto}"
    "table.summary{border-collapse:collapse}"
    "table.summary td,table.summary th{padding:3px 8px;border-bottom:1px solid #ddd}"
    ".holds{color:#2a7d2a}.fails{color:#b22222}.inconclusive{color:#8a6d00}"
)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(
        index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="summary", escape=True
    )


def write_study_outputs(study: StudySpec, *, pair_reports: bool = True) -> Path:
    """Write every study output of the finished runs; returns ``report.html``'s path.

    Outputs of an earlier call that this one does not write (an experiment dropped from the
    spec) are removed, so that no table or figure stands beside claims that say "not run".
    """
    from hooklab.study.execute import check_study_folder

    check_study_folder(study)
    out = study.out_dir
    written = set(write_tables(study).values())
    tables = collect_tables(study)
    figures = write_study_figures(tables, out / "figures")
    written |= set(figures)
    if find_browser() is not None:
        for path in figures:
            png = path.with_suffix(".png")
            screenshot(path, png, width=max(600, 420 * len(study.pairs)))
            written.add(png)
    delay = None
    if "commitment" in tables:
        delay = commitment_delay(tables["commitment"])
        written.add(atomic_write_csv(out / "commitment_delay.csv", delay))
    _remove_stale_outputs(out, written)
    claims = evaluate_claims(tables, study.labels(), seed=study.seed)
    atomic_write_csv(out / "claims.csv", claims)
    reports = {}
    if pair_reports:
        for pair in study.pairs:
            runs = [
                study.run_dir(pair, e)
                for e in study.experiments
                if (study.run_dir(pair, e) / MANIFEST).is_file()
            ]
            if runs:
                reports[pair.label] = write_report(
                    out / pair.label, runs, title=f"{study.name}: {pair.label}"
                )
    return write_study_report(study, claims, figures, delay, reports)


def _remove_stale_outputs(out: Path, written: set[Path]) -> None:
    """Delete the study outputs (only names the study writes) that this call did not write."""
    owned = [out / "commitment_delay.csv"]
    owned += [out / TABLES_DIR / f"{name}.csv" for name in (*STUDY_TABLES, "graft_prompt_effects")]
    for pattern in ("figure1_convergence*", "figure2_grafts.*"):
        owned += list((out / "figures").glob(pattern))
    for path in owned:
        if path.is_file() and path not in written:
            path.unlink()


def write_study_report(
    study: StudySpec,
    claims: pd.DataFrame,
    figures: list[Path],
    delay: pd.DataFrame | None,
    reports: dict[str, Path],
) -> Path:
    """``OUT/report.html``: the claims, Figures 1 and 2, the commitment delay, links."""
    out = study.out_dir
    text = html.escape
    sections = [
        f"<h1>{text(study.name)}</h1>",
        f"<p>{len(study.pairs)} pairs ({text(', '.join(study.labels()))}); experiments "
        f"{text(', '.join(study.experiments))}; seed {study.seed}.</p>",
        "<h2>Claims</h2><p>Verdict from the 95% bootstrap CI over prompts: <i>holds</i> when it "
        "lies on the claimed side of 0, <i>fails</i> when on the other, else "
        "<i>inconclusive</i> (<code>claims.csv</code>).</p>",
    ]
    if not claims.empty:
        shown = claims[
            [
                "pair",
                "claim",
                "statement",
                "measured",
                "ci_low",
                "ci_high",
                "n_prompts",
                "n_tokens",
                "verdict",
                "paper",
                "detail",
            ]
        ]
        sections.append(_table(shown))
    for figure in figures:
        sections.append(
            f"<h2>{text(figure.stem.replace('_', ' '))}</h2><iframe src='{_href(figure, out)}' "
            "width='100%' height='540' frameborder='0'></iframe>"
        )
    if delay is not None:
        sections += [
            "<h2>Commitment delay (IT - PT commitment depth)</h2>",
            _table(delay[delay["rule"].isin(["kl<0.1", "top1"])]),
        ]
    if reports:
        items = "".join(
            f"<li><a href='{_href(path, out)}'>{text(label)}</a></li>"
            for label, path in reports.items()
        )
        sections.append(f"<h2>Per-pair reports</h2><ul>{items}</ul>")
    title = text(study.name)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        f"{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    return atomic_write_text(out / "report.html", page)
