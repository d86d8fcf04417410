"""Steering hooks along a direction, and their controls.

Every hook is a plain TransformerLens hook function ``(activation, hook) -> activation`` on a
named hook point, so it can be passed in any ``fwd_hooks`` list (generation included):

* projection: ``h ← h + (α − 1)·g·(d·h)·d`` (``α = 1`` leaves ``h`` bitwise unchanged, ``α = 0``
  removes the component along ``d`` when ``g = 1``, ``α = 2`` doubles it);
* injection: ``h ← h + β·s·d`` with ``s`` IT's mean projection on ``d`` at that layer
  (``Directions.mean_projection``), e.g. to push PT along the IT direction.

``α`` / ``β`` may be a scalar or a [batch] tensor: one forward pass then evaluates a grid of
values, one per batch row. The edit is computed in float32 and cast back to the activation's
dtype; the same code serves scalars and grids, so a grid equals one value at a time.

Controls: :func:`random_control` (a random unit direction per layer, projection-matched, see
there) and :func:`other_layer_control` (a direction computed at another layer range).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float

from hooklab.conditions import pad_batch
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.histories import History
from hooklab.graft.windows import parse_windows
from hooklab.steering.collect import hook_name
from hooklab.steering.directions import Directions, normalise

__all__ = [
    "HookFn",
    "projection_hook",
    "injection_hook",
    "steering_hooks",
    "default_layers",
    "projection_stats",
    "random_directions",
    "random_control",
    "other_layer_control",
]

HookFn = tuple[str, Callable[..., Any]]


def _per_row(value: float | torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """``value`` as a float32 [batch, 1, ..., 1] tensor broadcasting over ``activation``."""
    batch = activation.shape[0]
    v = torch.as_tensor(value, dtype=torch.float32, device=activation.device)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise HooklabError(
            f"alphas of shape {tuple(v.shape)}: expected a scalar or one value per batch row "
            f"({batch}); make the batch as long as the grid."
        )
    return v.reshape(batch, *([1] * (activation.ndim - 1)))


def projection_hook(
    direction: Float[torch.Tensor, " d_model"],
    alpha: float | Float[torch.Tensor, " batch"],
    *,
    gain: float = 1.0,
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``h ← h + (α − 1)·gain·(d·h)·d`` on [batch, pos, d_model] activations.

    Args:
        direction: [d_model] unit direction.
        alpha: scalar or [batch] per-row values.
        gain: scales the edit (1 for a true direction; see :func:`random_control`).
    """
    unit = direction.detach().to(torch.float32)

    def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        d = unit.to(activation.device)
        h = activation.to(torch.float32)
        coefficient = (_per_row(alpha, activation) - 1.0) * gain
        projection = (h @ d).unsqueeze(-1)  # [batch, pos, 1]
        return (h + coefficient * projection * d).to(activation.dtype)

    return hook


