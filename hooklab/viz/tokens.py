"""Token views with circuitsvis, written with circuitsvis's own JavaScript inlined (no CDN).

A token view shows one prompt's read tokens for PT and IT side by side, each token coloured by
a per-position value (its commitment depth or its late-region ``kl_to_final``), and, given the
sequence, the top-k predictions of every layer at each position.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from hooklab.errors import HooklabError
from hooklab.metrics import late_layers
from hooklab.summaries import commitment_layers
from hooklab.types import Bridge

__all__ = [
    "token_values",
    "layer_topk",
    "token_view_html",
    "write_token_view",
    "safe_filename",
    "json_for_html",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# What JSON may hold but a <script> element or an HTML parser must not see raw.
_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def safe_filename(text: str, index: int) -> str:
    """A file stem for ``text`` (e.g. a prompt id) that cannot leave its folder.

    The stem is ``{index:03d}-{slug}``: the slug keeps ``[A-Za-z0-9._-]`` (runs of anything
    else become ``-``; runs of dots become one dot; no leading dot or dash) and, when it is
    not ``text`` itself, gets an 8-hex SHA-256 of ``text`` appended, so distinct texts give
    distinct stems. Never empty, never ``..``, never a ``/``.
    """
    text = str(text)
    slug = re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", text)).strip(".-")[:64].rstrip(".-")
    if slug != text:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        slug = f"{slug}-{digest}" if slug else digest
    return f"{int(index):03d}-{slug}"


def json_for_html(value: Any) -> str:
    """``json.dumps(value)`` that is safe inside a ``<script>`` element or an HTML attribute.

    ``<``, ``>``, ``&``, U+2028 and U+2029 are written as ``\\uXXXX`` escapes, which JSON and
    JavaScript read back as the same characters, so no string can close the script element.
    """
    text = json.dumps(value)
    for raw, escaped in _SCRIPT_ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def _circuitsvis_html(element: str, props: dict[str, Any]) -> str:
    """circuitsvis's ``render_local`` with the props escaped for HTML (circuitsvis writes them
    with a plain ``json.dumps``, so a token ``</script>`` would end its script element)."""
    import circuitsvis

    bundle = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    inline_js = bundle.read_text(encoding="utf-8").replace("</script>", "")  # as circuitsvis
    mount = f"circuits-vis-{uuid.uuid4().hex[:13]}"
    return (
        f'<div id="{mount}" style="margin: 15px 0;"></div>\n'
        f'<script crossorigin type="module">\n{inline_js}\n'
        f'CircuitsVis.render("{mount}", CircuitsVis.{element}, {json_for_html(props)})\n'
        "</script>"
    )


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
    model: Bridge, tokens: Sequence[int], positions: Sequence[int], lens: Any = None, k: int = 3
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
    parts = []
    for model in ("pt", "it"):
        values = token_values(table, prompt_id, condition, model, colour_by)
        # circuitsvis puts each token into the page as HTML (innerHTML): give it escaped text
        strip = [html.escape(tokenizer.decode([int(t)])) for t in values["target_id"]]
        source = _circuitsvis_html(
            "ColoredTokens",
            {
                "tokens": strip,
                "values": [float(v) for v in values["value"]],
                "minValue": 0.0,
                "maxValue": max(1e-9, float(values["value"].max())),
            },
        )
        parts.append(
            f"<h3>{model.upper()}: {html.escape(str(prompt_id))} ({html.escape(condition)},"
            f" coloured by {html.escape(colour_by)})</h3>\n<div>{source}</div>"
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
    folder: str | Path | None = None,
) -> Path:
    """Write a self-contained HTML page with the token views of one prompt.

    Name the file with :func:`safe_filename`, never with the raw prompt id. A ``path`` with a
    ``..`` part, or (given ``folder``) one that does not resolve inside ``folder``, is refused.
    """
    path = Path(path)
    if ".." in path.parts or (
        folder is not None and not path.resolve().is_relative_to(Path(folder).resolve())
    ):
        inside = f" inside folder={str(folder)!r}" if folder is not None else ""
        raise HooklabError(
            f"path={str(path)!r} for the token view of prompt_id={prompt_id!r} must be a file"
            f"{inside} without '..' parts; name it with "
            "hooklab.viz.tokens.safe_filename(prompt_id, index)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    body = token_view_html(
        tokenizer, table, prompt_id, condition, colour_by, pair=pair, tokens=tokens
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(str(prompt_id))}</title></head><body>{body}</body></html>"
    )
    return path
