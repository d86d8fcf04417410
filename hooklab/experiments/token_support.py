"""The ``token-support`` experiment: which kinds of tokens an MLP graft promotes or
suppresses (format, function words, content, ..., the teacher's token), per window, direction
and mode, with the norm-matched random control (library: :mod:`hooklab.mechanism.token_support`).

The table holds one row per (prompt, direction, mode, window, quantity): the late-region and
final-layer changes (grafted - host) of the class's log probability mass. Each part also keeps
its most promoted and suppressed tokens beside the table (``token_support_tokens/PART.csv``,
means over the part's prompts); the run's list pools them (exact for a run of one part).
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
from hooklab.experiments._mechanism import ci_row, part_histories, plain, with_categories
from hooklab.graft.engine import DIRECTIONS
from hooklab.graft.windows import parse_windows
from hooklab.mechanism.token_classes import CLASS_NAMES, DYNAMIC_CLASSES, classify_vocabulary
from hooklab.mechanism.token_support import token_support
from hooklab.metrics import LATE_START_DEPTH
from hooklab.stats import in_prompt_order
from hooklab.types import Direction

__all__ = ["TokenSupportConfig", "TokenSupportExperiment"]

SUMMARY_CSV = "token_support_summary.csv"
TOKENS_CSV = "token_support_tokens.csv"
TOKENS_DIR = "token_support_tokens"
QUANTITIES = (*CLASS_NAMES, *DYNAMIC_CLASSES)


@dataclass(frozen=True)
class TokenSupportConfig(Config):
    """What a token-support run does (the ``[token-support]`` TOML section too)."""

    section: ClassVar[str] = "token-support"

    windows: str = "late,mid,early"
    """Grafted windows: late,mid,early | last25 | all | a:b,... | sliding:W[:S]."""
    directions: tuple[Direction, ...] = ("it-to-pt", "pt-to-it")
    """it-to-pt (IT's MLPs into PT), pt-to-it (PT's into IT); comma-separated."""
    modes: tuple[Literal["module", "random"], ...] = ("module", "random")
    """module (the donor's MLP) and/or random (the norm-matched random control)."""
    max_new_tokens: int = 32
    """Length cap of IT's greedy responses (the shared histories)."""
    batch_size: int = 4
    """Histories per forward pass."""
    late_start_depth: float = LATE_START_DEPTH
    """First depth (layer / (L - 1)) of the late region read; the final layer is never in it."""
    top_k: int = 10
    """Most promoted and suppressed tokens listed."""
    seed: int = 0
    """Seed of the random control and of the bootstrap summaries."""
    truncate_long_prompts: bool = False
    """Cut prompts longer than the model context (with a warning) instead of refusing them."""

    def __post_init__(self) -> None:
        for name, values, accepted in (
            ("directions", self.directions, DIRECTIONS),
            ("modes", self.modes, ("module", "random")),
        ):
            object.__setattr__(self, name, tuple(dict.fromkeys(values)))
            bad = [v for v in values if v not in accepted]
            if bad or not values:
                raise HooklabError(
                    f"token-support.{name}={','.join(values) or '(none)'}: accepted values are "
                    f"{', '.join(accepted)}."
                )
        if min(self.batch_size, self.max_new_tokens, self.top_k) < 1:
            raise HooklabError(
                f"token-support: batch_size={self.batch_size}, max_new_tokens="
                f"{self.max_new_tokens} and top_k={self.top_k} must be at least 1."
            )


def _conditions(config: TokenSupportConfig, n_layers: int) -> list[tuple[Any, str, str]]:
    windows = parse_windows(config.windows, n_layers)
    return [(w, d, m) for w in windows for d in config.directions for m in config.modes]


class TokenSupportExperiment(Experiment[TokenSupportConfig]):
    name = "token-support"
    config_type = TokenSupportConfig
    table = "token_support"
    summary = "Which token classes (format, function, teacher, ...) an MLP graft promotes."
    uses_histories = True

    def validate(self, config: TokenSupportConfig, n_layers: int) -> None:
        try:
            parse_windows(config.windows, n_layers)
        except HooklabError as error:
            raise HooklabError(f"token-support.windows: {error}") from None

    def plan(self, config: TokenSupportConfig, n_prompts: int, n_layers: int) -> PlanEstimate:
        n = len(_conditions(config, n_layers))
        return PlanEstimate(
            forward_passes=n_prompts * (config.max_new_tokens + 2 * n),
            rows=n_prompts * n * len(QUANTITIES),
        )

    def prepare(self, pair: Any, config: TokenSupportConfig) -> Any:  # noqa: ARG002
        return classify_vocabulary(pair.tokenizer, pair.d_vocab)

    def run_part(self, part: PartInput[TokenSupportConfig]) -> pd.DataFrame:
        config = part.config
        histories = part_histories(
            part, max_new_tokens=config.max_new_tokens, truncate=config.truncate_long_prompts
        )
        frames, tokens = [], []
        for window, direction, mode in _conditions(config, part.pair.n_layers):
            support = token_support(
                part.pair,
                histories,
                window,
                direction=direction,
                mode=mode,
                codes=part.context,
                late_start_depth=config.late_start_depth,
                top_k=config.top_k,
                batch_size=config.batch_size,
                seed=config.seed,
            )
            frames.append(support.per_prompt)
            tokens.append(
                support.tokens.assign(
                    direction=direction, mode=mode, window=window.name, n_prompts=len(histories)
                )
            )
        atomic_write_csv(
            part.out / TOKENS_DIR / f"{part.part_name}.csv", pd.concat(tokens, ignore_index=True)
        )
        frame = pd.concat(frames, ignore_index=True)
        frame["prompt_id"] = frame["prompt_id"].astype(str)
        return with_categories(frame, part.prompts)

    def summarise(self, frame: pd.DataFrame, out: Path, config: TokenSupportConfig) -> list[Path]:
        keys = ["direction", "mode", "window", "quantity"]
        keys += ["late_layers"] if "late_layers" in frame else []  # the read-out region
        rows = []
        for key, group in in_prompt_order(plain(frame)).groupby(keys, sort=False):
            for metric in ("delta_late", "delta_final"):
                rows.append(
                    dict(zip(keys, key, strict=True))
                    | {"metric": metric}
                    | ci_row(group[metric].to_numpy(), config.seed)
                )
        return [
            atomic_write_csv(out / SUMMARY_CSV, pd.DataFrame(rows)),
            atomic_write_csv(out / TOKENS_CSV, _pooled_tokens(out, frame, config.top_k)),
        ]

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.viz.figures import save_html

        summary = pd.read_csv(run_dir / SUMMARY_CSV)
        figure = support_figure(summary[summary["metric"] == "delta_late"])
        return [save_html(figure, figures_dir / "token_support.html")]

    def report_section(self, run_dir: Path) -> str:
        columns = ["direction", "mode", "window", "quantity", "mean", "ci_low", "ci_high"]
        return (
            heading("Token support: late-region change of class log-mass (grafted - host)")
            + csv_table(
                run_dir / SUMMARY_CSV,
                [*columns, "p_sign_flip", "n_prompts"],
                lambda f: f[f["metric"] == "delta_late"],
            )
            + heading("Most promoted and suppressed tokens (final layer)")
            + csv_table(
                run_dir / TOKENS_CSV,
                ["direction", "mode", "window", "kind", "rank", "token", "token_class"]
                + ["delta_logprob", "n_prompts_listed", "n_prompts"],
            )
        )

    def headline(self, run_dir: Path) -> list[str]:
        summary = pd.read_csv(run_dir / SUMMARY_CSV)
        lines = [f"wrote {run_dir / (self.table + '.parquet')}, {SUMMARY_CSV}, {TOKENS_CSV}"]
        late = summary[summary["metric"] == "delta_late"]
        labels = {"teacher": "teacher token", "function": "function words", "format": "format"}
        for (window, direction, mode), rows in late.groupby(
            ["window", "direction", "mode"], sort=False
        ):
            rows = rows.set_index("quantity")
            parts = [
                f"{label} {rows.at[q, 'mean']:+.3f} [{rows.at[q, 'ci_low']:+.3f}, "
                f"{rows.at[q, 'ci_high']:+.3f}]"
                for q, label in labels.items()
                if q in rows.index
            ]
            name = "graft" if mode == "module" else "random control"
            lines.append(f"{window} {direction} {name}: " + ", ".join(parts))
        return lines


def _pooled_tokens(out: Path, frame: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Each part's top tokens pooled: mean over the run's prompts, a part that did not list a
    token counting 0 for it (exact when the run has one part)."""
    parts = sorted((out / TOKENS_DIR).glob("part-*.csv"))
    listed = pd.concat([pd.read_csv(p, keep_default_na=False) for p in parts], ignore_index=True)
    n_total = plain(frame)["prompt_id"].nunique()
    listed["weighted"] = listed["delta_logprob"] * listed["n_prompts"]
    keys = ["direction", "mode", "window", "kind", "token_id", "token", "token_class"]
    pooled = (
        listed.groupby(keys, sort=False)
        .agg(weighted=("weighted", "sum"), n_prompts_listed=("n_prompts", "sum"))
        .reset_index()
    )
    pooled["delta_logprob"] = pooled["weighted"] / n_total
    pooled["n_prompts"] = n_total
    ordered = []
    for (_, _, _, kind), rows in pooled.groupby(keys[:4], sort=False):
        rows = rows.sort_values("delta_logprob", ascending=kind == "suppressed").head(top_k)
        ordered.append(rows.assign(rank=range(len(rows))))
    columns = [*keys[:4], "rank", *keys[4:], "delta_logprob", "n_prompts_listed", "n_prompts"]
    return pd.concat(ordered, ignore_index=True)[columns]


def support_figure(late: pd.DataFrame) -> Any:
    """Bar chart of each quantity's late-region change, one bar per (window, mode), 95% CIs,
    one panel per direction."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    directions = list(dict.fromkeys(late["direction"]))
    figure = make_subplots(
        rows=1, cols=len(directions), shared_yaxes=True, subplot_titles=directions
    )
    palette = {"module": "#2ca02c", "random": "#7f7f7f"}
    windows = list(dict.fromkeys(late["window"]))
    for column, direction in enumerate(directions, start=1):
        for (window, mode), rows in late[late["direction"] == direction].groupby(
            ["window", "mode"], sort=False
        ):
            label = f"{window} {mode}"
            figure.add_trace(
                go.Bar(
                    x=rows["quantity"],
                    y=rows["mean"],
                    name=label,
                    marker_color=palette.get(mode),
                    marker_opacity=1.0 - 0.5 * windows.index(window) / max(len(windows), 1),
                    legendgroup=label,
                    showlegend=column == 1,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": rows["ci_high"] - rows["mean"],
                        "arrayminus": rows["mean"] - rows["ci_low"],
                    },
                    customdata=rows[["p_sign_flip", "n_prompts"]],
                    hovertemplate=(
                        "%{x}: %{y:+.4f}<br>p = %{customdata[0]:.3g}<br>%{customdata[1]} "
                        "prompts<extra></extra>"
                    ),
                ),
                row=1,
                col=column,
            )
    figure.update_yaxes(title_text="late-region change of log mass", row=1, col=1)
    figure.update_layout(
        barmode="group",
        template="plotly_white",
        title="token support under grafts (grafted - host), mean and 95% CI over prompts",
    )
    return figure


register_experiment(TokenSupportExperiment())
