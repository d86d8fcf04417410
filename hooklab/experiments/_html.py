"""Small HTML helpers for report sections (every value escaped)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

__all__ = ["csv_table", "heading"]


def heading(text: str, level: int = 3) -> str:
    return f"<h{level}>{html.escape(text)}</h{level}>"


def csv_table(
    path: Path,
    columns: Sequence[str],
    query: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> str:
    """The chosen columns of a CSV as an HTML table (pandas escapes the cells)."""
    frame = pd.read_csv(path)
    if query is not None:
        frame = query(frame)
    return frame[[c for c in columns if c in frame.columns]].to_html(
        index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="summary", escape=True
    )
