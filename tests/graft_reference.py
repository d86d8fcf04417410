"""The naive graft sweep: the reference the optimised :func:`hooklab.graft.sweep.run_graft`
must equal, and the baseline ``benchmarks/graft_sweep.py`` times.

It does what a one-off script does per window: one donor pass for splice's MLP outputs, one
full module pass for a random control's norms, one full host pass with the graft hooks, and a
readout of that stream alone. Only the table layout (:func:`~hooklab.graft.sweep.prompt_means`,
:func:`~hooklab.graft.sweep.condition_rows`) is shared with the optimised sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hooklab.architectures import model_device
from hooklab.conditions import pad_batch
from hooklab.forward import residual_stream
from hooklab.graft.engine import DIRECTIONS, graft_hooks, mlp_out_hooks, module_change_norms
from hooklab.graft.histories import History
from hooklab.graft.sweep import (
    GraftConfig,
    _Condition,
    _Direction,
    condition_rows,
    finish_table,
    prompt_means,
)
from hooklab.graft.windows import parse_windows
from hooklab.lens import Lens
from hooklab.metrics import Workspace
from hooklab.stream import read_residuals

__all__ = ["naive_graft"]


def _stream(pair: Any, tokens, mask, direction: _Direction, condition, config, keys):
    models = pair.models()
    host, donor = models[direction.host], models[direction.donor]
    layers = condition.window.layers
    donor_out: dict = {}
    if condition.mode == "splice":
        residual_stream(
            donor, tokens, attention_mask=mask, fwd_hooks=mlp_out_hooks(pair.n_layers, donor_out)
        )
    norms = None
    if condition.mode == "random":
        norms = module_change_norms(
            host,
            donor,
            tokens,
            layers,
            attention_mask=mask,
            part=condition.part,
            router=config.router,
        )
    hooks_ = graft_hooks(
        host,
        donor,
        layers,
        condition.mode,
        donor_mlp_out=donor_out,
        module_norms=norms,
        row_keys=keys,
        seed=config.seed,
        part=condition.part,
        router=config.router,
    )
    return residual_stream(host, tokens, attention_mask=mask, fwd_hooks=hooks_)


def naive_graft(
    pair: Any,
    histories: Sequence[History],
    config: GraftConfig,
    *,
    lenses: dict[str, Lens],
    categories: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The graft table of :func:`~hooklab.graft.sweep.run_graft`, every window on its own."""
    windows = parse_windows(config.windows, pair.n_layers)
    conditions = [_Condition(m, p, w) for m in config.modes for p in config.parts for w in windows]
    device = model_device(pair.pt)
    workspace = Workspace.plan(
        pair.d_vocab,
        pair.n_layers,
        device,
        max_rows=config.batch_size * max(len(h.tokens) for h in histories),
    )
    pad = pair.tokenizer.pad_token_id
    rows: list[pd.DataFrame] = []
    for start in range(0, len(histories), config.batch_size):
        batch = histories[start : start + config.batch_size]
        keys = [h.prompt_id for h in batch]
        tokens, mask, read, targets = pad_batch(batch, 0 if pad is None else int(pad))
        tokens, mask = tokens.to(device), mask.to(device)
        teacher = (pair.it, residual_stream(pair.it, tokens, attention_mask=mask).resid_post[-1])

        def values(side: str, stream, read=read, targets=targets, teacher=teacher):
            readout = read_residuals(
                pair.models()[side],
                stream.resid_post,
                read,
                lenses[side],
                targets=targets,
                teacher=teacher,
                workspace=workspace,
                metrics=config.metrics,
            )
            return prompt_means(readout)

        for name in config.directions:
            direction = _Direction(name, *DIRECTIONS[name])
            host = pair.models()[direction.host]
            baseline = values(direction.host, residual_stream(host, tokens, attention_mask=mask))
            rows.append(condition_rows(keys, direction, None, baseline, baseline))
            for condition in conditions:
                stream = _stream(pair, tokens, mask, direction, condition, config, keys)
                rows.append(
                    condition_rows(
                        keys, direction, condition, values(direction.host, stream), baseline
                    )
                )
    return finish_table(rows, categories)


def max_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest absolute difference between the numeric columns of two graft tables."""
    numbers = a.select_dtypes("number").columns
    assert list(a.columns) == list(b.columns)
    return float(np.nanmax(np.abs((a[numbers] - b[numbers]).to_numpy(dtype=np.float64))))
