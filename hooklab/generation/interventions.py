"""Position-wise interventions for generation: grafts, the random control, skipping.

Every hook here edits each token independently of the others, so it gives the same result
whether a forward pass covers the whole sequence or, with the KV cache, only the new token.

* :func:`module_graft_hooks`: the donor's MLP path on the host's own ``hook_resid_mid``
  (:func:`hooklab.graft.engine.graft_hooks` in ``module`` mode);
* :func:`random_control_hooks`: the host's MLP output plus a random unit direction scaled to
  the norm of the change the module graft would make at that layer and token *on this pass's
  own residual* (the ``own_pass`` norm of :data:`hooklab.graft.engine.RANDOM_NORM_SOURCES`;
  teacher-forced grafts use ``module_pass``, and the two agree at a window's first layer);
  the direction
  is drawn per (seed, prompt key, layer, absolute position), read from
  :func:`~hooklab.generation.decode.current_step`, so batching and caching do not change it;
* :func:`skip_mlp_hooks` (``hook_mlp_out`` <- 0) and :func:`skip_layer_hooks` (block output =
  block input) over a set of layers; :func:`skip_last` for the final ``k`` layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float

from hooklab import hooks
from hooklab.architectures import mlp_output
from hooklab.errors import HooklabError
from hooklab.forward import HookFn
from hooklab.generation.decode import current_step
from hooklab.graft.engine import change_norm, graft_hooks, position_seed

__all__ = [
    "module_graft_hooks",
    "random_control_hooks",
    "position_directions",
    "skip_mlp_hooks",
    "skip_layer_hooks",
    "skip_last",
]


def _layers(model: Any, layers: Iterable[int], argument: str = "layers") -> tuple[int, ...]:
    n_layers = int(model.cfg.n_layers)
    chosen = tuple(sorted(set(int(layer) for layer in layers)))
    outside = [layer for layer in chosen if not 0 <= layer < n_layers]
    if outside:
        raise HooklabError(
            f"{argument}={list(chosen)}: layers {outside} are outside the model; it has layers "
            f"0..{n_layers - 1}."
        )
    return chosen


def module_graft_hooks(host: Any, donor: Any, layers: Iterable[int]) -> list[HookFn]:
    """Hooks replacing ``host``'s MLP output in ``layers`` by ``donor``'s MLP path on it."""
    return graft_hooks(host, donor, _layers(host, layers), "module")


def position_directions(
    keys: Sequence[str],
    positions: torch.Tensor,
    seed: int,
    layer: int,
    d_model: int,
) -> Float[torch.Tensor, "batch pos d_model"]:
    """Unit-norm Gaussian directions, one per (key, layer, absolute position); 0 at padding.

    Args:
        keys: one prompt key per batch row.
        positions: [batch, pos] absolute positions, ``-1`` at padding.
        seed: seed of the control.
        layer: the layer the directions are for.
        d_model: width of a direction.
    """
    out = torch.zeros((*positions.shape, d_model), dtype=torch.float32)
    for row, key in enumerate(keys):
        for column, position in enumerate(positions[row].tolist()):
            if position < 0:
                continue
            generator = torch.Generator().manual_seed(position_seed(seed, key, layer, position))
            direction = torch.randn(d_model, generator=generator, dtype=torch.float32)
            out[row, column] = direction / direction.norm().clamp_min(1e-30)
    return out


def random_control_hooks(
    host: Any, donor: Any, layers: Iterable[int], *, seed: int = 0
) -> list[HookFn]:
    """Norm-matched random control (``own_pass`` norm) of the module graft of ``donor`` into
    ``host``.

    Per layer and token the MLP output moves by exactly the norm the module graft would move
    it on this pass's own residual, in a random direction. Needs
    :func:`~hooklab.generation.decode.current_step` (set by
    :func:`~hooklab.generation.decode.generate`).
    """
    resid_mid: dict[int, torch.Tensor] = {}
    out: list[HookFn] = []
    for layer in _layers(host, layers):

        def keep(activation: torch.Tensor, hook: Any, layer: int = layer) -> None:  # noqa: ARG001
            resid_mid[layer] = activation

        def replace(activation: torch.Tensor, hook: Any, layer: int = layer) -> torch.Tensor:  # noqa: ARG001
            step = current_step()
            grafted = mlp_output(donor, layer, resid_mid.pop(layer))
            norm = change_norm(grafted, activation).unsqueeze(-1)  # the own_pass norm
            directions = position_directions(
                step.keys, step.positions, seed, layer, activation.shape[-1]
            ).to(activation.device)
            return (activation.float() + directions * norm).to(activation.dtype)

        out += [(hooks.resid_mid(layer), keep), (hooks.mlp_out(layer), replace)]
    return out


def skip_mlp_hooks(model: Any, layers: Iterable[int]) -> list[HookFn]:
    """Hooks that remove the MLP path of ``layers`` (``hook_mlp_out`` <- 0)."""

    def zero(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        return torch.zeros_like(activation)

    return [(hooks.mlp_out(layer), zero) for layer in _layers(model, layers)]


def skip_layer_hooks(model: Any, layers: Iterable[int]) -> list[HookFn]:
    """Hooks that remove whole blocks: ``hook_resid_post`` <- ``hook_resid_pre`` in ``layers``.

    The skipped block still runs (and fills its KV cache, which only it reads); its output is
    discarded, so the stream leaves it as it entered.
    """
    entering: dict[int, torch.Tensor] = {}
    out: list[HookFn] = []
    for layer in _layers(model, layers):

        def keep(activation: torch.Tensor, hook: Any, layer: int = layer) -> None:  # noqa: ARG001
            entering[layer] = activation

        def restore(activation: torch.Tensor, hook: Any, layer: int = layer) -> torch.Tensor:  # noqa: ARG001
            return entering.pop(layer)

        out += [(hooks.resid_pre(layer), keep), (hooks.resid_post(layer), restore)]
    return out


def skip_last(model: Any, k: int, *, mlp_only: bool = False) -> list[HookFn]:
    """Skip the final ``k`` layers (whole blocks, or their MLPs with ``mlp_only``); 0 skips none."""
    n_layers = int(model.cfg.n_layers)
    if not 0 <= k <= n_layers:
        raise HooklabError(f"k={k}: skip between 0 and n_layers={n_layers} final layers.")
    layers = range(n_layers - k, n_layers)
    return skip_mlp_hooks(model, layers) if mlp_only else skip_layer_hooks(model, layers)