def injection_hook(
    direction: Float[torch.Tensor, " d_model"],
    beta: float | Float[torch.Tensor, " batch"],
    scale: float,
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``h ← h + β·scale·d`` at every position (``scale``: IT's mean projection ``s``)."""
    unit = direction.detach().to(torch.float32)

    def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        d = unit.to(activation.device)
        h = activation.to(torch.float32)
        return (h + _per_row(beta, activation) * scale * d).to(activation.dtype)

    return hook


def default_layers(n_layers: int) -> tuple[int, ...]:
    """The late third of the stack (``parse_windows("late", n_layers)``)."""
    return parse_windows("late", n_layers)[0].layers


def steering_hooks(
    directions: Directions,
    value: float | torch.Tensor,
    *,
    n_layers: int,
    layers: Sequence[int] | None = None,
    mode: str = "project",
) -> list[HookFn]:
    """``(hook_name, fn)`` pairs steering ``directions.hook`` at ``layers``.

    Args:
        directions: unit directions covering ``layers``.
        value: α (``mode="project"``) or β (``mode="inject"``), scalar or [batch].
        n_layers: the model's layer count (for the default window).
        layers: default the late window, :func:`default_layers`.
        mode: ``"project"`` (scale the component, with ``directions.gain``) or ``"inject"``
            (add ``β·s·d``, needing ``directions.mean_projection``).
    """
    layers = default_layers(n_layers) if layers is None else tuple(layers)
    gains = directions.gains()
    out: list[HookFn] = []
    for layer in layers:
        i = directions.index(layer)
        name = hook_name(directions.hook, layer)
        if mode == "project":
            out.append((name, projection_hook(directions.vectors[i], value, gain=float(gains[i]))))
        elif mode == "inject":
            if directions.mean_projection is None:
                raise HooklabError(
                    "mode='inject' needs directions.mean_projection (IT's mean projection); "
                    "compute the directions from paired sums."
                )
            scale = float(directions.mean_projection[i])
            out.append((name, injection_hook(directions.vectors[i], value, scale)))
        else:
            raise HooklabError(f"mode={mode!r}: use 'project' or 'inject'.")
    return out


def projection_stats(
    model: Any,
    histories: Sequence[History],
    directions: Sequence[Directions],
    *,
    pad_id: int = 0,
    batch_size: int = 8,
) -> list[dict[str, torch.Tensor]]:
    """Per direction set and layer, ``mean``, ``mean_abs`` and ``mean_sq`` of ``d·h`` over the
    read tokens of ``histories`` (unsteered ``model``), plus ``n_tokens``.

    All sets must share a hook and layers; one forward pass per batch serves all of them.
    """
    first = directions[0]
    if any(d.hook != first.hook or d.layers != first.layers for d in directions):
        raise HooklabError("projection_stats: every direction set must share hook and layers.")
    units = torch.stack([d.vectors.to(torch.float64) for d in directions], 1)  # [l, set, d]
    totals = torch.zeros(3, len(first.layers), len(directions), dtype=torch.float64)
    n_tokens = 0
    for start in range(0, len(histories), batch_size):
        batch = histories[start : start + batch_size]
        tokens, mask, read, _ = pad_batch(batch, pad_id)
        n_tokens += int(read.sum())

        def make(i: int, read: torch.Tensor = read) -> Callable[..., None]:
            def add(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
                rows = activation.detach().to(torch.float64)[read.to(activation.device)]
                projection = (rows @ units[i].to(rows.device).T).cpu()  # [n, set]
                totals[0, i] += projection.sum(0)
                totals[1, i] += projection.abs().sum(0)
                totals[2, i] += (projection**2).sum(0)

            return add

        fwd = [(hook_name(first.hook, layer), make(i)) for i, layer in enumerate(first.layers)]
        residual_stream(model, tokens, attention_mask=mask, fwd_hooks=fwd)
    means = totals / max(n_tokens, 1)
    return [
        {
            "mean": means[0, :, s],
            "mean_abs": means[1, :, s],
            "mean_sq": means[2, :, s],
            "n_tokens": torch.tensor(n_tokens),
        }
        for s in range(len(directions))
    ]


def random_directions(like: Directions, *, seed: int = 0) -> Directions:
    """Random unit directions (Gaussian, seeded per layer) on ``like``'s layers and hook."""
    rows = []
    for layer in like.layers:
        generator = torch.Generator().manual_seed(seed * 100_003 + layer)
        rows.append(torch.randn(like.d_model, generator=generator, dtype=torch.float64))
    return replace(
        like,
        vectors=normalise(torch.stack(rows)).to(torch.float32),
        source="random",
        gain=None,
        notes={"seed": seed, "reference_source": like.source},
    )


def random_control(
    directions: Directions,
    model: Any,
    histories: Sequence[History],
    *,
    seed: int = 0,
    pad_id: int = 0,
    batch_size: int = 8,
) -> Directions:
    """A random unit direction per layer, projection-matched to ``directions`` on ``model``.

    What is matched, per layer, over the read tokens of ``histories`` on the unsteered
    ``model`` (the calibration activations): the mean absolute projection. With
    ``m_d = mean|d·h|`` and ``m_r = mean|r·h|``, the control's ``gain`` is ``m_d / m_r``, so its
    projection edit ``(α − 1)·gain·(r·h)·r`` has, at every α, the same mean norm per token as
    the true edit ``(α − 1)·(d·h)·d``. (At α = 0 it therefore does not exactly remove the
    random component unless ``gain = 1``.) The injection scale ``s`` is copied from
    ``directions``, so ``β·s·r`` has exactly the norm of ``β·s·d``. The measured ``m_d``,
    ``m_r`` and RMS projections are kept in ``notes``.
    """
    random = random_directions(directions, seed=seed)
    stats_d, stats_r = projection_stats(
        model, histories, [directions, random], pad_id=pad_id, batch_size=batch_size
    )
    ratio = torch.where(
        stats_r["mean_abs"] > 0,
        stats_d["mean_abs"] / stats_r["mean_abs"].clamp_min(1e-300),
        torch.ones_like(stats_r["mean_abs"]),
    )
    notes = {
        **random.notes,
        "matched": "mean |projection| per layer on the calibration activations",
        "reference_mean_abs": stats_d["mean_abs"].tolist(),
        "random_mean_abs": stats_r["mean_abs"].tolist(),
        "reference_rms": stats_d["mean_sq"].sqrt().tolist(),
        "random_rms": stats_r["mean_sq"].sqrt().tolist(),
        "calibration_tokens": int(stats_d["n_tokens"]),
    }
    return replace(
        random,
        gain=ratio.to(torch.float32),
        mean_projection=directions.mean_projection,
        notes=notes,
    )


def other_layer_control(
    directions: Directions, source_layers: Sequence[int], layers: Sequence[int]
) -> Directions:
    """The normalised mean of ``directions`` over ``source_layers``, used at every one of
    ``layers`` (e.g. the mid-stack IT−PT direction applied in the late window).

    ``mean_projection`` is left unset (it would need the activations at ``layers``).
    """
    source_layers, layers = tuple(source_layers), tuple(layers)
    if not source_layers or not layers:
        raise HooklabError("other_layer_control: source_layers and layers must be non-empty.")
    pooled = torch.stack([directions.vector(layer).to(torch.float64) for layer in source_layers])
    unit = normalise(pooled.mean(0)).to(torch.float32)
    return replace(
        directions,
        vectors=unit.expand(len(layers), -1).clone(),
        layers=layers,
        source="other-layers",
        mean_projection=None,
        gain=None,
        notes={"source_layers": list(source_layers), "reference_source": directions.source},
    )
