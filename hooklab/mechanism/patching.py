"""Component patching under shared histories: one generic patch, specialised by setters.

A :class:`Setter` names one component of one layer (``attn_out``, ``mlp_out`` or
``resid_post``), knows its hook and writes the donor's cached activation there (at every
position, or at the positions of a mask). :func:`patch` applies any list of setters to a host.
Given the host's unpatched stream with its block inputs, a patch whose first layer is ``l``
resumes the host from layer ``l`` (:func:`~hooklab.forward.resume_residual_stream`) instead of
recomputing the earlier layers; the result equals a full pass exactly.

:func:`run_patching` patches IT into PT (``it-to-pt``) or PT into IT (``pt-to-it``), one layer
or one window at a time, and measures against the unpatched host on the same tokens

* ``delta_late_kl``: the change of the late-region mean KL(p_layer ‖ p_final), each stream
  against its own final distribution;
* ``delta_teacher_logprob``: the change of the final-layer log probability of the history's
  next token (the teacher's, IT's greedy choice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Int
from plotly.subplots import make_subplots

from hooklab import hooks
from hooklab.architectures import model_device
from hooklab.conditions import pad_batch
from hooklab.errors import HooklabError
from hooklab.forward import HookFn, ResidualStream, residual_stream, resume_residual_stream
from hooklab.graft.engine import DIRECTIONS
from hooklab.graft.histories import History
from hooklab.graft.windows import Window, parse_windows
from hooklab.metrics import LATE_START_DEPTH, Workspace, late_layers, layers_label
from hooklab.stats import bootstrap_mean_ci, in_prompt_order
from hooklab.stream import read_variants
from hooklab.types import Bridge

__all__ = [
    "COMPONENTS",
    "Setter",
    "setters_for",
    "donor_cache",
    "patch",
    "run_patching",
    "patching_summary",
    "patching_heatmap",
]

#: component -> its hook name at a layer.
COMPONENTS: dict[str, Callable[[int], str]] = {
    "attn_out": hooks.attn_out,
    "mlp_out": hooks.mlp_out,
    "resid_post": hooks.resid_post,
}

_VARIANTS_PER_READ = 8


@dataclass(frozen=True)
class Setter:
    """Writes the donor's ``component`` activation of ``layer`` into the host.

    Attributes:
        component: ``attn_out``, ``mlp_out`` or ``resid_post``.
        layer: the block.
        positions: [batch, pos] where to write; ``None`` writes every position.
    """

    component: str
    layer: int
    positions: Bool[torch.Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise HooklabError(f"component={self.component!r}: use one of {', '.join(COMPONENTS)}.")

    @property
    def hook_name(self) -> str:
        return COMPONENTS[self.component](self.layer)

    def write(self, activation: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
        """The host's [batch, pos, d_model] ``activation`` with the donor's written in."""
        donor = donor.to(activation.device, activation.dtype)
        if self.positions is None:
            return donor
        where = self.positions.to(activation.device).bool().unsqueeze(-1)
        return torch.where(where, donor, activation)

    def hook(self, cache: dict[str, torch.Tensor]) -> HookFn:
        if self.hook_name not in cache:
            raise HooklabError(
                f"donor_cache has no {self.hook_name!r}: build it with donor_cache(...) "
                f"for component {self.component!r} and layer {self.layer}."
            )
        donor = cache[self.hook_name]
        return (self.hook_name, lambda activation, hook: self.write(activation, donor))  # noqa: ARG005


def setters_for(component: str, layers: Sequence[int]) -> list[Setter]:
    """One setter of ``component`` per layer (a window patch)."""
    return [Setter(component, layer) for layer in layers]


def donor_cache(
    donor: Bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    hook_names: Sequence[str],
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
) -> dict[str, torch.Tensor]:
    """The donor's activations at ``hook_names`` on ``tokens`` (one pass)."""
    cache: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        # keyed by the requested name: the bridge reports aliases by their canonical name
        def hook(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
            cache[name] = activation.detach()

        return hook

    names = list(dict.fromkeys(hook_names))
    residual_stream(
        donor, tokens, attention_mask=attention_mask, fwd_hooks=[(n, keep(n)) for n in names]
    )
    return cache


def patch(
    host: Bridge,
    cache: dict[str, torch.Tensor],
    tokens: Int[torch.Tensor, "batch pos"],
    setters: Sequence[Setter],
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    base: ResidualStream | None = None,
) -> ResidualStream:
    """The host's residual stream with every setter's donor activation written in.

    Args:
        host: the TransformerBridge patched.
        cache: hook name -> the donor's activation on the same tokens (:func:`donor_cache`).
        tokens: [batch, pos] ids.
        setters: what to patch.
        attention_mask: [batch, pos] 1 for real tokens.
        base: the host's unpatched stream on ``tokens`` made with ``keep_block_inputs=True``;
            then only the layers from the first patched one on are recomputed.
    """
    if not setters:
        raise HooklabError("setters is empty: pass at least one Setter to patch.")
    fwd_hooks = [setter.hook(cache) for setter in setters]
    if base is not None:
        start = min(setter.layer for setter in setters)
        return resume_residual_stream(host, base, start, fwd_hooks=fwd_hooks)
    return residual_stream(host, tokens, attention_mask=attention_mask, fwd_hooks=fwd_hooks)


@torch.no_grad()
def run_patching(
    pair: Any,
    histories: Sequence[History],
    *,
    directions: Sequence[str] = ("it-to-pt",),
    components: Sequence[str] = tuple(COMPONENTS),
    windows: str | None = None,
    late_start_depth: float = LATE_START_DEPTH,
    batch_size: int = 4,
) -> pd.DataFrame:
    """Tidy patching effects: one row per (prompt, direction, component, layer or window).

    Args:
        pair: a :class:`~hooklab.pair.ModelPair`.
        histories: shared histories (IT's greedy responses, the same tokens for both models).
        directions: ``it-to-pt`` (IT's activation into PT) and/or ``pt-to-it``.
        components: any of :data:`COMPONENTS`.
        windows: a window spec (:data:`hooklab.graft.windows.WINDOW_HELP`) patched as a whole;
            default every single layer.
        late_start_depth: the late region is :func:`hooklab.metrics.late_layers` of it.
        batch_size: histories per forward pass.
    """
    for direction in directions:
        if direction not in ("it-to-pt", "pt-to-it"):
            raise HooklabError(f"direction={direction!r}: use 'it-to-pt' or 'pt-to-it'.")
    for component in components:
        Setter(component, 0)  # validates the name
    n_layers = pair.n_layers
    if windows is None:
        targets = [Window(f"L{layer}", layer, layer + 1) for layer in range(n_layers)]
    else:
        targets = parse_windows(windows, n_layers)
    late = late_layers(n_layers, late_start_depth)
    conditions = [(c, w) for c in components for w in targets]
    names = [COMPONENTS[c](layer) for c, w in conditions for layer in w.layers]
    pad = pair.tokenizer.pad_token_id
    device = model_device(pair.pt)
    workspace = Workspace.plan(
        pair.d_vocab,
        n_layers,
        device,
        max_rows=batch_size * max(len(h.tokens) for h in histories),
        n_finals=1 + min(_VARIANTS_PER_READ, len(conditions)),
    )
    frames = []
    for first in range(0, len(histories), batch_size):
        batch = histories[first : first + batch_size]
        tokens, mask, read, next_tokens = (
            t.to(device) for t in pad_batch(batch, 0 if pad is None else int(pad))
        )
        keys = [h.prompt_id for h in batch]
        for direction in directions:
            host_side, donor_side = DIRECTIONS[direction]
            host, donor = pair.models()[host_side], pair.models()[donor_side]
            cache = donor_cache(donor, tokens, names, attention_mask=mask)
            base = residual_stream(host, tokens, attention_mask=mask, keep_block_inputs=True)
            baseline = None
            for start in range(0, len(conditions), _VARIANTS_PER_READ):
                group = conditions[start : start + _VARIANTS_PER_READ]
                variants = []
                for component, window in group:
                    stream = patch(
                        host, cache, tokens, setters_for(component, window.layers), base=base
                    )
                    variants.append((window.start, stream.resid_post))
                readouts = read_variants(
                    host,
                    base.resid_post,
                    variants,
                    read,
                    targets=next_tokens,
                    workspace=workspace,
                )
                values = [_reduce(r, read, late) for r in readouts]
                baseline = values[0] if baseline is None else baseline
                for (component, window), (kl, teacher) in zip(group, values[1:], strict=True):
                    frames.append(
                        pd.DataFrame(
                            {
                                "prompt_id": keys,
                                "direction": direction,
                                "component": component,
                                "window": window.name,
                                "layer": window.start if windows is None else -1,
                                "window_start": window.start,
                                "window_end": window.end,
                                "delta_late_kl": kl - baseline[0],
                                "delta_teacher_logprob": teacher - baseline[1],
                                "n_tokens": read.sum(dim=1).cpu().numpy(),
                                "late_layers": layers_label(late),
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True)


def _reduce(readout: Any, read: torch.Tensor, late: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: mean late-region KL to final, mean final-layer teacher log probability."""
    read = readout.read
    kl = readout.metrics["kl_to_final"][:, :, late].double().mean(dim=-1)
    kl = torch.where(read, kl, torch.zeros_like(kl)).sum(1) / read.sum(1).clamp_min(1)
    teacher = readout.metrics["target_logprob"][:, :, -1].double()
    valid = read & ~torch.isnan(teacher)
    teacher = torch.where(valid, teacher, torch.zeros_like(teacher)).sum(1)
    return kl.numpy(), (teacher / valid.sum(1).clamp_min(1)).numpy()


def patching_summary(table: pd.DataFrame, *, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Mean over prompts of each delta with its bootstrap CI, per (direction, component,
    window)."""
    rows = []
    keys = ["direction", "component", "window", "layer", "window_start", "window_end"]
    keys += ["late_layers"] if "late_layers" in table else []  # the read-out region
    table = in_prompt_order(table)  # bootstrap in prompt-id order
    for key, group in table.groupby(keys, sort=False, observed=True):
        for metric in ("delta_late_kl", "delta_teacher_logprob"):
            ci = bootstrap_mean_ci(group[metric].to_numpy(), seed=seed, level=level)
            rows.append(
                dict(zip(keys, key, strict=True))
                | {
                    "metric": metric,
                    "mean": ci.mean,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "sem": ci.sem,
                    "n_prompts": ci.n,
                }
            )
    return pd.DataFrame(rows)


def patching_heatmap(summary: pd.DataFrame, metric: str = "delta_late_kl") -> go.Figure:
    """Layer x component heatmap of ``metric``'s mean (a :func:`patching_summary` of
    per-layer patches), one panel per direction."""
    rows = summary[(summary["metric"] == metric) & (summary["layer"] >= 0)]
    if rows.empty:
        raise HooklabError(
            f"no per-layer rows for metric={metric!r}: pass the patching_summary of a "
            "run_patching table made without windows."
        )
    directions = list(dict.fromkeys(rows["direction"]))
    figure = make_subplots(
        rows=1, cols=len(directions), shared_yaxes=True, subplot_titles=directions
    )
    limit = float(np.nanmax(np.abs(rows["mean"].to_numpy()))) or 1.0
    for column, direction in enumerate(directions, start=1):
        grid = rows[rows["direction"] == direction].pivot_table(
            index="layer", columns="component", values="mean", observed=True
        )
        figure.add_trace(
            go.Heatmap(
                z=grid.to_numpy(),
                x=list(grid.columns),
                y=list(grid.index),
                colorscale="RdBu_r",
                zmin=-limit,
                zmax=limit,
                colorbar={"title": metric},
                showscale=column == 1,
                hovertemplate="layer %{y}, %{x}: %{z:.4f}<extra></extra>",
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="component", row=1, col=column)
    figure.update_yaxes(title_text="layer", row=1, col=1)
    figure.update_layout(title=f"Component patching: {metric}", template="plotly_white")
    return figure
