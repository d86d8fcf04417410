"""Matched-prefix MLP grafts (docs/definitions.md): hooks that replace a host's MLP output.

For each layer of a window, the host's ``hook_mlp_out`` (the exact vector added to the
residual) is replaced by

* ``module``: the donor's MLP path (pre-norm, MLP, post-norm, via the architecture adapter)
  applied to the host's own ``hook_resid_mid`` at that layer;
* ``splice``: the donor's own ``hook_mlp_out`` from its forward pass on the same tokens;
* ``random``: the host's output plus a random direction scaled, per token, to the norm of the
  change the ``module`` graft would make there, so that only the direction differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from hooklab import hooks
from hooklab.architectures import mlp_output
from hooklab.errors import HooklabError
from hooklab.forward import HookFn
from hooklab.moe import moe_part_output

__all__ = ["MODES", "DIRECTIONS", "graft_hooks", "row_seed", "mlp_out_hooks"]

MODES = ("module", "splice", "random")

#: direction -> (host side, donor side). IT->PT is the graft (sufficiency), PT->IT the swap
#: (necessity); the self-grafts are no-op checks.
DIRECTIONS: dict[str, tuple[str, str]] = {
    "it-to-pt": ("pt", "it"),
    "pt-to-it": ("it", "pt"),
    "self-pt": ("pt", "pt"),
    "self-it": ("it", "it"),
}


def row_seed(seed: int, key: str, layer: int) -> int:
    """A 63-bit seed for one (sequence, layer), independent of batching and device."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _random_directions(
    shape: tuple[int, int, int], keys: Sequence[str], seed: int, layer: int, like: torch.Tensor
) -> torch.Tensor:
    """[batch, pos, d_model] unit-norm Gaussian directions, one generator per row."""
    rows = []
    for key in keys:
        generator = torch.Generator().manual_seed(row_seed(seed, key, layer))
        rows.append(torch.randn(shape[1:], generator=generator, dtype=torch.float32))
    directions = torch.stack(rows).to(device=like.device)
    return directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def graft_hooks(
    host: Any,
    donor: Any,
    layers: Sequence[int],
    mode: str,
    *,
    donor_mlp_out: dict[int, torch.Tensor] | None = None,
    row_keys: Sequence[str] | None = None,
    seed: int = 0,
    part: str = "mlp",
    router: str = "host",
    record: dict[int, dict[str, torch.Tensor]] | None = None,
) -> list[HookFn]:
    """Hooks on ``host`` that graft ``donor``'s MLP computation into ``layers``.

    Args:
        host: the TransformerBridge whose forward pass is edited.
        donor: a TransformerBridge of the same family and shape (may be ``host`` itself).
        layers: the window's layers.
        mode: ``"module"``, ``"splice"`` or ``"random"``.
        donor_mlp_out: for ``splice``, layer -> the donor's [batch, pos, d_model]
            ``hook_mlp_out`` on the same tokens.
        row_keys: for ``random``, one key per batch row (e.g. the prompt id), so each row's
            noise depends on it and the seed only, not on batching.
        seed: seed of the random control.
        part: what comes from the donor in MoE blocks (:data:`hooklab.moe.PARTS`): ``mlp``
            (the whole MLP path, the default and the only choice for dense families),
            ``moe``, ``shared`` or ``routed`` experts; dense layers always take the whole path.
        router: for ``part="routed"``, whose router picks the experts: ``host`` or ``donor``.
        record: if given, filled per layer with ``host_out``, ``new_out`` and
            ``module_delta_norm`` (for checks).
    """
    if mode not in MODES:
        raise HooklabError(f"mode={mode!r}: use one of {', '.join(MODES)}.")
    if mode == "splice" and (donor_mlp_out is None or any(x not in donor_mlp_out for x in layers)):
        raise HooklabError("splice mode needs the donor's hook_mlp_out at every window layer.")
    if mode == "splice" and part != "mlp":
        raise HooklabError(
            f"part={part!r} needs mode 'module' or 'random': splice copies the "
            "donor's whole hook_mlp_out."
        )
    if mode == "random" and row_keys is None:
        raise HooklabError("random mode needs row_keys (one key per batch row) for its seeds.")
    resid_mid: dict[int, torch.Tensor] = {}
    out: list[HookFn] = []
    for layer in layers:

        def keep_resid_mid(activation: torch.Tensor, hook: Any, layer: int = layer) -> None:
            resid_mid[layer] = activation

        def replace_mlp_out(activation: torch.Tensor, hook: Any, layer: int = layer):
            if mode == "splice":
                new = donor_mlp_out[layer].to(activation.device, activation.dtype)  # type: ignore[index]
                delta_norm = None
            else:
                mid = resid_mid.pop(layer)
                grafted = (
                    mlp_output(donor, layer, mid)
                    if part == "mlp"
                    else moe_part_output(host, donor, layer, mid, part, router=router)
                )
                if mode == "module":
                    new, delta_norm = grafted, None
                else:
                    delta_norm = (grafted - activation).float().norm(dim=-1, keepdim=True)
                    direction = _random_directions(
                        tuple(activation.shape), row_keys, seed, layer, activation
                    )
                    new = (activation.float() + direction * delta_norm).to(activation.dtype)
            if record is not None:
                record[layer] = {"host_out": activation.detach().clone(), "new_out": new.detach()}
                if delta_norm is not None:
                    record[layer]["module_delta_norm"] = delta_norm.squeeze(-1)
            return new

        if mode != "splice":
            out.append((hooks.resid_mid(layer), keep_resid_mid))
        out.append((hooks.mlp_out(layer), replace_mlp_out))
    return out


def mlp_out_hooks(n_layers: int, store: dict[int, torch.Tensor]) -> list[HookFn]:
    """Hooks that keep every layer's ``hook_mlp_out`` in ``store`` (a donor pass for splice)."""

    def keep(layer: int):
        def hook(activation: torch.Tensor, hook: Any) -> None:
            store[layer] = activation.detach()

        return hook

    return [(hooks.mlp_out(layer), keep(layer)) for layer in range(n_layers)]
