"""Matched-prefix MLP grafts (docs/definitions.md): hooks that replace a host's MLP output.

For each layer of a window, the host's ``hook_mlp_out`` (the exact vector added to the
residual) is replaced by

* ``module``: the donor's MLP path (pre-norm, MLP, post-norm, via the architecture adapter)
  applied to the host's own ``hook_resid_mid`` at that layer;
* ``splice``: the donor's own ``hook_mlp_out`` from its forward pass on the same tokens;
* ``random``: the host's output plus a random direction scaled, per token and layer, to the
  norm of the change the ``module`` graft makes there *in the module graft's own pass* (its
  norms are recorded by that pass and handed to this one), so that only the direction
  differs. Directions are drawn per (prompt key, layer, position): independent of batching
  and padding.

The random control's norm has one definition, :func:`change_norm`, and two named sources
(:data:`RANDOM_NORM_SOURCES`): ``module_pass`` here (teacher-forced grafts, token support),
``own_pass`` in free-running generation (:mod:`hooklab.generation.interventions`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hooklab import hooks
from hooklab.architectures import mlp_output
from hooklab.errors import HooklabError
from hooklab.forward import HookFn, residual_stream
from hooklab.moe import moe_part_output
from hooklab.types import Bridge, MoEPart, Router

__all__ = [
    "MODES",
    "DIRECTIONS",
    "graft_hooks",
    "module_change_norms",
    "position_seed",
    "random_directions",
    "RANDOM_NORM_SOURCES",
    "change_norm",
    "mlp_out_hooks",
]

MODES = ("module", "splice", "random")

#: direction -> (host side, donor side). IT->PT is the graft (sufficiency), PT->IT the swap
#: (necessity); the self-grafts are no-op checks.
DIRECTIONS: dict[str, tuple[str, str]] = {
    "it-to-pt": ("pt", "it"),
    "pt-to-it": ("it", "pt"),
    "self-pt": ("pt", "pt"),
    "self-it": ("it", "it"),
}


#: The two named norm-matched random controls: where the module graft's change is measured.
RANDOM_NORM_SOURCES = {
    "module_pass": (
        "the norm of the module graft's change at that layer and token in the module-graft "
        "pass (whose earlier window layers are module-grafted): teacher-forced grafts"
    ),
    "own_pass": (
        "the norm of the change the donor's MLP path would make to the random pass's own "
        "residual at that layer and token (earlier window layers randomly perturbed): "
        "free-running generation, where no module pass runs beside it"
    ),
}


def change_norm(new_out: torch.Tensor, host_out: torch.Tensor) -> torch.Tensor:
    """``‖new_out − host_out‖`` over ``d_model`` in float32, per token: the norm the random
    control is matched to (``new_out``: the donor's MLP path on the host's residual)."""
    return (new_out.float() - host_out.float()).norm(dim=-1)


def position_seed(seed: int, key: str, layer: int, position: int) -> int:
    """A 63-bit seed for one (sequence, layer, position), independent of batching and device."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{layer}\x00{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_directions(
    keys: Sequence[str], seed: int, layer: int, n_positions: int, d_model: int
) -> torch.Tensor:
    """[batch, pos, d_model] float32 unit-norm Gaussian directions on the CPU.

    Each (key, position) vector comes from its own generator, seeded by :func:`position_seed`:
    a prompt's directions do not depend on the other rows, the padded length or ``d_model``
    being a multiple of anything (a single draw of [pos, d_model] does, through torch's
    vectorised sampler).
    """
    out = torch.empty((len(keys), n_positions, d_model), dtype=torch.float32)
    generator = torch.Generator()
    for row, key in enumerate(keys):
        for position in range(n_positions):
            generator.manual_seed(position_seed(seed, key, layer, position))
            torch.randn(d_model, generator=generator, out=out[row, position])
    return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _check_mode(
    mode: str,
    layers: Sequence[int],
    donor_mlp_out: Mapping[int, torch.Tensor] | None,
    module_norms: Mapping[int, torch.Tensor] | None,
    row_keys: Sequence[str] | None,
    part: str,
) -> None:
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
    if mode == "random" and (module_norms is None or any(x not in module_norms for x in layers)):
        raise HooklabError(
            "random mode needs module_norms: the module graft's change norms at every window "
            "layer, recorded by its own pass (record_norms=, or module_change_norms())."
        )


