"""A graft sweep: directions x modes x windows over shared histories, without redoing work.

Per batch of histories, each model's ungrafted pass runs once and keeps its residual stream,
its block inputs and its MLP outputs (for splice); every window then reruns only the host's
blocks from the window's first layer on (:func:`~hooklab.forward.resume_residual_stream`),
and the windows' streams are read together with the ungrafted one, sharing its early layers
(:func:`~hooklab.stream.read_variants`). A random control is scaled to the norms the module
graft of the same window and part recorded in its own pass (run for the norms alone when the
module graft itself is not asked for).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hooklab.architectures import model_device
from hooklab.conditions import pad_batch
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.forward import ResidualStream, residual_stream, resume_residual_stream
from hooklab.graft.engine import DIRECTIONS, MODES, graft_hooks, mlp_out_hooks
from hooklab.graft.histories import History
from hooklab.graft.windows import Window, parse_windows
from hooklab.lens import Lens
from hooklab.metric_specs import METRICS, check_extra_metrics
from hooklab.metrics import LATE_START_DEPTH, Workspace
from hooklab.moe import check_parts
from hooklab.stream import LensReadout, read_variants
from hooklab.types import Direction, Mode, MoEPart, Router

__all__ = ["GraftConfig", "run_graft", "prompt_means", "condition_rows", "finish_table"]

#: Grafted streams read together with the ungrafted one (bounds memory: each is a full
#: [layer, batch, pos, d_model] residual stream).
_VARIANTS_PER_READ = 8


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
    late_start_depth: float = LATE_START_DEPTH
    """First depth (layer / (L - 1)) of the late region; the final layer is never in it."""
    truncate_long_prompts: bool = False
    """Cut prompts longer than the model context (with a warning) instead of refusing them."""
    metrics: tuple[str, ...] = ()
    """Opt-in metrics added to the table (e.g. js_to_final)."""

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
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes or not self.modes:
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
        check_extra_metrics(self.metrics, "metrics")
        from hooklab.readout import parse_lens_spec  # readout imports graft's neighbours

        parse_lens_spec(self.lens)
        if not 0.0 < self.late_start_depth <= 1.0:  # NaN fails this too
            raise HooklabError(
                f"late_start_depth={self.late_start_depth}: use a depth in (0, 1], e.g. "
                f"{LATE_START_DEPTH} (the default)."
            )


def prompt_means(readout: LensReadout) -> dict[str, np.ndarray]:
    """Per (row, layer) means over the read positions, and the token count per row.

    Metrics that need a target token average over the read positions that have one.
    """
    read = readout.read.unsqueeze(-1)
    counts = readout.read.sum(dim=1)
    out = {}
    for name, values in readout.metrics.items():
        spec = METRICS[name]
        valid = read & ~spec.missing(values) if "target" in spec.needs else read
        masked = torch.where(valid, values.double(), torch.zeros((), dtype=torch.float64))
        denominator = valid.sum(1) if "target" in spec.needs else counts.unsqueeze(-1)
        out[name] = (masked.sum(1) / denominator.clamp_min(1)).numpy()
    out["n_tokens"] = counts.numpy()
    return out


@dataclass(frozen=True)
class _Condition:
    """One grafted stream per host: a mode, an MoE part and a window."""

    mode: str
    part: MoEPart
    window: Window

    @property
    def norms_key(self) -> tuple[str, int, int]:
        """Which module graft a random control takes its norms from."""
        return (self.part, self.window.start, self.window.end)


@dataclass(frozen=True)
class _Direction:
    name: str
    host: str
    donor: str


class _Batch:
    """One batch of histories with each side's ungrafted pass, computed once."""

    def __init__(self, pair: Any, batch: Sequence[History], sides: set[str]):
        pad = pair.tokenizer.pad_token_id
        device = model_device(pair.pt)
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
                keep_block_inputs=True,
            )
            self.mlp_out[side] = store

    def grafted(
        self,
        pair: Any,
        direction: _Direction,
        condition: _Condition,
        config: GraftConfig,
        norms: dict[tuple[str, int, int], dict[int, torch.Tensor]],
    ) -> ResidualStream:
        """The host's stream under one graft, resumed from the window's first layer.

        A module graft records its change norms in ``norms``; a random control reads them
        there (running the module graft for them first if it has not run).
        """
        key = condition.norms_key
        if condition.mode == "random" and key not in norms:
            self.grafted(
                pair,
                direction,
                _Condition("module", condition.part, condition.window),
                config,
                norms,
            )
        models = pair.models()
        hooks_ = graft_hooks(
            models[direction.host],
            models[direction.donor],
            condition.window.layers,
            condition.mode,
            donor_mlp_out=self.mlp_out[direction.donor],
            module_norms=norms.get(key),
            record_norms=norms.setdefault(key, {}) if condition.mode == "module" else None,
            row_keys=self.keys,
            seed=config.seed,
            part=condition.part,
            router=config.router,
        )
        return resume_residual_stream(
            models[direction.host],
            self.streams[direction.host],
            condition.window.start,
            fwd_hooks=hooks_,
        )


@dataclass(frozen=True)
class _Plan:
    """What every batch does."""

    directions: tuple[_Direction, ...]
    conditions: tuple[_Condition, ...]
    sides: frozenset[str]
    per_read: int
    workspace: Workspace


