"""Delta-cosine profiles: does each sublayer's update add to, or oppose, the residual stream?

For every layer and token, the cosine between an update and the residual it is added to:

==========  =====================================  ===================
component   update                                 residual
==========  =====================================  ===================
``attn``    ``hook_attn_out``                      ``hook_resid_pre``
``mlp``     ``hook_mlp_out``                       ``hook_resid_mid``
``block``   ``hook_resid_post - hook_resid_pre``   ``hook_resid_pre``
==========  =====================================  ===================

The pass is streamed: each layer's tensors are reduced to per-row means as soon as the layer
ends, and the pass stops after the last block (no unembedding). An update built as ``-h``
has cosine -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int

from hooklab import hooks
from hooklab.architectures import model_device
from hooklab.errors import HooklabError
from hooklab.forward import HookFn
from hooklab.metrics import LATE_START_DEPTH, late_layers, layers_label
from hooklab.stats import bootstrap_mean_ci, in_prompt_order, sign_flip_test
from hooklab.types import Bridge

__all__ = ["COMPONENTS", "OppositionSummary", "delta_cosines", "opposition_summary"]

COMPONENTS: tuple[str, ...] = ("attn", "mlp", "block")
_EPS = 1e-12


class _Stop(Exception):
    """Raised after the last block's capture to end the pass."""


def _masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """[batch, pos] -> [batch]: mean over the masked positions (NaN where none)."""
    counts = mask.sum(1)
    total = (values * mask).sum(1)
    return (total / counts.clamp_min(1)).where(counts > 0, torch.nan).cpu().numpy()


