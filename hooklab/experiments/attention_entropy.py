"""The ``attention-entropy`` experiment: per-head attention entropy of PT and IT on shared
histories, and its IT - PT difference per layer and head (library:
:mod:`hooklab.mechanism.attention_entropy`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from hooklab.atomic import atomic_write_csv
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.experiments._mechanism import (
    batches,
    ci_row,
    pad_id,
    part_histories,
    plain,
    with_categories,
)
from hooklab.mechanism.attention_entropy import attention_entropies, entropy_difference
from hooklab.metrics import LATE_START_DEPTH, late_layers, layers_label

__all__ = ["AttentionEntropyConfig", "AttentionEntropyExperiment"]

LAYERS_CSV = "attention_entropy_layers.csv"
HEADS_CSV = "attention_entropy_heads.csv"
LATE_CSV = "attention_entropy_late.csv"


@dataclass(frozen=True)
class AttentionEntropyConfig(Config):
    """What an attention-entropy run does (the ``[attention-entropy]`` TOML section too)."""

    section: ClassVar[str] = "attention-entropy"

    max_new_tokens: int = 32
    """Length cap of IT's greedy responses (the shared histories)."""
    batch_size: int = 8
    """Histories per forward pass."""
    late_start_depth: float = LATE_START_DEPTH
    """The late region: layers of depth layer / (L - 1) >= this, final layer excluded."""
    seed: int = 0
    """Seed of the bootstrap summaries."""
    truncate_long_prompts: bool = False
    """Cut prompts longer than the model context (with a warning) instead of refusing them."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise HooklabError(
                f"attention-entropy: batch_size={self.batch_size} and max_new_tokens="
                f"{self.max_new_tokens} must be at least 1."
            )
        if not 0.0 <= self.late_start_depth <= 1.0:
            raise HooklabError(
                f"attention-entropy.late_start_depth={self.late_start_depth}: use a depth in "
                "[0, 1]."
            )


def _sides(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = plain(frame).rename(columns={"prompt_id": "row"})
    return rows[rows["model"] == "pt"], rows[rows["model"] == "it"]


class AttentionEntropyExperiment(Experiment[AttentionEntropyConfig]):
    name = "attention-entropy"
    config_type = AttentionEntropyConfig
    table = "attention_entropy"
    summary = "Per-head attention entropy of PT and IT on shared histories; IT - PT by layer."
    uses_histories = True

    def plan(self, config: AttentionEntropyConfig, n_prompts: int, n_layers: int) -> PlanEstimate:
        # heads are unknown before the weights load: 8 per layer is the estimate
        return PlanEstimate(
            forward_passes=n_prompts * (config.max_new_tokens + 2),
            rows=n_prompts * 2 * n_layers * 8,
        )

    def run_part(self, part: PartInput[AttentionEntropyConfig]) -> pd.DataFrame:
        config = part.config
        histories = part_histories(
            part, max_new_tokens=config.max_new_tokens, truncate=config.truncate_long_prompts
        )
        pad = pad_id(part.pair)
        frames = []
        for side, model in part.pair.models().items():
            for batch in batches(histories, config.batch_size, pad):
                rows = attention_entropies(
                    model,
                    batch.tokens,
                    batch.read_mask,
                    attention_mask=batch.attention_mask,
                    row_ids=batch.prompt_ids,
                ).rename(columns={"row": "prompt_id"})
                rows.insert(1, "model", side)
                frames.append(rows)
        frame = pd.concat(frames, ignore_index=True)
        frame["prompt_id"] = frame["prompt_id"].astype(str)
        return with_categories(frame, part.prompts)

    def summarise(
        self, frame: pd.DataFrame, out: Path, config: AttentionEntropyConfig
    ) -> list[Path]:
        pt, it = _sides(frame)
        by_layer = entropy_difference(pt, it, seed=config.seed)
        by_head = entropy_difference(pt, it, by_head=True, seed=config.seed)
        late = late_layers(int(pt["layer"].max()) + 1, config.late_start_depth)
        per_prompt = [
            side[side["layer"].isin(late)].groupby("row")["entropy"].mean() for side in (pt, it)
        ]
        difference = per_prompt[1] - per_prompt[0].reindex(per_prompt[1].index)
        late_row = {
            "late_layers": layers_label(late),
            "mean_pt": float(per_prompt[0].mean()),
            "mean_it": float(per_prompt[1].mean()),
        } | ci_row(difference.to_numpy(), config.seed)
        return [
            atomic_write_csv(out / LAYERS_CSV, by_layer),
            atomic_write_csv(out / HEADS_CSV, by_head),
            atomic_write_csv(out / LATE_CSV, pd.DataFrame([late_row])),
        ]

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.mechanism.figures import attention_entropy_figure
        from hooklab.viz.figures import save_html

        pt, it = _sides(pd.read_parquet(run_dir / f"{self.table}.parquet"))
        figure = attention_entropy_figure(pt, it)
        return [save_html(figure, figures_dir / "attention_entropy_difference.html")]

    def report_section(self, run_dir: Path) -> str:
        columns = ["mean_pt", "mean_it", "mean", "ci_low", "ci_high", "p_sign_flip", "n_prompts"]
        return (
            heading("Attention entropy (nats), late region, IT - PT (heads averaged)")
            + csv_table(run_dir / LATE_CSV, ["late_layers", *columns])
            + heading("Attention entropy (nats) by layer, IT - PT")
            + csv_table(run_dir / LAYERS_CSV, ["layer", "depth", *columns])
        )

    def headline(self, run_dir: Path) -> list[str]:
        late = pd.read_csv(run_dir / LATE_CSV, dtype={"late_layers": str}).iloc[0]
        layers = pd.read_csv(run_dir / LAYERS_CSV)
        top = layers.loc[layers["mean"].abs().idxmax()]
        return [
            f"wrote {run_dir / (self.table + '.parquet')}, {LAYERS_CSV}, {HEADS_CSV}, {LATE_CSV}",
            f"late-layer attention entropy IT - PT (heads averaged): {late['mean']:+.3f} nats "
            f"[{late['ci_low']:+.3f}, {late['ci_high']:+.3f}], layers {late['late_layers']}, "
            f"{int(late['n_prompts'])} prompts, p={late['p_sign_flip']:.3g}",
            f"largest layer difference: layer {int(top['layer'])} {top['mean']:+.3f} nats "
            f"[{top['ci_low']:+.3f}, {top['ci_high']:+.3f}]",
        ]


register_experiment(AttentionEntropyExperiment())
