"""The ``weight-change`` experiment: where instruction tuning changed the weights, tensor by
tensor (library: :mod:`hooklab.mechanism.weight_change`).

It needs no prompts: the first part of the run (``part-00000``) reads the two checkpoints once
and holds every row; the other parts are empty. Its command has no prompt options and runs
one part (``limit = 1``).
Checkpoints are the pair's local folders; a hub id is read from the local Hugging Face cache
(``snapshot_download(local_files_only=True)``), never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from hooklab.atomic import atomic_write_csv
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.experiments._mechanism import plain
from hooklab.mechanism.weight_change import weight_change, weight_change_pivot

__all__ = ["WeightChangeConfig", "WeightChangeExperiment", "checkpoint_folder"]

PIVOT_CSV = "weight_change_pivot.csv"
GROUPS_CSV = "weight_change_groups.csv"
FIRST_PART = "part-00000"
COLUMNS = {
    "tensor": object,
    "layer": "Int64",
    "group": object,
    "module": object,
    "expert": "Int64",
    "numel": "int64",
    "norm_pt": float,
    "norm_it": float,
    "norm_diff": float,
    "dot": float,
    "rel_change": float,
    "cosine": float,
}


@dataclass(frozen=True)
class WeightChangeConfig(Config):
    """What a weight-change run does (the ``[weight-change]`` TOML section too)."""

    section: ClassVar[str] = "weight-change"

    value: Literal["rel_change", "cosine"] = "rel_change"
    """Heatmap and pivot value: rel_change (||W_IT - W_PT|| / ||W_PT||) or cosine."""


def checkpoint_folder(source: Any, side: str) -> Path:
    """The local folder of one side's checkpoint (a hub id resolved in the local cache)."""
    if source.is_local:
        return Path(source.name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                source.name_or_path,
                revision=source.commit or source.revision,
                local_files_only=True,
            )
        )
    except Exception as error:  # noqa: BLE001 - any cache miss means the same to the user
        raise HooklabError(
            f"{side}={source.name_or_path!r}: weight-change reads checkpoint files, and no "
            f"local copy is in the Hugging Face cache ({type(error).__name__}); download it "
            "first (huggingface-cli download ...) or pass the local folder."
        ) from None


def _empty() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})


class WeightChangeExperiment(Experiment[WeightChangeConfig]):
    name = "weight-change"
    config_type = WeightChangeConfig
    table = "weight_change"
    summary = "Relative change and cosine of every weight tensor, PT vs IT (no prompts)."
    uses_prompts = False

    def plan(self, config: WeightChangeConfig, n_prompts: int, n_layers: int) -> PlanEstimate:  # noqa: ARG002
        # about a dozen tensors per layer (attention, MLP, norms) plus embeddings
        return PlanEstimate(forward_passes=0, rows=12 * n_layers + 3, bytes_per_row=120)

    def prepare(self, pair: Any, config: WeightChangeConfig) -> Any:  # noqa: ARG002
        return {
            "pt": checkpoint_folder(pair.pt_source, "pt"),
            "it": checkpoint_folder(pair.it_source, "it"),
        }

    def describe_context(self, context: Any) -> dict[str, Any]:
        return {"weight_change_folders": {side: str(path) for side, path in context.items()}}

    def run_part(self, part: PartInput[WeightChangeConfig]) -> pd.DataFrame:
        if part.part_name != FIRST_PART:
            return _empty()
        frame = weight_change(part.context["pt"], part.context["it"])
        return pd.concat([_empty(), frame], ignore_index=True)[list(COLUMNS)]

    def summarise(self, frame: pd.DataFrame, out: Path, config: WeightChangeConfig) -> list[Path]:
        frame = plain(frame)
        pivot = weight_change_pivot(frame, config.value)
        groups = (
            frame.assign(
                pt2=frame["norm_pt"] ** 2, it2=frame["norm_it"] ** 2, d2=frame["norm_diff"] ** 2
            )
            .groupby("group", sort=True)[["pt2", "it2", "d2", "dot", "numel"]]
            .sum()
        )
        groups["rel_change"] = (groups["d2"] / groups["pt2"]) ** 0.5
        groups["cosine"] = groups["dot"] / (groups["pt2"] * groups["it2"]) ** 0.5
        return [
            atomic_write_csv(out / PIVOT_CSV, pivot.reset_index()),
            atomic_write_csv(
                out / GROUPS_CSV, groups[["numel", "rel_change", "cosine"]].reset_index()
            ),
        ]

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.mechanism.figures import weight_change_figure
        from hooklab.viz.figures import save_html

        frame = plain(pd.read_parquet(run_dir / f"{self.table}.parquet"))
        return [save_html(weight_change_figure(frame), figures_dir / "weight_change.html")]

    def report_section(self, run_dir: Path) -> str:
        pivot = pd.read_csv(run_dir / PIVOT_CSV)
        return (
            heading("Weight change by module group (pooled)")
            + csv_table(run_dir / GROUPS_CSV, ["group", "numel", "rel_change", "cosine"])
            + heading("Weight change by layer and module")
            + csv_table(run_dir / PIVOT_CSV, list(pivot.columns))
        )

    def headline(self, run_dir: Path) -> list[str]:
        groups = pd.read_csv(run_dir / GROUPS_CSV).sort_values("rel_change", ascending=False)
        pivot = pd.read_csv(run_dir / PIVOT_CSV).set_index("layer")
        layer, column = pivot.stack().idxmax()
        lines = [f"wrote {run_dir / 'weight_change.parquet'}, {PIVOT_CSV}, {GROUPS_CSV}"]
        lines.append(
            "relative weight change ||W_IT - W_PT|| / ||W_PT|| by group: "
            + ", ".join(f"{r.group} {r.rel_change:.4f}" for r in groups.itertuples())
        )
        lines.append(
            f"largest value of the layer x module table: layer {layer} {column} "
            f"{pivot.at[layer, column]:.4f}"
        )
        return lines


register_experiment(WeightChangeExperiment())
