"""Forward passes that keep only the residual stream, stop before the unembedding, and resume.

A plain forward pass of a 262k-vocabulary model materialises [batch, pos, d_vocab] logits that
a lens readout never uses; here the pass is cut right after the last block's
``hook_resid_post``, so neither the final norm nor the unembedding run.

A pass can also keep what the model handed each block besides the residual (position
embeddings, attention masks): :func:`resume_residual_stream` then reruns only the blocks from
a given layer on, from that layer's cached input. TransformerBridge's own ``start_at_layer``
still executes the earlier blocks (and discards them), so a window sweep would gain nothing
from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from hooklab import hooks
from hooklab.architectures import model_device
from hooklab.types import Bridge

__all__ = ["HookFn", "BlockInputs", "ResidualStream", "residual_stream", "resume_residual_stream"]

HookFn = tuple[str, Callable[..., Any]]


class _StopForward(Exception):
    """Raised from the last capture hook to end the forward pass early."""


@dataclass(frozen=True)
class BlockInputs:
    """Everything each block received on one pass except the residual stream itself."""

    args: tuple[tuple[Any, ...], ...]
    kwargs: tuple[dict[str, Any], ...]
    hidden_states_in_kwargs: tuple[bool, ...]


@dataclass(frozen=True)
class ResidualStream:
    """The residual stream of one forward pass.

    Attributes:
        resid_post: [layer, batch, pos, d_model] every block's ``hook_resid_post``.
        embed: [batch, pos, d_model] the input of block 0 (``blocks.0.hook_resid_pre``).
        block_inputs: the other inputs of every block, when the pass kept them.
    """

    resid_post: Float[torch.Tensor, "layer batch pos d_model"]
    embed: Float[torch.Tensor, "batch pos d_model"]
    block_inputs: BlockInputs | None = None

    def resid_pre(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """The input of block ``layer``."""
        return self.embed if layer == 0 else self.resid_post[layer - 1]


def _capture_hooks(n_layers: int, captured: list, stop_at_last: bool) -> list[HookFn]:
    def capture(index: int, stop: bool) -> Callable[..., Any]:
        def hook(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
            captured[index] = activation.detach()
            if stop:
                raise _StopForward

        return hook

    out = [(hooks.resid_pre(0), capture(n_layers, stop=False))]
    out += [
        (hooks.resid_post(layer), capture(layer, stop=stop_at_last and layer == n_layers - 1))
        for layer in range(n_layers)
    ]
    return out


def residual_stream(
    model: Bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    fwd_hooks: Sequence[HookFn] = (),
    keep_block_inputs: bool = False,
) -> ResidualStream:
    """Every block's ``hook_resid_post`` for ``tokens``, in the model dtype.

    Args:
        model: a TransformerBridge.
        tokens: [batch, pos] ids; ragged batches are right-padded.
        attention_mask: [batch, pos] 1 for real tokens, 0 for padding (right padding only).
        fwd_hooks: extra ``(hook_name, fn)`` hooks active during the pass (e.g. a graft); they
            see and may edit the stream before it is captured.
        keep_block_inputs: also keep each block's other inputs, for
            :func:`resume_residual_stream`.
    """
    n_layers = int(model.cfg.n_layers)
    device = model_device(model)
    tokens = tokens.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    captured: list[torch.Tensor | None] = [None] * (n_layers + 1)
    handles = []
    inputs: list[tuple[tuple, dict, bool] | None] = [None] * n_layers
    if keep_block_inputs:
        for layer, block in enumerate(model.blocks):

            def keep(module, args, kwargs, layer=layer):  # noqa: ARG001
                in_kwargs = not args
                rest = args[1:] if args else ()
                kept = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                inputs[layer] = (rest, kept, in_kwargs)

            handles.append(block.register_forward_pre_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad():
            try:
                with model.hooks(fwd_hooks=[*fwd_hooks, *_capture_hooks(n_layers, captured, True)]):
                    model(tokens, attention_mask=attention_mask, return_type=None, use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer for layer, value in enumerate(captured[:n_layers]) if value is None]
    if missing or captured[n_layers] is None:
        raise RuntimeError(f"the residual-stream hooks did not fire for layers {missing}")
    block_inputs = None
    if keep_block_inputs:
        block_inputs = BlockInputs(
            args=tuple(i[0] for i in inputs),  # type: ignore[index]
            kwargs=tuple(i[1] for i in inputs),  # type: ignore[index]
            hidden_states_in_kwargs=tuple(i[2] for i in inputs),  # type: ignore[index]
        )
    stacked = torch.stack([c for c in captured[:n_layers] if c is not None])
    embed = captured[n_layers]
    assert embed is not None
    return ResidualStream(stacked, embed, block_inputs)


def resume_residual_stream(
    model: Bridge,
    stream: ResidualStream,
    start_layer: int,
    *,
    fwd_hooks: Sequence[HookFn] = (),
) -> ResidualStream:
    """Rerun blocks ``start_layer..L-1`` from ``stream``'s input to ``start_layer``.

    Layers before ``start_layer`` are taken from ``stream`` unchanged; the rest are recomputed
    with ``fwd_hooks`` active, exactly as a full pass with the same hooks would compute them
    (hooks that touch only layers >= ``start_layer``). ``stream`` must have been made with
    ``keep_block_inputs=True`` on the same tokens.
    """
    if stream.block_inputs is None:
        raise ValueError("resume_residual_stream needs a stream made with keep_block_inputs=True")
    n_layers = int(model.cfg.n_layers)
    if not 0 <= start_layer < n_layers:
        raise ValueError(f"start_layer={start_layer} must be in 0..{n_layers - 1}")
    captured: list[torch.Tensor | None] = [None] * (n_layers + 1)
    x = stream.resid_pre(start_layer)
    inputs = stream.block_inputs
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=[*fwd_hooks, *_capture_hooks(n_layers, captured, False)[1:]]),
    ):
        for layer in range(start_layer, n_layers):
            block = model.blocks[layer]
            if inputs.hidden_states_in_kwargs[layer]:
                out = block(hidden_states=x, **inputs.kwargs[layer])
            else:
                out = block(x, *inputs.args[layer], **inputs.kwargs[layer])
            x = out[0] if isinstance(out, tuple) else out
    resid_post = stream.resid_post.clone()
    for layer in range(start_layer, n_layers):
        resid_post[layer] = captured[layer]  # type: ignore[assignment]  # filled above
    return ResidualStream(resid_post, stream.embed, stream.block_inputs)
