"""The ``patching`` experiment: one layer's attention output, MLP output or residual stream
patched from the donor into the host on shared histories, both directions (library:
:mod:`hooklab.mechanism.patching`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd

from hooklab.atomic import atomic_write_csv
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.experiments._mechanism import part_histories, plain, with_categories
from hooklab.mechanism.patching import patching_heatmap, patching_summary, run_patching
from hooklab.metrics import LATE_START_DEPTH

__all__ = ["PatchingConfig", "PatchingExperiment"]

SUMMARY_CSV = "patching_summary.csv"
METRICS = ("delta_late_kl", "delta_teacher_logprob")


@dataclass(frozen=True)
class PatchingConfig(Config):
    """What a patching run does (the ``[patching]`` TOML section too)."""

    section: ClassVar[str] = "patching"

    components: tuple[Literal["attn_out", "mlp_out", "resid_post"], ...] = (
        "attn_out",
        "mlp_out",
        "resid_post",
    )
    """Patched components: attn_out, mlp_out, resid_post (one layer at a time)."""
    directions: tuple[Literal["it-to-pt", "pt-to-it"], ...] = ("it-to-pt", "pt-to-it")
    """it-to-pt (IT's activation into PT), pt-to-it (PT's into IT); comma-separated."""
    max_new_tokens: int = 32
    """Length cap of IT's greedy responses (the shared histories)."""
    batch_size: int = 4
    """Histories per forward pass."""
    late_start_depth: float = LATE_START_DEPTH
    """First depth (layer / (L - 1)) of the late region of the KL; the final layer is not in it."""
    seed: int = 0
    """Seed of the bootstrap summaries."""
    truncate_long_prompts: bool = False
    """Cut prompts longer than the model context (with a warning) instead of refusing them."""

    def __post_init__(self) -> None:
        for name, accepted in (
            ("components", ("attn_out", "mlp_out", "resid_post")),
            ("directions", ("it-to-pt", "pt-to-it")),
        ):
            values = tuple(dict.fromkeys(getattr(self, name)))
            object.__setattr__(self, name, values)
            if not values or any(v not in accepted for v in values):
                raise HooklabError(
                    f"patching.{name}={','.join(values) or '(none)'}: accepted values are "
                    f"{', '.join(accepted)}."
                )
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise HooklabError(
                f"patching: batch_size={self.batch_size} and max_new_tokens="
                f"{self.max_new_tokens} must be at least 1."
            )


class PatchingExperiment(Experiment[PatchingConfig]):
    name = "patching"
    config_type = PatchingConfig
    table = "patching"
    summary = "Patch one layer's attn/MLP output or residual from the donor; late KL, teacher."
    uses_histories = True

    def plan(self, config: PatchingConfig, n_prompts: int, n_layers: int) -> PlanEstimate:
        patches = len(config.directions) * len(config.components) * n_layers
        return PlanEstimate(
            forward_passes=n_prompts
            * (config.max_new_tokens + 4 * len(config.directions) + patches),
            rows=n_prompts * patches,
        )

    def run_part(self, part: PartInput[PatchingConfig]) -> pd.DataFrame:
        config = part.config
        histories = part_histories(
            part, max_new_tokens=config.max_new_tokens, truncate=config.truncate_long_prompts
        )
        frame = run_patching(
            part.pair,
            histories,
            directions=config.directions,
            components=config.components,
            late_start_depth=config.late_start_depth,
            batch_size=config.batch_size,
        )
        frame["prompt_id"] = frame["prompt_id"].astype(str)
        return with_categories(frame, part.prompts)

    def summarise(self, frame: pd.DataFrame, out: Path, config: PatchingConfig) -> list[Path]:
        summary = patching_summary(plain(frame), seed=config.seed)
        return [atomic_write_csv(out / SUMMARY_CSV, summary)]

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.viz.figures import save_html

        summary = pd.read_csv(run_dir / SUMMARY_CSV)
        return [
            save_html(patching_heatmap(summary, metric), figures_dir / f"patching_{metric}.html")
            for metric in METRICS
        ]

    def report_section(self, run_dir: Path) -> str:
        return heading("Component patching (patched - host), mean and 95% CI") + csv_table(
            run_dir / SUMMARY_CSV,
            ["direction", "component", "layer", "metric", "mean", "ci_low", "ci_high"]
            + ["n_prompts"],
        )

    def headline(self, run_dir: Path) -> list[str]:
        summary = pd.read_csv(run_dir / SUMMARY_CSV)
        lines = [f"wrote {run_dir / 'patching.parquet'} and {SUMMARY_CSV}"]
        keys = ["direction", "metric", "component"]
        for (direction, metric, component), rows in summary.groupby(keys, sort=False):
            top = rows.loc[rows["mean"].abs().idxmax()]
            lines.append(
                f"patching {direction} {component}, largest {metric}: layer "
                f"{int(top['layer'])} {top['mean']:+.3f} [{top['ci_low']:+.3f}, "
                f"{top['ci_high']:+.3f}], {int(top['n_prompts'])} prompts"
            )
        return lines


register_experiment(PatchingExperiment())