def graft_hooks(
    host: Bridge,
    donor: Bridge,
    layers: Sequence[int],
    mode: str,
    *,
    donor_mlp_out: Mapping[int, torch.Tensor] | None = None,
    module_norms: Mapping[int, torch.Tensor] | None = None,
    record_norms: dict[int, torch.Tensor] | None = None,
    row_keys: Sequence[str] | None = None,
    seed: int = 0,
    part: MoEPart = "mlp",
    router: Router = "host",
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
        module_norms: for ``random``, layer -> [batch, pos] norm of the module graft's change
            at that layer in the module graft's own pass (its ``record_norms``).
        record_norms: for ``module``, filled with layer -> [batch, pos] float32 norm of the
            change the graft makes to ``hook_mlp_out``.
        row_keys: for ``random``, one key per batch row (e.g. the prompt id), so each row's
            noise depends on it and the seed only, not on batching.
        seed: seed of the random control.
        part: what comes from the donor in MoE blocks (:data:`hooklab.moe.PARTS`): ``mlp``
            (the whole MLP path, the default and the only choice for dense families),
            ``moe``, ``shared`` or ``routed`` experts; dense layers always take the whole path.
        router: for ``part="routed"``, whose router picks the experts: ``host`` or ``donor``.
        record: if given, filled per layer with ``host_out``, ``new_out`` and (random mode)
            ``module_delta_norm``, the norm it was scaled to (for checks).
    """
    _check_mode(mode, layers, donor_mlp_out, module_norms, row_keys, part)
    resid_mid: dict[int, torch.Tensor] = {}

    def keep_resid_mid(layer: int):
        def hook(activation: torch.Tensor, **_: Any) -> None:
            resid_mid[layer] = activation

        return hook

    def module_out(layer: int, activation: torch.Tensor) -> torch.Tensor:
        mid = resid_mid.pop(layer)
        grafted = (
            mlp_output(donor, layer, mid)
            if part == "mlp"
            else moe_part_output(host, donor, layer, mid, part, router=router)
        )
        if record_norms is not None:
            record_norms[layer] = change_norm(grafted, activation)
        return grafted

    def random_out(layer: int, activation: torch.Tensor) -> torch.Tensor:
        batch, n_positions, d_model = activation.shape
        direction = random_directions(row_keys, seed, layer, n_positions, d_model)  # type: ignore[arg-type]
        norm = module_norms[layer].to(activation.device, torch.float32)  # type: ignore[index]
        if record is not None:
            record.setdefault(layer, {})["module_delta_norm"] = norm
        moved = direction.to(activation.device) * norm.unsqueeze(-1)
        return (activation.float() + moved).to(activation.dtype)

    def replace_mlp_out(layer: int):
        def hook(activation: torch.Tensor, **_: Any) -> torch.Tensor:
            if mode == "splice":
                new = donor_mlp_out[layer].to(activation.device, activation.dtype)  # type: ignore[index]
            elif mode == "module":
                new = module_out(layer, activation)
            else:
                new = random_out(layer, activation)
            if record is not None:
                entry = record.setdefault(layer, {})
                entry.update(host_out=activation.detach().clone(), new_out=new.detach())
            return new

        return hook

    out: list[HookFn] = []
    for layer in layers:
        if mode == "module":
            out.append((hooks.resid_mid(layer), keep_resid_mid(layer)))
        out.append((hooks.mlp_out(layer), replace_mlp_out(layer)))
    return out


def module_change_norms(
    host: Bridge,
    donor: Bridge,
    tokens: torch.Tensor,
    layers: Sequence[int],
    *,
    attention_mask: torch.Tensor | None = None,
    part: MoEPart = "mlp",
    router: Router = "host",
) -> dict[int, torch.Tensor]:
    """Layer -> [batch, pos] norm of the module graft's change, from a full module pass.

    What ``random`` mode's ``module_norms`` wants when no module pass was run anyway.
    """
    norms: dict[int, torch.Tensor] = {}
    fwd_hooks = graft_hooks(
        host, donor, layers, "module", part=part, router=router, record_norms=norms
    )
    residual_stream(host, tokens, attention_mask=attention_mask, fwd_hooks=fwd_hooks)
    return norms


def mlp_out_hooks(n_layers: int, store: dict[int, torch.Tensor]) -> list[HookFn]:
    """Hooks that keep every layer's ``hook_mlp_out`` in ``store`` (a donor pass for splice)."""

    def keep(layer: int):
        def hook(activation: torch.Tensor, **_: Any) -> None:
            store[layer] = activation.detach()

        return hook

    return [(hooks.mlp_out(layer), keep(layer)) for layer in range(n_layers)]