def _plan(pair: Any, histories: Sequence[History], config: GraftConfig) -> _Plan:
    windows = parse_windows(config.windows, pair.n_layers)
    directions = tuple(_Direction(d, *DIRECTIONS[d]) for d in config.directions)
    conditions = tuple(
        _Condition(m, p, w) for m in config.modes for p in config.parts for w in windows
    )
    per_read = min(_VARIANTS_PER_READ, len(conditions))
    workspace = Workspace.plan(
        pair.d_vocab,
        pair.n_layers,
        model_device(pair.pt),
        max_rows=config.batch_size * max(len(h.tokens) for h in histories),
        n_finals=1 + per_read,
    )
    return _Plan(
        directions=directions,
        conditions=conditions,
        sides=frozenset(s for d in directions for s in (d.host, d.donor)),
        per_read=per_read,
        workspace=workspace,
    )


def _read(
    pair: Any,
    batch: _Batch,
    host: str,
    streams: Sequence[ResidualStream],
    starts: Sequence[int],
    lenses: dict[str, Lens],
    workspace: Workspace,
    metrics: Sequence[str],
) -> list[dict[str, np.ndarray]]:
    """Per-prompt lens metrics of ``streams[0]`` and of variants of it starting at
    ``starts`` (sharing its earlier layers), with IT's final as the teacher."""
    readouts = read_variants(
        pair.models()[host],
        streams[0].resid_post,
        [(s, stream.resid_post) for s, stream in zip(starts, streams[1:], strict=True)],
        batch.read,
        lenses[host],
        targets=batch.targets,
        teacher=(pair.it, batch.streams["it"].resid_post[-1]),
        workspace=workspace,
        metrics=metrics,
    )
    return [prompt_means(readout) for readout in readouts]


def _groups(conditions: Sequence[_Condition], size: int) -> Iterator[Sequence[_Condition]]:
    for first in range(0, len(conditions), size):
        yield conditions[first : first + size]


def _sweep_direction(
    pair: Any,
    batch: _Batch,
    direction: _Direction,
    plan: _Plan,
    config: GraftConfig,
    lenses: dict[str, Lens],
    bar: Any,
) -> list[pd.DataFrame]:
    """The ungrafted host's rows, then one block of rows per condition, for one batch."""
    norms: dict[tuple[str, int, int], dict[int, torch.Tensor]] = {}
    rows: list[pd.DataFrame] = []
    baseline = None
    for group in _groups(plan.conditions, plan.per_read):
        streams = [batch.grafted(pair, direction, c, config, norms) for c in group]
        values = _read(
            pair,
            batch,
            direction.host,
            [batch.streams[direction.host], *streams],
            [c.window.start for c in group],
            lenses,
            plan.workspace,
            config.metrics,
        )
        if baseline is None:
            baseline = values[0]
            rows.append(condition_rows(batch.keys, direction, None, baseline, baseline))
            bar.update()
        for condition, grafted in zip(group, values[1:], strict=True):
            rows.append(condition_rows(batch.keys, direction, condition, grafted, baseline))
            bar.update()
    return rows


def run_graft(
    pair: Any,
    histories: Sequence[History],
    config: GraftConfig,
    *,
    lenses: dict[str, Lens],
    categories: dict[str, str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The graft table: one row per (prompt, direction, mode, window, layer).

    Rows with ``mode == "none"`` are each host's ungrafted pass. Metric columns are means over
    a prompt's response positions; ``delta_<metric>`` is the grafted minus the ungrafted host on
    the same tokens; ``kl_to_teacher`` is KL(p_layer ‖ IT's final distribution).
    """
    plan = _plan(pair, histories, config)
    n_batches = -(-len(histories) // config.batch_size)
    rows: list[pd.DataFrame] = []
    with tqdm(
        total=n_batches * len(plan.directions) * (1 + len(plan.conditions)),
        desc="graft sweep",
        disable=not progress,
        unit="pass",
    ) as bar:
        for start in range(0, len(histories), config.batch_size):
            batch = _Batch(pair, histories[start : start + config.batch_size], set(plan.sides))
            for direction in plan.directions:
                rows += _sweep_direction(pair, batch, direction, plan, config, lenses, bar)
    return finish_table(rows, categories)


def finish_table(rows: list[pd.DataFrame], categories: dict[str, str] | None) -> pd.DataFrame:
    """The blocks of :func:`condition_rows` as one table, with categories and categorical keys."""
    table = pd.concat(rows, ignore_index=True)
    table.insert(1, "category", [(categories or {}).get(p, "") for p in table["prompt_id"]])
    for column in ("prompt_id", "category", "direction", "host", "donor", "mode", "part", "window"):
        table[column] = table[column].astype("category")
    return table


def condition_rows(
    keys: Sequence[str],
    direction: _Direction,
    condition: _Condition | None,
    values: dict[str, np.ndarray],
    baseline: dict[str, np.ndarray],
) -> pd.DataFrame:
    """Rows of one condition (``None``: the ungrafted host) for a batch: prompt x layer."""
    batch, n_layers = values["kl_to_final"].shape
    layer = np.tile(np.arange(n_layers), batch)
    window = None if condition is None else condition.window
    data: dict[str, Any] = {
        "prompt_id": np.repeat(keys, n_layers),
        "direction": direction.name,
        "host": direction.host,
        "donor": direction.donor,
        "mode": "none" if condition is None else condition.mode,
        "part": "none" if condition is None else condition.part,
        "window": "none" if window is None else window.name,
        "window_start": -1 if window is None else window.start,
        "window_end": -1 if window is None else window.end,
        "layer": layer,
        "n_layers": n_layers,
        "depth": layer / max(n_layers - 1, 1),
        "n_tokens": np.repeat(values["n_tokens"], n_layers),
    }
    names = [name for name in values if name in METRICS]
    for name in names:
        data[name] = values[name].reshape(-1)
    for name in names:
        data[f"delta_{name}"] = (values[name] - baseline[name]).reshape(-1)
    return pd.DataFrame(data)
