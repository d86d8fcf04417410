"""Token views with circuitsvis, written with circuitsvis's own JavaScript inlined (no CDN).

A token view shows one prompt's read tokens for PT and IT side by side, each token coloured by
a per-position value: its commitment depth or its late-region ``kl_to_final``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from hooklab.errors import HooklabError
from hooklab.metrics import late_layers
from hooklab.summaries import commitment_layers

__all__ = ["token_values", "token_view_html", "write_token_view"]


def token_values(
    table: pd.DataFrame, prompt_id: str, condition: str, model: str, colour_by: str = "late_kl"
) -> pd.DataFrame:
    """Per read position: token id and the colouring value (``late_kl`` or ``commitment``)."""
    rows = table[
        (table["prompt_id"] == prompt_id)
        & (table["condition"] == condition)
        & (table["model"] == model)
    ]
    if rows.empty:
        raise HooklabError(
            f"no rows for prompt_id={prompt_id!r}, condition={condition!r}, model={model!r}."
        )
    n_layers = int(rows["n_layers"].iloc[0])
    if colour_by == "late_kl":
        late = rows[rows["layer"].isin(late_layers(n_layers))]
        values = late.groupby("position", observed=True)["kl_to_final"].mean()
    elif colour_by == "commitment":
        values = commitment_layers(rows).set_index("position")["commit_depth_kl<0.1"]
    else:
        raise HooklabError(f"colour_by={colour_by!r}: use 'late_kl' or 'commitment'.")
    ids = rows[rows["layer"] == 0].set_index("position")["target_id"]
    out = pd.DataFrame({"target_id": ids, "value": values}).sort_index()
    return out[out["target_id"] >= 0]


def token_view_html(
    tokenizer: Any, table: pd.DataFrame, prompt_id: str, condition: str, colour_by: str = "late_kl"
) -> str:
    """An offline HTML fragment: PT and IT token views of one prompt, one above the other."""
    import circuitsvis.tokens

    parts = []
    for model in ("pt", "it"):
        values = token_values(table, prompt_id, condition, model, colour_by)
        tokens = [tokenizer.decode([int(t)]) for t in values["target_id"]]
        rendered = circuitsvis.tokens.colored_tokens(
            tokens,
            [float(v) for v in values["value"]],
            min_value=0.0,
            max_value=max(1e-9, float(values["value"].max())),
        )
        # circuitsvis writes its mount point as "<div .../>", which HTML does not close: the
        # next view would end up inside it and be replaced when React renders. Close it.
        source = re.sub(
            r'(<div id="circuits-vis-[^"]+"[^>]*?)\s*/>', r"\1></div>", rendered.local_src, count=1
        )
        parts.append(
            f"<h3>{model.upper()}: {html.escape(prompt_id)} ({html.escape(condition)},"
            f" coloured by {colour_by})</h3>\n<div>{source}</div>"
        )
    return "\n".join(parts)


def write_token_view(
    path: str | Path,
    tokenizer: Any,
    table: pd.DataFrame,
    prompt_id: str,
    condition: str,
    colour_by: str = "late_kl",
) -> Path:
    """Write a self-contained HTML page with the token views of one prompt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = token_view_html(tokenizer, table, prompt_id, condition, colour_by)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(prompt_id)}</title></head><body>{body}</body></html>"
    )
    return path
