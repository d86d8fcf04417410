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
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

__all__ = [
    "BRIDGE_CACHE_NAME",
    "HF_CACHE_NAMES",
    "route_kv_cache",
    "cache_argument_name",
    "CachedDecodingReport",
    "check_cached_decoding",
]

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


@dataclass(frozen=True)
class CachedDecodingReport:
    """Cached against uncached decoding of one model on a teacher-forced probe.

    Attributes:
        family: the model's family.
        dtype: its dtype.
        steps: decoding steps compared after the prompt (per path).
        bridge: max |logit difference| through the bridge's own forward (hooklab's decoder).
        hugging_face: the same through the Hugging Face model's forward with its own cache
            argument (what ``generate`` does, so greedy histories).
        scale: largest |logit| compared.
        limit: the difference accepted (:func:`hooklab.parity.tolerance_for`).
    """

    family: str
    dtype: str
    steps: int
    bridge: float
    hugging_face: float
    scale: float
    limit: float

    @property
    def ok(self) -> bool:
        return self.bridge <= self.limit and self.hugging_face <= self.limit


def _bridge_cached_logits(
    model: Any, tokens: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"],
    n_prompt: int,
) -> Float[torch.Tensor, "batch steps d_vocab"]:  # fmt: skip
    from hooklab.generation.decode import forward_step

    positions = mask.cumsum(-1) - 1
    logits, cache = forward_step(
        model, tokens[:, :n_prompt], mask[:, :n_prompt], positions[:, :n_prompt], None,
        use_cache=True,
    )  # fmt: skip
    rows = [logits[:, -1]]
    for end in range(n_prompt + 1, tokens.shape[1]):
        logits, cache = forward_step(
            model, tokens[:, end - 1 : end], mask[:, :end], positions[:, end - 1 : end], cache,
            use_cache=True,
        )  # fmt: skip
        rows.append(logits[:, -1])
    return torch.stack(rows, dim=1)


def _hf_cached_logits(
    model: Any, tokens: Int[torch.Tensor, "batch pos"], n_prompt: int
) -> Float[torch.Tensor, "batch steps d_vocab"]:
    hf_model = model.original_model
    name = cache_argument_name(type(hf_model).forward) or BRIDGE_CACHE_NAME
    out = hf_model(input_ids=tokens[:, :n_prompt], use_cache=True)
    cache, rows = getattr(out, name), [out.logits[:, -1]]
    for end in range(n_prompt + 1, tokens.shape[1]):
        out = hf_model(input_ids=tokens[:, end - 1 : end], use_cache=True, **{name: cache})
        cache = getattr(out, name)
        rows.append(out.logits[:, -1])
    return torch.stack(rows, dim=1)


def check_cached_decoding(
    model: Any, tokens: Int[torch.Tensor, "batch pos"], *, steps: int = 3
) -> CachedDecodingReport:
    """Decode the last ``steps`` tokens of ``tokens`` one at a time with the KV cache (through
    the bridge, with a left-padded row, and through the Hugging Face forward) and compare every
    step's logits with one uncached forward pass of the whole sequence.

    Teacher-forced, so a near tie cannot make the two paths diverge: on a correct stack the
    differences are float rounding; with a cache that does not reach the attention they are of
    the order of the logits themselves.
    """
    from hooklab.architectures import spec_for_model
    from hooklab.parity import tolerance_for

    n_prompt = tokens.shape[1] - steps
    if n_prompt < 2:
        raise ValueError(f"tokens: {tokens.shape[1]} tokens leave no prompt before {steps} steps")
    # row 1 left-padded by two positions: the cache must also respect the attention mask
    padded = tokens.clone()
    padded[1:, :2] = tokens[0, 0]
    mask = torch.ones_like(tokens)
    mask[1:, :2] = 0
    with torch.no_grad():
        positions = mask.cumsum(-1) - 1
        full = model(padded, attention_mask=mask, position_ids=positions.clamp_min(0))
        want = full[:, n_prompt - 1 : -1].float()
        bridge = _bridge_cached_logits(model, padded, mask, n_prompt).float()
        hf_full = model.original_model(input_ids=tokens[:1]).logits[:, n_prompt - 1 : -1]
        hf = _hf_cached_logits(model, tokens[:1], n_prompt).float()
    dtype = str(model.cfg.dtype).removeprefix("torch.")
    scale = float(want.abs().max())
    return CachedDecodingReport(
        family=spec_for_model(model).family,
        dtype=dtype,
        steps=steps,
        bridge=float((bridge - want).abs().max()),
        hugging_face=float((hf - hf_full.float()).abs().max()),
        scale=scale,
        limit=tolerance_for(dtype, scale),
    )
