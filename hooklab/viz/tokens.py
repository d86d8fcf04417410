"""Token views with circuitsvis, written with circuitsvis's own JavaScript inlined (no CDN).

A token view shows one prompt's read tokens for PT and IT side by side, each token coloured by
a per-position value (its commitment depth or its late-region ``kl_to_final``), and, given the
sequence, the top-k predictions of every layer at each position.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from hooklab.errors import HooklabError
from hooklab.metrics import late_layers
from hooklab.summaries import commitment_layers

__all__ = ["token_values", "layer_topk", "token_view_html", "write_token_view"]


def token_values(
    table: pd.DataFrame, prompt_id: str, condition: str, model: str, colour_by: str = "late_kl"
) -> pd.DataFrame:
    """Per read position: target token id and the colouring value (``late_kl`` or
    ``commitment``)."""
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


def layer_topk(
    model: Any, tokens: Sequence[int], positions: Sequence[int], lens: Any = None, k: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` predicted tokens and probabilities of every layer at ``positions``.

    Returns ``(ids, probs)``, each [position, layer, k], decoded through ``lens`` (default the
    logit lens) from one forward pass on ``tokens``.
    """
    from hooklab.forward import residual_stream
    from hooklab.lens import LogitLens, lens_logits

    lens = lens or LogitLens()
    stream = residual_stream(model, torch.tensor([list(tokens)]))
    rows = stream.resid_post[:, 0, list(positions)]  # [layer, position, d_model]
    ids, probs = [], []
    with torch.no_grad():
        for layer in range(rows.shape[0]):
            logprobs = torch.log_softmax(lens_logits(model, lens, layer, rows[layer]).float(), -1)
            top = logprobs.topk(k, dim=-1)
            ids.append(top.indices)
            probs.append(top.values.exp())
    return torch.stack(ids, dim=1).cpu(), torch.stack(probs, dim=1).cpu()


def _text(tokenizer: Any, token: int) -> str:
    return html.escape(repr(tokenizer.decode([int(token)]))[1:-1])


def _topk_table(
    tokenizer: Any,
    tokens: Sequence[int],
    positions: Sequence[int],
    ids: torch.Tensor,
    probs: torch.Tensor,
) -> str:
    header = "".join(f"<th>L{layer}</th>" for layer in range(ids.shape[1]))
    rows = []
    for row, position in enumerate(positions):
        cells = []
        for layer in range(ids.shape[1]):
            entries = "<br>".join(
                f"{_text(tokenizer, t)} {float(p):.2f}"
                for t, p in zip(ids[row, layer], probs[row, layer], strict=True)
            )
            shade = int(255 - 120 * float(probs[row, layer, 0]))
            cells.append(
                f"<td style='background:rgb({shade},{shade},255);padding:2px 6px'>{entries}</td>"
            )
        rows.append(
            f"<tr><th>{position}: {_text(tokenizer, tokens[position])}</th>{''.join(cells)}</tr>"
        )
    return (
        f"<table class='topk' style='border-collapse:collapse;font-size:12px'>"
        f"<tr><th>position: input</th>{header}</tr>{''.join(rows)}</table>"
    )


def token_view_html(
    tokenizer: Any,
    table: pd.DataFrame,
    prompt_id: str,
    condition: str,
    colour_by: str = "late_kl",
    *,
    pair: Any = None,
    tokens: Sequence[int] | None = None,
    k: int = 3,
) -> str:
    """An offline HTML fragment: PT and IT token views of one prompt, one above the other.

    With ``pair`` and the sequence's ``tokens`` (the shared history of a ``same_history`` or
    graft run), each view also shows the top-``k`` predictions of every layer (logit lens) at
    each read position.
    """
    import circuitsvis.tokens

    parts = []
    for model in ("pt", "it"):
        values = token_values(table, prompt_id, condition, model, colour_by)
        strip = [tokenizer.decode([int(t)]) for t in values["target_id"]]
        rendered = circuitsvis.tokens.colored_tokens(
            strip,
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
        if pair is not None and tokens is not None:
            positions = [int(p) for p in values.index]
            ids, probs = layer_topk(pair.models()[model], tokens, positions, k=k)
            parts.append(
                f"<p>top-{k} predictions of each layer (logit lens), by position "
                "(the token shown is the input there):</p>"
                + _topk_table(tokenizer, tokens, positions, ids, probs)
            )
    return "\n".join(parts)


def write_token_view(
    path: str | Path,
    tokenizer: Any,
    table: pd.DataFrame,
    prompt_id: str,
    condition: str,
    colour_by: str = "late_kl",
    *,
    pair: Any = None,
    tokens: Sequence[int] | None = None,
) -> Path:
    """Write a self-contained HTML page with the token views of one prompt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = token_view_html(
        tokenizer, table, prompt_id, condition, colour_by, pair=pair, tokens=tokens
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(prompt_id)}</title></head><body>{body}</body></html>"
    )
    return path


def safe_filename(text: str, index: int, suffix: str = "") -> str:
    """A file name for ``text`` (e.g. a prompt id) that stays in its folder: the index, then
    a slug of ``[A-Za-z0-9._-]`` (never ``..`` or a separator), then ``suffix``."""
    import re

    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "item"
    return f"{index:03d}-{slug}{suffix}"
