"""The ``token-support`` experiment: which kinds of tokens an MLP graft promotes or
suppresses (format, function words, content, ..., the teacher's token), per window, direction
and mode, with the norm-matched random control (library: :mod:`hooklab.mechanism.token_support`).

The table holds one row per (prompt, direction, mode, window, quantity): the late-region and
final-layer changes (grafted - host) of the class's log probability mass. Each part also keeps
its most promoted and suppressed tokens beside the table (``token_support_tokens/PART.csv``,
means over the part's prompts) and, for the run's lists, every token's running sums over the
part's prompts (``token_support_tokens/PART.parquet``: change of log probability and of
probability; ``vocabulary.parquet`` names the ids). The run's ``token_support_tokens.csv`` ranks
the sums added over all parts, divided by the run's prompts: exactly the list one part of all
prompts gives, whatever the parts. Ranked by probability-mass change (``rank_by = "prob"``,
the default) or by log-probability change (``"logprob"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from hooklab.atomic import atomic_write, atomic_write_csv
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.experiments._mechanism import ci_row, part_histories, plain, with_categories
from hooklab.graft.engine import DIRECTIONS
from hooklab.graft.windows import parse_windows
from hooklab.mechanism.token_classes import CLASS_NAMES, DYNAMIC_CLASSES, classify_vocabulary
from hooklab.mechanism.token_support import describe_tokens, token_support, top_tokens
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
    rank_by: Literal["prob", "logprob"] = "prob"
    """Rank the token lists by change of probability mass (default) or of log probability."""
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
        frames, tokens, sums = [], [], []
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
                rank_by=config.rank_by,
            )
            frames.append(support.per_prompt)
            sums.append(_part_sums(support, direction, mode, window.name))
            tokens.append(
                support.tokens.assign(
                    direction=direction, mode=mode, window=window.name, n_prompts=len(histories)
                )
            )
        folder = part.out / TOKENS_DIR
        atomic_write_csv(folder / f"{part.part_name}.csv", pd.concat(tokens, ignore_index=True))
        _write_parquet(folder / f"{part.part_name}.parquet", pd.concat(sums, ignore_index=True))
        ids = list(range(part.pair.d_vocab))
        names, classes = describe_tokens(part.context, part.pair.tokenizer)(ids)
        vocabulary = pd.DataFrame({"token_id": ids, "token": names, "token_class": classes})
        _write_parquet(folder / VOCABULARY, vocabulary)
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
            atomic_write_csv(out / TOKENS_CSV, _run_tokens(out, config)),
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
                + ["delta_prob", "delta_logprob", "rank_by", "n_prompts"],
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


SUM_COLUMNS = ["sum_logprob", "sum_prob"]
VOCABULARY = "vocabulary.parquet"


def _part_sums(support: Any, direction: str, mode: str, window: str) -> pd.DataFrame:
    """One row per vocabulary id: the part's per-token sums over its prompts."""
    sums = support.token_sums
    return pd.DataFrame(
        {
            "direction": direction,
            "mode": mode,
            "window": window,
            "token_id": np.arange(sums.shape[1]),
            SUM_COLUMNS[0]: sums[0],
            SUM_COLUMNS[1]: sums[1],
            "n_prompts": support.n_prompts,
        }
    )


def _write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _run_tokens(out: Path, config: TokenSupportConfig) -> pd.DataFrame:
    """The run's exact lists: every part's per-token sums added, over the run's prompts."""
    folder = out / TOKENS_DIR
    sums = pd.concat(
        [pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))], ignore_index=True
    )
    vocabulary = pd.read_parquet(folder / VOCABULARY).set_index("token_id")

    def describe(ids: list[int]) -> tuple[list[str], list[str]]:
        rows = vocabulary.loc[ids]
        return rows["token"].tolist(), rows["token_class"].tolist()

    keys = ["direction", "mode", "window"]
    frames = []
    for key, rows in sums.groupby(keys, sort=False):
        added = rows.groupby("token_id", sort=True)[SUM_COLUMNS].sum()
        n_prompts = int(rows.groupby("token_id")["n_prompts"].sum().iloc[0])
        listed = top_tokens(added.to_numpy().T, n_prompts, describe, config.top_k, config.rank_by)
        frames.append(listed.assign(**dict(zip(keys, key, strict=True)), n_prompts=n_prompts))
    columns = [*keys, "kind", "rank", "token_id", "token", "token_class", "delta_prob"]
    return pd.concat(frames, ignore_index=True)[[*columns, "delta_logprob", "rank_by", "n_prompts"]]


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
