"""Forward passes that keep only the residual stream, and stop before the unembedding.

A plain forward pass of a 262k-vocabulary model materialises [batch, pos, d_vocab] logits that
a lens readout never uses; here the pass is cut right after the last block's
``hook_resid_post``, so neither the final norm nor the unembedding run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int

from hooklab import hooks

__all__ = ["HookFn", "residual_stream"]

HookFn = tuple[str, Callable[..., Any]]


class _StopForward(Exception):
    """Raised from the last capture hook to end the forward pass early."""


def residual_stream(
    model: Any,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    fwd_hooks: Sequence[HookFn] = (),
) -> Float[torch.Tensor, "layer batch pos d_model"]:
    """Every block's ``hook_resid_post`` for ``tokens``, in the model dtype.

    Args:
        model: a TransformerBridge.
        tokens: [batch, pos] ids; ragged batches are right-padded.
        attention_mask: [batch, pos] 1 for real tokens, 0 for padding (right padding only).
        fwd_hooks: extra ``(hook_name, fn)`` hooks active during the pass (e.g. a graft); they
            see and may edit the stream before it is captured.
    """
    n_layers = int(model.cfg.n_layers)
    captured: list[torch.Tensor | None] = [None] * n_layers

    def capture(layer: int, stop: bool) -> Callable[..., Any]:
        def hook(activation: torch.Tensor, hook: Any) -> None:
            captured[layer] = activation.detach()
            if stop:
                raise _StopForward

        return hook

    capture_hooks = [
        (hooks.resid_post(layer), capture(layer, stop=layer == n_layers - 1))
        for layer in range(n_layers)
    ]
    with torch.no_grad():
        try:
            with model.hooks(fwd_hooks=[*fwd_hooks, *capture_hooks]):
                model(tokens, attention_mask=attention_mask, return_type=None)
        except _StopForward:
            pass
    missing = [layer for layer, value in enumerate(captured) if value is None]
    if missing:
        raise RuntimeError(f"hook_resid_post did not fire for layers {missing}")
    return torch.stack(captured)  # type: ignore[arg-type]
