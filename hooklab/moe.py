"""Mixture-of-experts blocks (DeepSeek-V2): routing capture, routing summaries, expert parts.

Routing is read where it actually fires: a torch forward hook on the router module (its
logits) and on the experts module (the chosen experts and weights it was called with).
TransformerBridge's ``mlp.hook_router_scores`` never fires on DeepSeek-V2.

This is the one place that knows the layout of an MoE block (router ``gate``, routed
``experts``, always-on ``shared_experts``); analysis code asks :func:`moe_part_output`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from hooklab.architectures import mlp_output, model_device, moe_layout, spec_for_model
from hooklab.errors import HooklabError
from hooklab.types import Bridge

__all__ = [
    "PARTS",
    "Routing",
    "capture_routing",
    "recompute_routing",
    "expert_usage",
    "routing_agreement",
    "routing_entropy",
    "moe_part_output",
    "moe_parts",
]

#: What a graft can take from the donor in an MoE block: the whole MLP path, the whole MoE
#: block, its shared experts, or its routed experts.
PARTS = ("mlp", "moe", "shared", "routed")


@dataclass(frozen=True)
class _MoEModules:
    router: torch.nn.Module
    experts: torch.nn.Module
    shared: torch.nn.Module
    pre_norm: torch.nn.Module


def _modules(model: Bridge, layer: int) -> _MoEModules:
    layout = moe_layout(model)
    if layout is None:
        raise HooklabError(
            f"{spec_for_model(model).family} has no mixture-of-experts blocks; expert-level "
            "analyses need a DeepSeek-V2 model."
        )
    if not layout.is_moe_layer(layer):
        raise HooklabError(
            f"layer {layer} is a dense layer (the first {layout.first_dense_layers} layers are "
            f"dense); MoE layers are {layout.moe_layers[0]}..{layout.moe_layers[-1]}."
        )
    block = model.blocks[layer]
    moe = block.mlp.original_component
    return _MoEModules(
        router=getattr(moe.gate, "original_component", moe.gate),
        experts=moe.experts,
        shared=getattr(moe.shared_experts, "original_component", moe.shared_experts),
        pre_norm=block.ln2.original_component,
    )


@dataclass(frozen=True)
class Routing:
    """Per MoE layer: router logits, chosen experts and their weights.

    Attributes:
        layers: the MoE layers, in order.
        logits: layer -> [batch, pos, n_routed_experts] float32 router logits.
        experts: layer -> [batch, pos, experts_per_token] chosen expert ids.
        weights: layer -> [batch, pos, experts_per_token] their weights (as used).
    """

    layers: tuple[int, ...]
    logits: dict[int, Float[torch.Tensor, "batch pos expert"]]
    experts: dict[int, Int[torch.Tensor, "batch pos k"]]
    weights: dict[int, Float[torch.Tensor, "batch pos k"]]


def capture_routing(
    model: Bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
) -> Routing:
    """The routing of every MoE layer on ``tokens``, read from the modules that fire."""
    layout = moe_layout(model)
    if layout is None:
        raise HooklabError(f"{spec_for_model(model).family} has no mixture-of-experts blocks.")
    batch, pos = tokens.shape
    logits: dict[int, torch.Tensor] = {}
    experts: dict[int, torch.Tensor] = {}
    weights: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layout.moe_layers:
        modules = _modules(model, layer)

        def on_router(module, args, output, layer=layer):  # noqa: ARG001
            logits[layer] = output[0].detach().float().reshape(batch, pos, -1)

        def on_experts(module, args, kwargs, layer=layer):  # noqa: ARG001
            index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            weight = args[2] if len(args) > 2 else kwargs["top_k_weights"]
            experts[layer] = index.detach().reshape(batch, pos, -1)
            weights[layer] = weight.detach().float().reshape(batch, pos, -1)

        handles.append(modules.router.register_forward_hook(on_router))
        handles.append(modules.experts.register_forward_pre_hook(on_experts, with_kwargs=True))
    try:
        with torch.no_grad():
            model(tokens, attention_mask=attention_mask, return_type=None, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return Routing(tuple(layout.moe_layers), logits, experts, weights)


def recompute_routing(
    model: Bridge, layer: int, normed: Float[torch.Tensor, "batch pos d_model"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits, chosen experts and weights recomputed from the gate weights.

    For DeepSeek-V2's greedy top-k router: softmax of ``normed @ W_gate^T`` in float32, the
    ``experts_per_token`` largest, scaled by ``routed_scaling_factor``. ``normed`` is the MoE
    block's input (after the pre-MLP norm).
    """
    router: Any = _modules(model, layer).router
    if getattr(router, "topk_method", "greedy") != "greedy":
        raise HooklabError("recompute_routing implements the 'greedy' top-k method only.")
    logits = normed.float() @ router.weight.float().T
    scores = logits.softmax(dim=-1)
    weights, experts = torch.topk(scores, k=router.top_k, dim=-1)
    return logits, experts, weights * router.routed_scaling_factor


