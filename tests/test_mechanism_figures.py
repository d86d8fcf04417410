"""Mechanism figures carry exactly the numbers of the tables they are drawn from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hooklab.errors import HooklabError
from hooklab.mechanism.delta_cosine import opposition_summary
from hooklab.mechanism.figures import (
    attention_entropy_figure,
    delta_cosine_figure,
    weight_change_figure,
)
from hooklab.mechanism.weight_change import weight_change, weight_change_pivot


def _delta_frames():
    rng = np.random.default_rng(1)
    rows = [
        {"row": r, "layer": layer, "component": c, "cosine": rng.normal(), "n_tokens": 3}
        for r in range(4)
        for layer in range(5)
        for c in ("attn", "mlp", "block")
    ]
    pt = pd.DataFrame(rows)
    it = pt.assign(cosine=pt["cosine"] - 0.1)
    return pt, it


def test_delta_cosine_figure_draws_the_summary():
    summary = opposition_summary(*_delta_frames())
    figure = delta_cosine_figure(summary)
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    assert len(lines) == 6  # 3 components x PT, IT
    per = summary.per_layer
    expected = per[(per["component"] == "attn") & (per["model"] == "pt")].sort_values("depth")
    assert np.allclose(lines[0].y, expected["mean"])
    assert "-0.100" in figure.layout.annotations[0].text
    # late layers of 5: only layer 3 (the final layer is never late), shaded 2.5 / 4 .. 3.5 / 4
    assert [s.x0 for s in figure.layout.shapes] == pytest.approx([0.625] * 3)
    assert [s.x1 for s in figure.layout.shapes] == pytest.approx([0.875] * 3)


def test_weight_change_figure_is_the_pivot(tiny_pair):
    tiny = tiny_pair("deepseek_v2")
    frame = weight_change(tiny.pt, tiny.it)
    figure = weight_change_figure(frame)
    pivot = weight_change_pivot(frame)
    assert np.allclose(np.asarray(figure.data[0].z, dtype=float), pivot.to_numpy(), equal_nan=True)
    assert "moe_routed.up" in list(figure.data[0].x)
    with pytest.raises(HooklabError, match="value="):
        weight_change_figure(frame, "norm")


def test_attention_entropy_figure_shows_it_minus_pt():
    pt = pd.DataFrame(
        {
            "row": [0, 0, 1, 1],
            "layer": [0, 0, 0, 0],
            "head": [0, 1, 0, 1],
            "entropy": [1.0, 2, 3, 4],
        }
    )
    it = pt.assign(entropy=pt["entropy"] + [0.5, 0.0, 0.5, 0.0])
    assert np.allclose(attention_entropy_figure(pt).data[0].z, [[2.0, 3.0]])
    assert np.allclose(attention_entropy_figure(pt, it).data[0].z, [[0.5, 0.0]])
