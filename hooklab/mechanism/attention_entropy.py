"""Per-head attention entropy on shared histories, PT vs IT.

Every layer's ``attn.hook_pattern`` ([batch, head, query, key], one distribution per query
head: grouped-query attention shares keys, not patterns; Gemma 3's sliding-window layers have
zeros outside the window; multi-head latent attention has one pattern per head) is reduced at
once to each row's mean entropy over the masked query positions, with
:func:`hooklab.attention.pattern_entropy`. No pattern outlives its layer, and the pass stops
after the last layer's attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int

from hooklab import hooks
from hooklab.architectures import model_device
from hooklab.attention import pattern_entropy
from hooklab.errors import HooklabError
from hooklab.forward import HookFn
from hooklab.stats import bootstrap_mean_ci, sign_flip_test
from hooklab.types import Bridge

__all__ = ["attention_entropies", "entropy_difference"]


class _Stop(Exception):
    """Raised after the last layer's pattern to end the pass."""


def attention_entropies(
    model: Bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Bool[torch.Tensor, "batch pos"],
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    row_ids: Sequence[Any] | None = None,
    fwd_hooks: Sequence[HookFn] = (),
) -> pd.DataFrame:
    """Mean attention entropy (nats) of every layer and head, per row.

    Args:
        model: a TransformerBridge.
        tokens: [batch, pos] ids (right-padded).
        mask: [batch, pos] the query positions to average over.
        attention_mask: [batch, pos] 1 on real tokens, for padded batches.
        row_ids: a label per row (default 0..batch-1), written to the ``row`` column.
        fwd_hooks: extra hooks active during the pass.

    Returns:
        One row per (row, layer, head): ``row``, ``layer``, ``depth``, ``head``, ``entropy``
        (mean over the masked queries) and ``n_tokens``.
    """
    if mask.shape != tokens.shape:
        raise HooklabError(
            f"mask has shape {tuple(mask.shape)} but tokens {tuple(tokens.shape)}; pass a "
            "[batch, pos] mask of the query positions to average over."
        )
    n_layers = int(model.cfg.n_layers)
    batch = tokens.shape[0]
    row_ids = list(range(batch)) if row_ids is None else list(row_ids)
    if len(row_ids) != batch:
        raise HooklabError(f"row_ids has {len(row_ids)} labels for a batch of {batch} rows.")
    device = model_device(model)
    mask_d = mask.to(device=device, dtype=torch.float64).unsqueeze(1)  # [batch, 1, query]
    counts = mask_d.sum(-1)
    per_layer: list[np.ndarray | None] = [None] * n_layers

    def reduce(layer: int):
        def hook(pattern: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
            entropy = pattern_entropy(pattern.detach())  # [batch, head, query]
            mean = (entropy * mask_d).sum(-1) / counts.clamp_min(1)
            per_layer[layer] = mean.where(counts > 0, torch.nan).cpu().numpy()
            if layer == n_layers - 1:
                raise _Stop

        return hook

    capture = [(hooks.attn_pattern(layer), reduce(layer)) for layer in range(n_layers)]
    with torch.no_grad():
        try:
            with model.hooks(fwd_hooks=[*fwd_hooks, *capture]):
                model(
                    tokens.to(device),
                    attention_mask=None if attention_mask is None else attention_mask.to(device),
                    return_type=None,
                    use_cache=False,
                )
        except _Stop:
            pass
    missing = [layer for layer, value in enumerate(per_layer) if value is None]
    if missing:
        raise RuntimeError(f"the attention-pattern hooks did not fire for layers {missing}")
    entropies = np.stack([e for e in per_layer if e is not None])  # [layer, batch, head]
    n_heads = entropies.shape[-1]
    layer_grid, row_grid, head_grid = np.meshgrid(
        np.arange(n_layers), np.arange(batch), np.arange(n_heads), indexing="ij"
    )
    n_tokens = mask.sum(1).cpu().numpy()
    return pd.DataFrame(
        {
            "row": np.asarray(row_ids, dtype=object)[row_grid.ravel()],
            "layer": layer_grid.ravel(),
            "depth": layer_grid.ravel() / max(n_layers - 1, 1),
            "head": head_grid.ravel(),
            "entropy": entropies.ravel(),
            "n_tokens": n_tokens[row_grid.ravel()],
        }
    )


def entropy_difference(
    frame_pt: pd.DataFrame, frame_it: pd.DataFrame, *, by_head: bool = False, seed: int = 0
) -> pd.DataFrame:
    """IT - PT attention entropy per layer (or per layer and head), with CIs over prompts.

    Each prompt's entropy is first averaged over heads (unless ``by_head``); the difference is
    paired by ``row``. Columns: ``layer`` (``head``), ``depth``, ``mean_pt``, ``mean_it``,
    ``mean`` (IT - PT) with ``ci_low``, ``ci_high``, ``sem``, ``p_sign_flip``, ``n_prompts``.
    """
    if set(frame_pt["row"]) != set(frame_it["row"]):
        raise HooklabError(
            "frame_pt and frame_it have different rows; the difference is paired by prompt, "
            "so run both models on the same histories with the same row_ids."
        )
    keys = ["layer", "head"] if by_head else ["layer"]
    pt = frame_pt.groupby([*keys, "row"])["entropy"].mean()
    it = frame_it.groupby([*keys, "row"])["entropy"].mean()
    if not pt.index.sort_values().equals(it.index.sort_values()):
        raise HooklabError("frame_pt and frame_it have different layers or heads.")
    difference = (it - pt.reindex(it.index)).rename("difference")
    n_layers = int(frame_pt["layer"].max()) + 1
    out = []
    for key, values in difference.groupby(level=keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ci = bootstrap_mean_ci(values.to_numpy(), seed=seed)
        layer = int(key[0])
        out.append(
            dict(zip(keys, key, strict=True))
            | {
                "depth": layer / max(n_layers - 1, 1),
                "mean_pt": float(pt.xs(key, level=keys).mean()),
                "mean_it": float(it.xs(key, level=keys).mean()),
                "mean": ci.mean,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "sem": ci.sem,
                "p_sign_flip": sign_flip_test(values.to_numpy(), seed=seed),
                "n_prompts": ci.n,
            }
        )
    return pd.DataFrame(out)
