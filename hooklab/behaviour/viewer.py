"""An offline HTML viewer of a behaviour run: per prompt, the arms' responses side by side with
their scores; and the scorer x arm bar figure.

Every text (prompts, generations, arm names, scorer names, values) is written through
:func:`html.escape`: a generation can contain anything, markup included.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hooklab.atomic import atomic_write_text

__all__ = ["behaviour_figure", "viewer_html", "write_viewer"]

_STYLE = (
    "body{font-family:sans-serif;margin:1em}"
    "table{border-collapse:collapse;table-layout:fixed;width:100%}"
    "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
    "pre{white-space:pre-wrap;word-break:break-word;margin:0}"
    ".scores{font-size:80%;color:#333}.prompt{background:#f4f4f4;padding:4px}"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _value(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def viewer_html(
    records: Sequence[Mapping[str, Any]],
    scores: pd.DataFrame,
    *,
    title: str = "behaviour: responses by arm",
) -> str:
    """The viewer page: one section per prompt, one column per arm (in the records' order).

    Args:
        records: generation records (``prompt_id``, ``category``, ``prompt_text``, ``arm``,
            ``text``, ``stop_reason``, ``n_tokens``).
        scores: the scores table (``prompt_id``, ``arm``, ``scorer``, ``value``).
        title: the page title.
    """
    arms = list(dict.fromkeys(str(r["arm"]) for r in records))
    by_key = {(str(r["prompt_id"]), str(r["arm"])): r for r in records}
    values: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for row in scores[["prompt_id", "arm", "scorer", "value"]].itertuples(index=False):
        key = (str(row.prompt_id), str(row.arm))
        values.setdefault(key, []).append((str(row.scorer), float(row.value)))
    header = "".join(f"<th>{_e(arm)}</th>" for arm in arms)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>"
    ]
    for prompt_id in dict.fromkeys(str(r["prompt_id"]) for r in records):
        first = by_key[(prompt_id, next(a for a in arms if (prompt_id, a) in by_key))]
        parts.append(
            f"<h3>{_e(prompt_id)} <small>({_e(first['category'])})</small></h3>"
            f"<pre class='prompt'>{_e(first.get('prompt_text', ''))}</pre>"
            f"<table><tr>{header}</tr><tr>"
        )
        for arm in arms:
            record = by_key.get((prompt_id, arm))
            if record is None:
                parts.append("<td></td>")
                continue
            listed = "<br>".join(
                f"{_e(name)}: {_e(_value(value))}"
                for name, value in values.get((prompt_id, arm), [])
            )
            parts.append(
                f"<td><pre>{_e(record['text'])}</pre><div class='scores'>"
                f"{_e(record['stop_reason'])}, {_e(record['n_tokens'])} tokens<br>{listed}"
                "</div></td>"
            )
        parts.append("</tr></table>")
    parts.append("</body></html>")
    return "".join(parts)


def write_viewer(
    path: str | Path,
    records: Sequence[Mapping[str, Any]],
    scores: pd.DataFrame,
) -> Path:
    """Write :func:`viewer_html` to ``path`` (atomically)."""
    return atomic_write_text(Path(path), viewer_html(records, scores))


def behaviour_figure(means: pd.DataFrame) -> Any:
    """Grouped bars: x = scorer, one bar per arm, mean with its 95% CI over prompts.

    Args:
        means: the ``arm_means`` table (``scorer``, ``arm``, ``mean``, ``ci_low``, ``ci_high``).
    """
    import plotly.graph_objects as go

    figure = go.Figure()
    for arm in dict.fromkeys(means["arm"]):
        rows = means[means["arm"] == arm]
        figure.add_trace(
            go.Bar(
                name=str(arm),
                x=rows["scorer"],
                y=rows["mean"],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": rows["ci_high"] - rows["mean"],
                    "arrayminus": rows["mean"] - rows["ci_low"],
                },
            )
        )
    figure.update_layout(
        barmode="group",
        title="Behaviour scores by arm: mean and 95% bootstrap CI over prompts",
        yaxis_title="score",
        legend_title="arm",
    )
    return figure
