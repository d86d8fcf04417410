"""A graft sweep: directions x modes x windows over shared histories, without redoing work.

Per batch of histories, each model's ungrafted pass runs once and keeps its residual stream,
its block inputs and (for splice) its MLP outputs; every window then reruns only the host's
blocks from the window's first layer on (:func:`~hooklab.forward.resume_residual_stream`).
The naive way (``reuse=False``: one donor pass and one full host pass per window) gives the
same numbers and exists for checks and benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hooklab.conditions import pad_batch
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.forward import ResidualStream, residual_stream, resume_residual_stream
from hooklab.graft.engine import DIRECTIONS, MODES, graft_hooks, mlp_out_hooks
from hooklab.graft.histories import History
from hooklab.graft.windows import Window, parse_windows
from hooklab.lens import Lens
from hooklab.metrics import METRIC_NAMES, Workspace
from hooklab.moe import check_parts
from hooklab.stream import LensReadout, read_variants
from hooklab.types import Direction, Mode, MoEPart, Router

__all__ = ["GraftConfig", "run_graft", "GRAFT_METRICS"]

#: Grafted streams read together with the ungrafted one (bounds memory: each is a full
#: [layer, batch, pos, d_model] residual stream).
_VARIANTS_PER_READ = 8

GRAFT_METRICS = METRIC_NAMES


@dataclass(frozen=True)
class GraftConfig(Config):
    """What a graft sweep does (also the ``[graft]`` TOML section and ``hooklab graft``).

    The defaults are the paper's symmetric design: the graft and the swap, each with the
    norm-matched random control, over late / mid / early windows.
    """

    section: ClassVar[str] = "graft"

    directions: tuple[Direction, ...] = ("it-to-pt", "pt-to-it")
    """it-to-pt (graft), pt-to-it (swap), both, self-pt, self-it (no-op checks); comma-separated."""
    windows: str = "late,mid,early"
    """Windows: late,mid,early | last25 | all | a:b,... | sliding:W[:S]."""
    modes: tuple[Mode, ...] = ("module", "random")
    """module (donor MLP path on the host's residual), splice, random (norm-matched control)."""
    parts: tuple[MoEPart, ...] = ("mlp",)
    """MoE models: what comes from the donor: mlp, moe, shared, routed."""
    router: Router = "host"
    """Routed-expert grafts: whose router picks the experts (host, donor)."""
    lens: str = "logit"
    """'logit', or 'tuned:DIR' where DIR/pt and DIR/it hold tuned lenses."""
    max_new_tokens: int = 32
    """Length cap of IT's greedy responses (the shared histories)."""
    batch_size: int = 8
    """Histories per forward pass."""
    seed: int = 0
    """Seed of the random control and of the bootstrap summaries."""
    late_start_depth: float = 0.75
    """First depth (layer / (L - 1)) of the late region; the final layer is never in it."""
    truncate_long_prompts: bool = False
    """Cut prompts longer than the model context (with a warning) instead of refusing them."""

    def __post_init__(self) -> None:
        directions = list(self.directions)
        if "both" in directions:
            at = directions.index("both")
            directions[at : at + 1] = ["it-to-pt", "pt-to-it"]
        object.__setattr__(self, "directions", tuple(dict.fromkeys(directions)))
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise HooklabError(
                f"direction={','.join(self.directions)}: accepted directions are "
                f"{', '.join(DIRECTIONS)} and both."
            )
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise HooklabError(
                f"mode={','.join(self.modes)}: accepted modes are {', '.join(MODES)}."
            )
        if self.batch_size < 1:
            raise HooklabError(f"batch_size={self.batch_size} must be at least 1.")
        if self.max_new_tokens < 1:
            raise HooklabError(f"max_new_tokens={self.max_new_tokens} must be at least 1.")
        check_parts(list(self.parts))
        if self.router not in ("host", "donor"):
            raise HooklabError(f"router={self.router!r}: use 'host' or 'donor'.")
        if "splice" in self.modes and any(p != "mlp" for p in self.parts):
            raise HooklabError(
                "expert-level parts need modes 'module' or 'random': splice "
                "copies the donor's whole hook_mlp_out."
            )


def _per_prompt(readout: LensReadout) -> dict[str, np.ndarray]:
    """Per (row, layer) means over the read positions, and the token count per row."""
    read = readout.read.unsqueeze(-1)
    counts = readout.read.sum(dim=1)
    out = {}
    for name, values in readout.metrics.items():
        values = values.double()
        masked = torch.where(read, values, torch.zeros_like(values))
        if name.startswith("target"):
            valid = read & ~torch.isnan(values) & (values >= 0 if name == "target_rank" else True)
            masked = torch.where(valid, values, torch.zeros_like(values))
            out[name] = (masked.sum(1) / valid.sum(1).clamp_min(1)).numpy()
        else:
            out[name] = (masked.sum(1) / counts.clamp_min(1).unsqueeze(-1)).numpy()
    out["n_tokens"] = counts.numpy()
    return out


class _Batch:
    """One batch of histories with each side's ungrafted pass, computed once."""

    def __init__(self, pair: Any, batch: Sequence[History], sides: set[str], reuse: bool):
        pad = pair.tokenizer.pad_token_id
        device = pair.pt.unembed.original_component.weight.device
        tokens, mask, read, targets = pad_batch(batch, 0 if pad is None else int(pad))
        self.tokens, self.mask = tokens.to(device), mask.to(device)
        self.read, self.targets = read, targets
        self.keys = [h.prompt_id for h in batch]
        self.streams: dict[str, ResidualStream] = {}
        self.mlp_out: dict[str, dict[int, torch.Tensor]] = {}
        for side in sorted(sides | {"it"}):  # IT is always the teacher
            store: dict[int, torch.Tensor] = {}
            self.streams[side] = residual_stream(
                pair.models()[side],
                self.tokens,
                attention_mask=self.mask,
                fwd_hooks=mlp_out_hooks(pair.n_layers, store),
                keep_block_inputs=reuse,
            )
            self.mlp_out[side] = store

    def metrics(
        self,
        pair: Any,
        side: str,
        streams: Sequence[ResidualStream],
        lenses: dict[str, Lens],
        workspace: Workspace,
        starts: Sequence[int] = (),
    ) -> list[dict[str, np.ndarray]]:
        """Per-prompt lens metrics of ``streams[0]`` and of variants of it starting at
        ``starts`` (sharing its earlier layers), with IT's final as the teacher."""
        readouts = read_variants(
            pair.models()[side],
            streams[0].resid_post,
            [(s, stream.resid_post) for s, stream in zip(starts, streams[1:], strict=True)],
            self.read,
            lenses[side],
            targets=self.targets,
            teacher=(pair.it, self.streams["it"].resid_post[-1]),
            workspace=workspace,
        )
        return [_per_prompt(readout) for readout in readouts]

    def grafted(
        self,
        pair: Any,
        host: str,
        donor: str,
        window: Window,
        mode: str,
        part: str,
        config: GraftConfig,
        reuse: bool,
    ) -> ResidualStream:
        models = pair.models()
        donor_out = self.mlp_out[donor]
        if not reuse and mode == "splice":  # the naive way recomputes the donor per window
            donor_out = {}
            residual_stream(
                models[donor],
                self.tokens,
                attention_mask=self.mask,
                fwd_hooks=mlp_out_hooks(pair.n_layers, donor_out),
            )
        hooks_ = graft_hooks(
            models[host],
            models[donor],
            window.layers,
            mode,
            donor_mlp_out=donor_out,
            row_keys=self.keys,
            seed=config.seed,
            part=part,
            router=config.router,
        )
        if reuse:
            return resume_residual_stream(
                models[host], self.streams[host], window.start, fwd_hooks=hooks_
            )
        return residual_stream(
            models[host], self.tokens, attention_mask=self.mask, fwd_hooks=hooks_
        )


def run_graft(
    pair: Any,
    histories: Sequence[History],
    config: GraftConfig,
    *,
    lenses: dict[str, Lens],
    categories: dict[str, str] | None = None,
    reuse: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """The graft table: one row per (prompt, direction, mode, window, layer).

    Rows with ``mode == "none"`` are each host's ungrafted pass. Metric columns are means over
    a prompt's response positions; ``delta_<metric>`` is the grafted minus the ungrafted host on
    the same tokens; ``kl_to_teacher`` is KL(p_layer ‖ IT's final distribution).
    """
    windows = parse_windows(config.windows, pair.n_layers)
    directions = [(d, *DIRECTIONS[d]) for d in config.directions]
    sides = {s for _, host, donor in directions for s in (host, donor)}
    conditions = [(m, p, w) for m in config.modes for p in config.parts for w in windows]
    per_read = min(_VARIANTS_PER_READ, len(conditions))
    workspace = Workspace.plan(
        pair.d_vocab,
        pair.n_layers,
        pair.pt.unembed.original_component.weight.device,
        max_rows=config.batch_size * max(len(h.tokens) for h in histories),
        n_finals=1 + (per_read if reuse else 0),
    )
    n_batches = -(-len(histories) // config.batch_size)
    rows: list[pd.DataFrame] = []
    bar = tqdm(
        total=n_batches * len(directions) * (1 + len(conditions)),
        desc="graft sweep",
        disable=not progress,
        unit="pass",
    )
    for start in range(0, len(histories), config.batch_size):
        batch = _Batch(pair, histories[start : start + config.batch_size], sides, reuse)
        for direction, host, donor in directions:

            def frame(
                mode,
                window,
                values,
                baseline,
                part,
                keys=batch.keys,
                direction=direction,
                host=host,
                donor=donor,
            ):
                return _frame(
                    keys,
                    direction,
                    host,
                    donor,
                    mode,
                    part,
                    window,
                    values,
                    baseline,
                    pair.n_layers,
                )

            if not reuse:  # the naive way: every window read on its own
                baseline = batch.metrics(pair, host, [batch.streams[host]], lenses, workspace)[0]
                rows.append(frame("none", None, baseline, baseline, "none"))
                bar.update()
                for mode, part, window in conditions:
                    stream = batch.grafted(pair, host, donor, window, mode, part, config, False)
                    values = batch.metrics(pair, host, [stream], lenses, workspace)[0]
                    rows.append(frame(mode, window, values, baseline, part))
                    bar.update()
                continue
            baseline = None
            for first in range(0, len(conditions), per_read):
                group = conditions[first : first + per_read]
                streams = [
                    batch.grafted(pair, host, donor, window, mode, part, config, True)
                    for mode, part, window in group
                ]
                values = batch.metrics(
                    pair,
                    host,
                    [batch.streams[host], *streams],
                    lenses,
                    workspace,
                    starts=[w.start for _, _, w in group],
                )
                if baseline is None:
                    baseline = values[0]
                    rows.append(frame("none", None, baseline, baseline, "none"))
                    bar.update()
                for (mode, part, window), grafted in zip(group, values[1:], strict=True):
                    rows.append(frame(mode, window, grafted, baseline, part))
                    bar.update()
    bar.close()
    frame = pd.concat(rows, ignore_index=True)
    frame.insert(1, "category", [(categories or {}).get(p, "") for p in frame["prompt_id"]])
    for column in ("prompt_id", "category", "direction", "host", "donor", "mode", "part", "window"):
        frame[column] = frame[column].astype("category")
    return frame


def _frame(
    keys,
    direction,
    host,
    donor,
    mode,
    part,
    window: Window | None,
    values,
    baseline,
    n_layers: int,
) -> pd.DataFrame:
    batch = len(keys)
    layer = np.tile(np.arange(n_layers), batch)
    data: dict[str, Any] = {
        "prompt_id": np.repeat(keys, n_layers),
        "direction": direction,
        "host": host,
        "donor": donor,
        "mode": mode,
        "part": part,
        "window": "none" if window is None else window.name,
        "window_start": -1 if window is None else window.start,
        "window_end": -1 if window is None else window.end,
        "layer": layer,
        "n_layers": n_layers,
        "depth": layer / max(n_layers - 1, 1),
        "n_tokens": np.repeat(values["n_tokens"], n_layers),
    }
    for name in GRAFT_METRICS:
        data[name] = values[name].reshape(-1)
    for name in GRAFT_METRICS:
        data[f"delta_{name}"] = (values[name] - baseline[name]).reshape(-1)
    return pd.DataFrame(data)
