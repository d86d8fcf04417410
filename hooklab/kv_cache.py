"""Where the bridge meets the model: the KV cache reaches every attention, whatever it is called.

Part of hooklab's adapter layer. A TransformerBridge puts its own attention components in
place of the Hugging Face ones, inside the Hugging Face model. Cached decoding is right only
if the KV cache that the Hugging Face decoder layer hands its attention reaches the
component that updates it. The two libraries do not always agree on the argument's name:

- transformers up to 5.23 calls it ``past_key_values`` everywhere;
- transformers 5.24 renamed it ``cache`` (``past_key_values`` is deprecated, accepted by the
  model's top-level ``forward`` until 5.40, and no longer *passed* by decoder layers);
- TransformerLens 4.3's attention components that recompute attention themselves (the
  rotary ones of every family hooklab supports, and multi-head latent attention) read only
  ``past_key_values`` (or ``layer_past``).

Under 5.24 the cache therefore never reached the attention: the first decoding step was right
and every later step attended to its newest token alone, so two prompts gave the same
continuation, silently. :func:`route_kv_cache` mends it where the names meet, by forward
pre-hooks on the bridge's modules:

- every attention component that recomputes attention itself gets the cache under the name it
  reads (:data:`BRIDGE_CACHE_NAME`), whichever name the decoder layer used;
- a component that hands its arguments on to the Hugging Face attention is left alone
  (Hugging Face to Hugging Face, the names agree);
- the model's own top-level ``forward`` gets the cache under the name its signature declares,
  so a transformers release that drops the deprecated name does not swallow the cache
  TransformerLens passes.

The load-time generation check (:func:`hooklab.pair.check_generation_on`) proves the result on
every load: a few cached decoding steps must equal uncached ones.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["BRIDGE_CACHE_NAME", "HF_CACHE_NAMES", "route_kv_cache", "cache_argument_name"]

#: The name TransformerLens 4's self-computing attention components read the KV cache under.
BRIDGE_CACHE_NAME = "past_key_values"

#: The names a Hugging Face model has used for the KV cache argument, newest first.
HF_CACHE_NAMES = ("cache", "past_key_values")

_ROUTED = "_hooklab_kv_cache_routed"


def cache_argument_name(forward: Any) -> str | None:
    """The KV-cache argument a Hugging Face ``forward`` declares (``"cache"`` or
    ``"past_key_values"``), or ``None`` when it declares neither."""
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in HF_CACHE_NAMES if name in parameters), None)


def _recomputes_attention(component: torch.nn.Module) -> bool:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    if not isinstance(component, AttentionBridge):
        return False
    # A component whose class keeps AttentionBridge.forward delegates to the HF attention.
    return type(component).forward is not AttentionBridge.forward


def _to_bridge_name(
    _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if kwargs.get(BRIDGE_CACHE_NAME) is None:
        for name in HF_CACHE_NAMES:
            if name != BRIDGE_CACHE_NAME and kwargs.get(name) is not None:
                kwargs[BRIDGE_CACHE_NAME] = kwargs.pop(name)
                break
    else:
        for name in HF_CACHE_NAMES:
            if name != BRIDGE_CACHE_NAME:
                kwargs.pop(name, None)
    return args, kwargs


def _to_declared_name(declared: str) -> Any:
    def hook(
        _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        for name in HF_CACHE_NAMES:
            if name != declared and name in kwargs:
                value = kwargs.pop(name)
                if kwargs.get(declared) is None:
                    kwargs[declared] = value
        return args, kwargs

    return hook


def route_kv_cache(bridge: Any) -> int:
    """Install the cache routing on a booted bridge (idempotent); the number of attention
    components that now receive the cache under their own name."""
    model: torch.nn.Module = bridge.original_model
    if getattr(model, _ROUTED, None) is not None:
        return int(getattr(model, _ROUTED))
    routed = 0
    for module in model.modules():
        if _recomputes_attention(module):
            module.register_forward_pre_hook(_to_bridge_name, with_kwargs=True)
            routed += 1
    declared = cache_argument_name(type(model).forward)
    if declared is not None:
        model.register_forward_pre_hook(_to_declared_name(declared), with_kwargs=True)
    setattr(model, _ROUTED, routed)
    return routed
