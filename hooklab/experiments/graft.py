"""The ``graft`` experiment: matched-prefix MLP grafts over windows of layers, both directions,
with the norm-matched random control (library: :mod:`hooklab.graft`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.graft.effects import write_graft_summaries
from hooklab.graft.histories import (
    check_histories,
    load_histories,
    make_histories,
    save_histories,
)
from hooklab.graft.sweep import GraftConfig, run_graft
from hooklab.graft.windows import parse_windows
from hooklab.readout import load_lenses

__all__ = ["GraftExperiment"]


class GraftExperiment(Experiment[GraftConfig]):
    name = "graft"
    config_type = GraftConfig
    table = "graft"
    summary = "Graft IT MLPs into PT (and swap PT into IT) over windows, with random controls."
    uses_histories = True

    def validate(self, config: GraftConfig, n_layers: int) -> None:
        try:
            parse_windows(config.windows, n_layers)
        except HooklabError as error:
            raise HooklabError(f"graft.windows: {error}") from None

    def plan(self, config: GraftConfig, n_prompts: int, n_layers: int) -> PlanEstimate:
        n_windows = len(parse_windows(config.windows, n_layers))
        variants = len(config.modes) * len(config.parts) * n_windows
        passes = n_prompts * (config.max_new_tokens + 2 + len(config.directions) * variants)
        rows = n_prompts * len(config.directions) * (1 + variants) * n_layers
        return PlanEstimate(forward_passes=passes, rows=rows)

    def prepare(self, pair: Any, config: GraftConfig) -> Any:
        return load_lenses(pair, config.lens)

    def describe_context(self, context: Any) -> dict[str, Any]:
        return {"lenses": {side: lens.describe() for side, lens in context.items()}}

    def run_part(self, part: PartInput[GraftConfig]) -> pd.DataFrame:
        ids = [p.id for p in part.prompts]
        if part.histories is not None:
            by_id = check_histories(
                load_histories(part.histories), ids, vocab_size=part.pair.d_vocab
            )
            histories = [by_id[i] for i in ids]
        else:
            histories = make_histories(
                part.pair,
                part.prompts,
                max_new_tokens=part.config.max_new_tokens,
                truncate_long_prompts=part.config.truncate_long_prompts,
                progress=False,
            )
            save_histories(histories, part.out / "histories", f"{part.part_name}.jsonl")
        return run_graft(
            part.pair,
            histories,
            part.config,
            lenses=part.context,
            categories={p.id: p.category for p in part.prompts},
            progress=False,
        )

    def summarise(self, frame: pd.DataFrame, out: Path, config: GraftConfig) -> list[Path]:
        return write_graft_summaries(
            frame, out, seed=config.seed, late_start_depth=config.late_start_depth
        )

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.viz.figures import graft_effects_figure, save_html

        table = pd.read_parquet(run_dir / "graft.parquet")
        return [save_html(graft_effects_figure(table), figures_dir / "graft_effects.html")]

    def report_section(self, run_dir: Path) -> str:
        return heading("Graft effects (late-region change of kl_to_final)") + csv_table(
            run_dir / "effects.csv",
            [
                "direction",
                "mode",
                "part",
                "window",
                "late_layers",
                "mean",
                "ci_low",
                "ci_high",
                "bca_low",
                "bca_high",
                "p_sign_flip",
                "n_prompts",
                "n_tokens",
            ],
        )

    def headline(self, run_dir: Path) -> list[str]:
        effects = pd.read_csv(run_dir / "effects.csv")
        lines = [
            f"wrote {run_dir / 'graft.parquet'}, histories and effects in {run_dir}",
            "late-region change of kl_to_final (grafted - host), mean [95% CI], p:",
        ]
        for row in effects.itertuples():
            lines.append(
                f"  {row.direction:<9} {row.mode:<7} {row.part:<6} {row.window:<8} "
                f"{row.mean:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]  "
                f"p={row.p_sign_flip:.3g}  ({row.n_prompts} prompts, {row.n_tokens} tokens)"
            )
        return lines


register_experiment(GraftExperiment())
