"""The readout experiment: lens metrics of a pair over a prompt set, under some conditions.

``run_readout(pair, prompts, ReadoutConfig(...))`` returns the long table described in
docs/tables.md; ``hooklab readout`` on the command line writes it with its manifest and summaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from tqdm.auto import tqdm

from hooklab.architectures import model_device
from hooklab.conditions import ReadSequence, build_sequences, check_conditions, pad_batch
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.lens import Lens, LogitLens, TunedLens
from hooklab.metrics import LATE_START_DEPTH, Workspace
from hooklab.prompts import Prompt
from hooklab.stream import read_lens
from hooklab.tables import readout_frame
from hooklab.types import Condition

__all__ = [
    "ReadoutConfig",
    "parse_lens_spec",
    "load_lenses",
    "run_readout",
    "write_readout_summaries",
]


@dataclass(frozen=True)
class ReadoutConfig(Config):
    """What a readout run does (also the ``[readout]`` TOML section and ``hooklab readout``)."""

    section: ClassVar[str] = "readout"

    conditions: tuple[Condition, ...] = ("native",)
    """Conditions: native, same_history, template_replay (comma-separated for several)."""
    lens: str = "logit"
    """'logit', or 'tuned:DIR' where DIR/pt and DIR/it hold tuned lenses."""
    max_new_tokens: int = 32
    """Length cap of the greedy continuations."""
    batch_size: int = 8
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the bootstrap summaries."""
    chunk_rows: int | None = None
    """Positions decoded at once (default: automatic, about 64 MB per buffer)."""
    late_start_depth: float = LATE_START_DEPTH
    """First depth (layer / (L - 1)) of the late region; the final layer is never in it."""
    truncate_long_prompts: bool = False
    """Cut prompts longer than the model context (with a warning) instead of refusing them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(check_conditions(list(self.conditions))))
        parse_lens_spec(self.lens)
        if self.batch_size < 1:
            raise HooklabError(f"batch_size={self.batch_size} must be at least 1.")
        if self.max_new_tokens < 1:
            raise HooklabError(f"max_new_tokens={self.max_new_tokens} must be at least 1.")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise HooklabError(f"chunk_rows={self.chunk_rows} must be at least 1 (or unset).")
        if not 0.0 < self.late_start_depth <= 1.0:
            raise HooklabError(
                f"late_start_depth={self.late_start_depth}: use a depth in (0, 1], e.g. "
                f"{LATE_START_DEPTH}."
            )


def parse_lens_spec(spec: str) -> tuple[str, Path | None]:
    """``"logit"`` -> ("logit", None); ``"tuned:DIR"`` -> ("tuned", DIR)."""
    kind, _, folder = spec.partition(":")
    if kind == "logit" and not folder:
        return "logit", None
    if kind == "tuned" and folder:
        return "tuned", Path(folder)
    raise HooklabError(
        f"lens={spec!r}: use 'logit', or 'tuned:DIR' where DIR/pt and DIR/it hold tuned lenses "
        "(train them with `hooklab train-lens`)."
    )


def load_lenses(pair: Any, spec: str) -> dict[str, Lens]:
    """The lens of each side of ``pair`` for a lens spec."""
    kind, folder = parse_lens_spec(spec)
    if kind == "logit":
        return {"pt": LogitLens(), "it": LogitLens()}
    return {side: TunedLens.load(folder / side, model) for side, model in pair.models().items()}


def _batches(sequences: Sequence[ReadSequence], size: int):
    for start in range(0, len(sequences), size):
        yield sequences[start : start + size]


def run_readout(
    pair: Any,
    prompts: Sequence[Prompt],
    config: ReadoutConfig | None = None,
    *,
    lenses: dict[str, Lens] | None = None,
    sequences: Sequence[ReadSequence] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Lens metrics of both models at every read position and layer, as one long table.

    ``sequences`` (from :func:`~hooklab.conditions.build_sequences`) are built here when not
    given; pass them to keep them (a run saves them beside its table).
    """
    config = config or ReadoutConfig()
    lenses = lenses or load_lenses(pair, config.lens)
    lens_name = parse_lens_spec(config.lens)[0]
    if sequences is None:
        sequences = build_sequences(
            pair,
            prompts,
            config.conditions,
            max_new_tokens=config.max_new_tokens,
            truncate_long_prompts=config.truncate_long_prompts,
            progress=progress,
        )
    categories = {p.id: p.category for p in prompts}
    pad_id = pair.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    groups: dict[tuple[str, str], list[ReadSequence]] = {}
    for seq in sequences:
        groups.setdefault((seq.condition, seq.model), []).append(seq)
    n_batches = sum(-(-len(g) // config.batch_size) for g in groups.values())
    device = model_device(pair.pt)
    most_rows = config.batch_size * max(len(s.tokens) for s in sequences)
    workspace = Workspace.plan(
        pair.d_vocab, pair.n_layers, device, rows=config.chunk_rows, max_rows=most_rows
    )
    frames = []
    with tqdm(total=n_batches, desc="lens readout", disable=not progress, unit="batch") as bar:
        for (_, side), group in groups.items():
            model = pair.models()[side]
            for batch in _batches(group, config.batch_size):
                tokens, mask, read, targets = pad_batch(batch, pad_id)
                readout = read_lens(
                    model,
                    tokens,
                    lenses[side],
                    attention_mask=mask,
                    read_mask=read,
                    targets=targets,
                    chunk_rows=config.chunk_rows,
                    workspace=workspace,
                )
                frames.append(readout_frame(batch, readout, lens=lens_name, categories=categories))
                bar.update()
    frame = pd.concat(frames, ignore_index=True)
    for column in ("prompt_id", "category", "condition", "model", "lens"):
        frame[column] = frame[column].astype("category")
    return frame


def write_readout_summaries(
    frame: pd.DataFrame, out: Path, *, seed: int = 0, late_start_depth: float = LATE_START_DEPTH
) -> list[Path]:
    """The summary CSVs of a readout table: per layer, per depth bin, gap, commitment."""
    from hooklab.atomic import atomic_write_csv
    from hooklab.summaries import (
        commitment_layers,
        commitment_summary,
        convergence_gap,
        depth_summary,
        layer_summary,
    )

    out = Path(out)
    tables = {
        "summary_layers.csv": layer_summary(frame, seed=seed),
        "summary_depth.csv": depth_summary(frame, seed=seed),
        "convergence_gap.csv": convergence_gap(frame, seed=seed, late_start_depth=late_start_depth),
        "commitment.csv": commitment_summary(commitment_layers(frame), seed=seed),
    }
    return [atomic_write_csv(out / name, table) for name, table in tables.items()]