def _cosine(update: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_model] x2 -> [batch, pos] cosine, in float32."""
    update, resid = update.float(), resid.float()
    dot = (update * resid).sum(-1)
    return dot / (update.norm(dim=-1) * resid.norm(dim=-1)).clamp_min(_EPS)


def _norm_ratio(update: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    return update.float().norm(dim=-1) / resid.float().norm(dim=-1).clamp_min(_EPS)


def delta_cosines(
    model: Bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Bool[torch.Tensor, "batch pos"],
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    row_ids: Sequence[Any] | None = None,
    fwd_hooks: Sequence[HookFn] = (),
) -> pd.DataFrame:
    """Per-row delta-cosine profile of every layer and component.

    Args:
        model: a TransformerBridge.
        tokens: [batch, pos] ids (right-padded).
        mask: [batch, pos] the positions to average over (e.g. a history's response).
        attention_mask: [batch, pos] 1 on real tokens, for padded batches.
        row_ids: a label per row (default 0..batch-1), written to the ``row`` column.
        fwd_hooks: extra hooks active during the pass; they run before the capture.

    Returns:
        One row per (row, layer, component): ``row``, ``layer``, ``depth`` = layer / (L - 1),
        ``component``, ``cosine`` (mean over the masked positions), ``norm_ratio`` (mean
        |update| / |residual|) and ``n_tokens``.
    """
    if mask.shape != tokens.shape:
        raise HooklabError(
            f"mask has shape {tuple(mask.shape)} but tokens {tuple(tokens.shape)}; pass a "
            "[batch, pos] mask of the positions to average over."
        )
    n_layers = int(model.cfg.n_layers)
    batch = tokens.shape[0]
    row_ids = list(range(batch)) if row_ids is None else list(row_ids)
    if len(row_ids) != batch:
        raise HooklabError(f"row_ids has {len(row_ids)} labels for a batch of {batch} rows.")
    device = model_device(model)
    mask_f = mask.to(device=device, dtype=torch.float32)
    cosines = np.full((n_layers, len(COMPONENTS), batch), np.nan)
    ratios = np.full_like(cosines, np.nan)
    current: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def hook(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
            current[key] = activation.detach()

        return hook

    def finish(layer: int):
        def hook(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
            pre, mid = current.pop("pre"), current.pop("mid")
            pairs = (
                (current.pop("attn"), pre),
                (current.pop("mlp"), mid),
                (activation.detach() - pre, pre),
            )
            for index, (update, resid) in enumerate(pairs):
                cosines[layer, index] = _masked_row_mean(_cosine(update, resid), mask_f)
                ratios[layer, index] = _masked_row_mean(_norm_ratio(update, resid), mask_f)
            if layer == n_layers - 1:
                raise _Stop

        return hook

    capture: list[HookFn] = []
    for layer in range(n_layers):
        capture += [
            (hooks.resid_pre(layer), keep("pre")),
            (hooks.attn_out(layer), keep("attn")),
            (hooks.resid_mid(layer), keep("mid")),
            (hooks.mlp_out(layer), keep("mlp")),
            (hooks.resid_post(layer), finish(layer)),
        ]
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
    if np.isnan(cosines).all(axis=(1, 2)).any():
        raise RuntimeError("the delta-cosine hooks did not fire for every layer")
    n_tokens = mask.sum(1).cpu().numpy()
    layer_grid, component_grid, row_grid = np.meshgrid(
        np.arange(n_layers), np.arange(len(COMPONENTS)), np.arange(batch), indexing="ij"
    )
    return pd.DataFrame(
        {
            "row": np.asarray(row_ids, dtype=object)[row_grid.ravel()],
            "layer": layer_grid.ravel(),
            "depth": layer_grid.ravel() / max(n_layers - 1, 1),
            "component": np.asarray(COMPONENTS)[component_grid.ravel()],
            "cosine": cosines.ravel(),
            "norm_ratio": ratios.ravel(),
            "n_tokens": n_tokens[row_grid.ravel()],
        }
    )


@dataclass(frozen=True)
class OppositionSummary:
    """PT vs IT delta-cosine profiles and their late-region difference.

    Attributes:
        per_layer: one row per (model, component, layer): ``mean``, ``ci_low``, ``ci_high``,
            ``sem``, ``n_prompts``, ``depth``.
        late: per component, IT - PT of each prompt's mean over ``late_layers``: ``mean``
            with a paired bootstrap CI, ``sem``, ``n_prompts``, ``p_sign_flip``.
        late_layers: the exact layers of the late region.
    """

    per_layer: pd.DataFrame
    late: pd.DataFrame
    late_layers: tuple[int, ...]


def _ci_row(values: np.ndarray, seed: int) -> dict[str, float]:
    ci = bootstrap_mean_ci(values, seed=seed)
    return {"mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "sem": ci.sem, "n_prompts": ci.n}


def opposition_summary(
    frame_pt: pd.DataFrame,
    frame_it: pd.DataFrame,
    late_start_depth: float = LATE_START_DEPTH,
    *,
    value: str = "cosine",
    seed: int = 0,
) -> OppositionSummary:
    """PT vs IT delta-cosine profiles with bootstrap CIs over prompts, and the late difference.

    Args:
        frame_pt, frame_it: :func:`delta_cosines` rows of the two models on the same histories
            (the same ``row`` labels).
        late_start_depth: the late region is :func:`hooklab.metrics.late_layers` of it (depth
            >= this, the final layer left out).
        value: the column summarised (``cosine`` or ``norm_ratio``).

    Returns:
        An :class:`OppositionSummary`; its ``late`` table also names the ``late_layers``.
    """
    layers = sorted(set(frame_pt["layer"]))
    if layers != sorted(set(frame_it["layer"])):
        raise HooklabError("frame_pt and frame_it have different layers; pass one pair's frames.")
    if set(frame_pt["row"]) != set(frame_it["row"]):
        raise HooklabError(
            "frame_pt and frame_it have different rows; the late difference is paired by "
            "prompt, so run both models on the same histories with the same row_ids."
        )
    per_layer = []
    for model, frame in (("pt", frame_pt), ("it", frame_it)):
        frame = in_prompt_order(frame, "row")  # bootstrap in prompt-id order
        for (component, layer), rows in frame.groupby(["component", "layer"], sort=False):
            per_layer.append(
                {"model": model, "component": component, "layer": layer}
                | _ci_row(rows[value].to_numpy(), seed)
            )
    late_set = tuple(late_layers(len(layers), late_start_depth))
    late = []
    for component in dict.fromkeys(frame_pt["component"]):
        means = []
        for frame in (frame_pt, frame_it):
            rows = frame[(frame["component"] == component) & frame["layer"].isin(late_set)]
            means.append(rows.groupby("row")[value].mean())  # sorted by prompt id
        difference = (means[1] - means[0].reindex(means[1].index)).to_numpy()
        late.append(
            {"component": component}
            | _ci_row(difference, seed)
            | {
                "p_sign_flip": sign_flip_test(difference, seed=seed),
                "late_layers": layers_label(late_set),
            }
        )
    per_layer_frame = pd.DataFrame(per_layer)
    per_layer_frame["depth"] = per_layer_frame["layer"] / max(len(layers) - 1, 1)
    return OppositionSummary(per_layer_frame, pd.DataFrame(late), late_set)
