"""The ``readout`` experiment: lens metrics of both models at every read position and layer,
the convergence gap and commitment layers (library: :mod:`hooklab.readout`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from hooklab.conditions import build_sequences
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.graft.histories import SEQUENCES_DIR, save_sequences
from hooklab.readout import ReadoutConfig, load_lenses, run_readout, write_readout_summaries

__all__ = ["ReadoutExperiment"]


class ReadoutExperiment(Experiment[ReadoutConfig]):
    name = "readout"
    config_type = ReadoutConfig
    table = "readout"
    summary = "Lens metrics of both models at every position and layer; the convergence gap."

    def plan(self, config: ReadoutConfig, n_prompts: int, n_layers: int) -> PlanEstimate:
        generating = 2 if "native" in config.conditions else 1
        n_conditions = len(config.conditions)
        passes = n_prompts * (generating * config.max_new_tokens + 2 * n_conditions)
        rows = n_prompts * 2 * n_conditions * config.max_new_tokens * n_layers
        return PlanEstimate(forward_passes=passes, rows=rows)

    def prepare(self, pair: Any, config: ReadoutConfig) -> Any:
        return load_lenses(pair, config.lens)

    def describe_context(self, context: Any) -> dict[str, Any]:
        return {"lenses": {side: lens.describe() for side, lens in context.items()}}

    def run_part(self, part: PartInput[ReadoutConfig]) -> pd.DataFrame:
        config = part.config
        sequences = build_sequences(
            part.pair,
            part.prompts,
            config.conditions,
            max_new_tokens=config.max_new_tokens,
            truncate_long_prompts=config.truncate_long_prompts,
            progress=False,
        )
        # every sequence beside the table: rows can be re-derived, IT responses reused
        save_sequences(sequences, part.out / SEQUENCES_DIR, f"{part.part_name}.jsonl")
        return run_readout(
            part.pair,
            part.prompts,
            config,
            lenses=part.context,
            sequences=sequences,
            progress=False,
        )

    def summarise(self, frame: pd.DataFrame, out: Path, config: ReadoutConfig) -> list[Path]:
        return write_readout_summaries(
            frame, out, seed=config.seed, late_start_depth=config.late_start_depth
        )

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.viz.figures import (
            commitment_figure,
            convergence_figure,
            heatmap_figure,
            save_html,
        )

        table = pd.read_parquet(run_dir / "readout.parquet")
        first = str(table["prompt_id"].iloc[0])
        return [
            save_html(convergence_figure(table), figures_dir / "convergence.html"),
            save_html(commitment_figure(table), figures_dir / "commitment.html"),
            save_html(heatmap_figure(table, first), figures_dir / "heatmap.html"),
        ]

    def report_section(self, run_dir: Path) -> str:
        return "".join(
            [
                heading("Convergence gap (IT - PT, kl_to_final, late region)"),
                csv_table(
                    run_dir / "convergence_gap.csv",
                    [
                        "condition",
                        "late_layers",
                        "mean",
                        "ci_low",
                        "ci_high",
                        "n_prompts",
                        "n_tokens_pt",
                        "n_tokens_it",
                        "n_tokens",
                    ],
                    lambda f: f[f["region"] == "late"],
                ),
                heading("Commitment depth"),
                csv_table(
                    run_dir / "commitment.csv",
                    [
                        "rule",
                        "condition",
                        "model",
                        "mean",
                        "ci_low",
                        "ci_high",
                        "never_fraction",
                        "n_prompts",
                    ],
                    lambda f: f[f["rule"].isin(["kl<0.1", "top1"])],
                ),
            ]
        )

    def headline(self, run_dir: Path) -> list[str]:
        gap = pd.read_csv(run_dir / "convergence_gap.csv")
        lines = [f"wrote {run_dir / 'readout.parquet'} and summaries in {run_dir}"]
        for row in gap[gap["region"] == "late"].itertuples():
            lines.append(
                f"convergence gap (IT - PT late-region KL), {row.condition}: {row.mean:+.4f} "
                f"nats [{row.ci_low:+.4f}, {row.ci_high:+.4f}], {row.n_prompts} prompts"
            )
        return lines


register_experiment(ReadoutExperiment())