def expert_usage(routing: Routing) -> pd.DataFrame:
    """Share of tokens routed to each expert per layer (columns: layer, expert, share)."""
    rows = []
    for layer in routing.layers:
        chosen = routing.experts[layer].reshape(-1)
        n_experts = routing.logits[layer].shape[-1]
        counts = torch.bincount(chosen, minlength=n_experts).double()
        n_tokens = routing.experts[layer].shape[0] * routing.experts[layer].shape[1]
        for expert, count in enumerate(counts.tolist()):
            rows.append({"layer": layer, "expert": expert, "share": count / n_tokens})
    return pd.DataFrame(rows)


def _normalised_weights(routing: Routing, layer: int) -> torch.Tensor:
    n_experts = routing.logits[layer].shape[-1]
    dense = torch.zeros((*routing.experts[layer].shape[:2], n_experts))
    dense.scatter_add_(-1, routing.experts[layer].cpu(), routing.weights[layer].cpu())
    return dense / dense.sum(-1, keepdim=True).clamp_min(1e-30)


def routing_agreement(a: Routing, b: Routing) -> pd.DataFrame:
    """Per layer, how alike two models route the same tokens.

    ``overlap``: mean share of chosen experts both pick (|A ∩ B| / k); ``weighted_overlap``:
    mean sum over experts of the smaller of the two (per-token normalised) weights, 1 for
    identical routing and weights.
    """
    if a.layers != b.layers:
        raise HooklabError("routing_agreement needs routings of the same MoE layers.")
    rows = []
    for layer in a.layers:
        chosen_a, chosen_b = a.experts[layer].cpu(), b.experts[layer].cpu()
        shared = (chosen_a.unsqueeze(-1) == chosen_b.unsqueeze(-2)).any(-1).float().mean(-1)
        weighted = torch.minimum(_normalised_weights(a, layer), _normalised_weights(b, layer))
        rows.append(
            {
                "layer": layer,
                "overlap": float(shared.mean()),
                "weighted_overlap": float(weighted.sum(-1).mean()),
                "n_tokens": int(chosen_a.shape[0] * chosen_a.shape[1]),
            }
        )
    return pd.DataFrame(rows)


def routing_entropy(routing: Routing) -> pd.DataFrame:
    """Per layer, mean entropy (nats) of the router's softmax over all routed experts."""
    rows = []
    for layer in routing.layers:
        logprobs = torch.log_softmax(routing.logits[layer].double(), dim=-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        rows.append(
            {
                "layer": layer,
                "entropy": float(entropy.mean()),
                "max_entropy": float(np.log(logprobs.shape[-1])),
            }
        )
    return pd.DataFrame(rows)


def moe_parts(
    model: Bridge,
    layer: int,
    normed: Float[torch.Tensor, "batch pos d_model"],
    *,
    router_model: Any | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MoE block's two contributions on its (normed) input: ``(shared, routed)``.

    Their sum is the block's output (``hook_mlp_out``). ``router_model`` chooses whose router
    selects and weights the experts (default ``model``'s own).
    """
    modules = _modules(model, layer)
    router = _modules(router_model, layer).router if router_model is not None else modules.router
    device = model_device(model)
    flat = normed.reshape(-1, normed.shape[-1])
    _, weights, experts = router(flat.to(model_device(router_model or model)))
    flat = flat.to(device)
    routed = modules.experts(flat, experts.to(device), weights.to(device)).reshape(normed.shape)
    shared = modules.shared(normed.to(device))
    return shared.to(normed.device), routed.to(normed.device)


def moe_part_output(
    host: Bridge,
    donor: Bridge,
    layer: int,
    resid_mid: Float[torch.Tensor, "batch pos d_model"],
    part: Literal["mlp", "moe", "shared", "routed"],
    *,
    router: Literal["host", "donor"] = "host",
) -> Float[torch.Tensor, "batch pos d_model"]:
    """What block ``layer`` adds to the host's residual when ``part`` comes from ``donor``.

    ``mlp`` and ``moe``: the donor's whole MLP path (pre-norm, router, shared and routed
    experts). ``shared``: the host's norm, router and routed experts plus the donor's shared
    experts. ``routed``: the host's norm and shared experts plus the donor's routed experts,
    selected and weighted by the ``router`` side's router. Dense layers (the first
    ``first_k_dense_replace``) take the donor's whole MLP path for every part.
    """
    if part not in PARTS:
        raise HooklabError(f"part={part!r}: use one of {', '.join(PARTS)}.")
    if router not in ("host", "donor"):
        raise HooklabError(f"router={router!r}: use 'host' or 'donor'.")
    layout = moe_layout(host)
    if part in ("mlp", "moe") or layout is None or not layout.is_moe_layer(layer):
        if part in ("shared", "routed") and layout is None:
            raise HooklabError(
                f"part={part!r} needs an MoE model; {spec_for_model(host).family} is dense."
            )
        return mlp_output(donor, layer, resid_mid)
    normed = _modules(host, layer).pre_norm(resid_mid)
    host_shared, host_routed = moe_parts(host, layer, normed)
    if part == "shared":
        donor_shared, _ = moe_parts(donor, layer, normed)
        return host_routed + donor_shared
    _, donor_routed = moe_parts(
        donor, layer, normed, router_model=host if router == "host" else donor
    )
    return host_shared + donor_routed


def check_parts(parts: Sequence[str]) -> list[str]:
    """Validate part names (error names the accepted ones)."""
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise HooklabError(f"part={','.join(parts)}: accepted parts are {', '.join(PARTS)}.")
    return list(parts)
