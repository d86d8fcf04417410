"""The ``opposition`` experiment: delta-cosine profiles of PT and IT (does each sublayer's
update add to, or oppose, the residual stream?), library :mod:`hooklab.mechanism.delta_cosine`.

Under ``same_history`` both models read the same tokens (IT's chat template and greedy
response) at the response positions; under ``native`` each model reads its own prompt format
and its own greedy continuation (:func:`hooklab.conditions.build_sequences`), at the positions
that predict it. The late-region IT - PT difference is paired by prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from hooklab.atomic import atomic_write_csv
from hooklab.conditions import build_sequences
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.experiments._mechanism import batches, pad_id, part_histories, plain, with_categories
from hooklab.graft.histories import SEQUENCES_DIR, save_sequences
from hooklab.mechanism.delta_cosine import (
    COMPONENTS,
    OppositionSummary,
    delta_cosines,
    opposition_summary,
)
from hooklab.metrics import LATE_START_DEPTH, layers_from_label

__all__ = ["OppositionConfig", "OppositionExperiment"]

LAYERS_CSV = "opposition_layers.csv"
LATE_CSV = "opposition_late.csv"


@dataclass(frozen=True)
class OppositionConfig(Config):
    """What an opposition (delta-cosine) run does (the ``[opposition]`` TOML section too)."""

    section: ClassVar[str] = "opposition"

    conditions: tuple[Literal["same_history", "native"], ...] = ("same_history",)
    """same_history (both models on IT's template + response), native (each on its own)."""
    max_new_tokens: int = 32
    """Length cap of the greedy responses read."""
    batch_size: int = 8
    """Sequences per forward pass."""
    late_start_depth: float = LATE_START_DEPTH
    """The late region: layers of depth layer / (L - 1) >= this, final layer excluded."""
    seed: int = 0
    """Seed of the bootstrap summaries."""
    truncate_long_prompts: bool = False
    """Cut prompts longer than the model context (with a warning) instead of refusing them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(dict.fromkeys(self.conditions)))
        bad = [c for c in self.conditions if c not in ("same_history", "native")]
        if bad or not self.conditions:
            raise HooklabError(
                f"opposition.conditions={','.join(self.conditions) or '(none)'}: use "
                "same_history and/or native."
            )
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise HooklabError(
                f"opposition: batch_size={self.batch_size} and max_new_tokens="
                f"{self.max_new_tokens} must be at least 1."
            )
        if not 0.0 <= self.late_start_depth <= 1.0:
            raise HooklabError(
                f"opposition.late_start_depth={self.late_start_depth}: use a depth in [0, 1]."
            )


def _sequences(part: PartInput[OppositionConfig]) -> dict[str, dict[str, list[Any]]]:
    """condition -> model -> the part's sequences (in prompt order)."""
    config = part.config
    out: dict[str, dict[str, list[Any]]] = {}
    if "same_history" in config.conditions and (
        part.histories is not None or "native" not in config.conditions
    ):
        histories = part_histories(
            part, max_new_tokens=config.max_new_tokens, truncate=config.truncate_long_prompts
        )
        out["same_history"] = {"pt": histories, "it": histories}
    wanted = [c for c in config.conditions if c not in out]
    if wanted:  # native, or both conditions from one generation of IT's responses
        sequences = build_sequences(
            part.pair,
            part.prompts,
            wanted,
            max_new_tokens=config.max_new_tokens,
            truncate_long_prompts=config.truncate_long_prompts,
            progress=False,
        )
        save_sequences(sequences, part.out / SEQUENCES_DIR, f"{part.part_name}.jsonl")
        for condition in wanted:
            out[condition] = {
                side: [s for s in sequences if s.condition == condition and s.model == side]
                for side in ("pt", "it")
            }
    return {c: out[c] for c in config.conditions}


def summary_of(frame: pd.DataFrame, condition: str, config: OppositionConfig) -> OppositionSummary:
    """The :class:`OppositionSummary` of one condition of an opposition table."""
    rows = plain(frame[frame["condition"] == condition]).rename(columns={"prompt_id": "row"})
    return opposition_summary(
        rows[rows["model"] == "pt"],
        rows[rows["model"] == "it"],
        config.late_start_depth,
        seed=config.seed,
    )


def read_summary(run_dir: Path, condition: str) -> OppositionSummary:
    """The :class:`OppositionSummary` of one condition, from a run's CSVs."""
    layers = pd.read_csv(run_dir / LAYERS_CSV)
    late = pd.read_csv(run_dir / LATE_CSV, dtype={"late_layers": str})
    layers = layers[layers["condition"] == condition].drop(columns="condition")
    late = late[late["condition"] == condition].drop(columns="condition")
    late_set = tuple(layers_from_label(str(late["late_layers"].iloc[0])))
    return OppositionSummary(layers.reset_index(drop=True), late.reset_index(drop=True), late_set)


def _leading(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with ``columns`` first and a fresh index."""
    rest = [c for c in frame.columns if c not in columns]
    return frame[columns + rest].reset_index(drop=True)


class OppositionExperiment(Experiment[OppositionConfig]):
    name = "opposition"
    config_type = OppositionConfig
    table = "opposition"
    summary = "Delta-cosine profiles: do attention / MLP updates oppose the residual, PT vs IT?"
    uses_histories = True

    def plan(self, config: OppositionConfig, n_prompts: int, n_layers: int) -> PlanEstimate:
        n = len(config.conditions)
        generating = (1 + ("native" in config.conditions)) * config.max_new_tokens
        return PlanEstimate(
            forward_passes=n_prompts * (generating + 2 * n),
            rows=n_prompts * 2 * n * n_layers * len(COMPONENTS),
        )

    def run_part(self, part: PartInput[OppositionConfig]) -> pd.DataFrame:
        config = part.config
        pad = pad_id(part.pair)
        frames = []
        for condition, by_model in _sequences(part).items():
            for side, model in part.pair.models().items():
                for batch in batches(by_model[side], config.batch_size, pad):
                    rows = delta_cosines(
                        model,
                        batch.tokens,
                        batch.read_mask,
                        attention_mask=batch.attention_mask,
                        row_ids=batch.prompt_ids,
                    ).rename(columns={"row": "prompt_id"})
                    rows.insert(1, "model", side)
                    rows.insert(2, "condition", condition)
                    frames.append(rows)
        frame = pd.concat(frames, ignore_index=True)
        frame["prompt_id"] = frame["prompt_id"].astype(str)
        return with_categories(frame, part.prompts)

    def summarise(self, frame: pd.DataFrame, out: Path, config: OppositionConfig) -> list[Path]:
        layers, late = [], []
        for condition in dict.fromkeys(plain(frame)["condition"]):
            summary = summary_of(frame, condition, config)
            layers.append(summary.per_layer.assign(condition=condition))
            late.append(summary.late.assign(condition=condition))
        layers_frame = _leading(
            pd.concat(layers), ["condition", "model", "component", "layer", "depth"]
        )
        late_frame = _leading(pd.concat(late), ["condition", "component"])
        return [
            atomic_write_csv(out / LAYERS_CSV, layers_frame),
            atomic_write_csv(out / LATE_CSV, late_frame),
        ]

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.mechanism.figures import delta_cosine_figure
        from hooklab.viz.figures import save_html

        written = []
        for condition in dict.fromkeys(pd.read_csv(run_dir / LATE_CSV)["condition"]):
            figure = delta_cosine_figure(read_summary(run_dir, condition))
            figure.update_layout(title=f"{figure.layout.title.text} ({condition})")
            written.append(save_html(figure, figures_dir / f"opposition_{condition}.html"))
        return written

    def report_section(self, run_dir: Path) -> str:
        return heading("Late-region delta-cosine, IT - PT (paired by prompt)") + csv_table(
            run_dir / LATE_CSV,
            [
                "condition",
                "component",
                "late_layers",
                "mean",
                "ci_low",
                "ci_high",
                "p_sign_flip",
                "n_prompts",
            ],
        )

    def headline(self, run_dir: Path) -> list[str]:
        late = pd.read_csv(run_dir / LATE_CSV, dtype={"late_layers": str})
        lines = [f"wrote {run_dir / 'opposition.parquet'}, {LAYERS_CSV} and {LATE_CSV}"]
        # the headline component first: the MLP under the same history
        order = late.assign(
            first=~((late["component"] == "mlp") & (late["condition"] == "same_history"))
        ).sort_values("first", kind="stable")
        for row in order.itertuples():
            lines.append(
                f"late-layer delta-cosine IT - PT ({row.component}, {row.condition}): "
                f"{row.mean:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}], layers "
                f"{row.late_layers}, {int(row.n_prompts)} prompts, p={row.p_sign_flip:.3g}"
            )
        return lines


register_experiment(OppositionExperiment())
