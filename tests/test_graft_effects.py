"""Graft effects on a hand-made graft table: the late region, its setting and token counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hooklab.errors import HooklabError
from hooklab.graft.effects import graft_effects

N_READ = {"a": 5, "b": 2, "c": 3}  # response tokens read per prompt


def _table(n_layers: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for mode in ("none", "module"):
        for prompt, n_read in N_READ.items():
            for layer in range(n_layers):
                rows.append(
                    {
                        "prompt_id": prompt,
                        "direction": "it-to-pt",
                        "mode": mode,
                        "part": "mlp",
                        "window": "none" if mode == "none" else "late",
                        "window_start": -1 if mode == "none" else 4,
                        "layer": layer,
                        "n_layers": n_layers,
                        "n_tokens": n_read,
                        "delta_kl_to_final": 0.0 if mode == "none" else rng.normal(),
                    }
                )
    return pd.DataFrame(rows)


def test_effects_use_the_late_region_and_count_each_response_token_once():
    table = _table(n_layers=6)  # late region: layer 4 only (depth 0.8; 0.6 is not late)
    row = graft_effects(table).iloc[0]
    assert row.n_tokens == sum(N_READ.values()) == 10 and row.n_prompts == 3
    assert row.late_layers == "4" and row.late_start_depth == 0.75 and row.region == "late"
    grafted = table[(table["mode"] == "module") & (table.layer == 4)]
    assert row["mean"] == pytest.approx(grafted.delta_kl_to_final.mean(), rel=1e-12)
    wider = graft_effects(table, late_start_depth=0.5).iloc[0]
    assert wider.late_layers == "3-4" and wider.n_tokens == 10
    per_prompt = (
        table[(table["mode"] == "module") & table.layer.isin([3, 4])]
        .groupby("prompt_id")
        .delta_kl_to_final.mean()
    )
    assert wider["mean"] == pytest.approx(per_prompt.mean(), rel=1e-12)


def test_effects_refuse_token_counts_that_vary_by_layer():
    table = _table(n_layers=6)
    table.loc[table.layer == 4, "n_tokens"] += 1
    table.loc[table.layer == 3, "n_tokens"] += 2
    with pytest.raises(HooklabError, match="n_tokens differs between layers"):
        graft_effects(table, late_start_depth=0.5)
