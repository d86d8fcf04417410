"""The ``behave`` experiment: free-running generations of model arms (PT, PT with IT's late MLPs,
its random control, IT, and the mirror on the IT host), scored by behaviour rules.

Prompts. The run's ``[prompts]`` are the prompts (ids, texts, categories), split into parts as
in every experiment; a behaviour set is one of them: ``source = "behaviour"`` (hooklab's set,
``data/behaviour/all.jsonl``), ``"behaviour-tiny"`` (the embedded pair's) or a behaviour JSONL
file. What scorers need beyond the text (a factual prompt's ``expected`` answer, verifiable
``instructions``) is looked up by prompt id in ``behave.prompt_set`` (``"builtin"`` = the set
``"behaviour"`` names, ``"tiny"`` = ``"behaviour-tiny"``, or the same file), read by
:func:`~hooklab.behaviour.load_behaviour_prompts`. A prompt of the run that the set does not
have (e.g. hooklab's general ``builtin`` prompts) is scored without references: its accuracy
and instruction scores are NaN and its rows have ``in_prompt_set = False``; a prompt whose id
is in the set with another text or category is refused.

Per part, every arm generates for every prompt (same seed, so the random control and sampling
are the same whatever the part), each response is scored by every scorer, the responses are
kept in ``generations/PART.jsonl`` and the rows (one per prompt, arm and scorer) returned. The
merge writes ``arm_means.csv``, ``paired.csv``, ``gap_closed.csv`` (see
:mod:`hooklab.behaviour.stats`) and ``viewer.html``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from hooklab.atomic import atomic_write_csv, atomic_write_text
from hooklab.behaviour.judge import JudgeCache, LocalHFJudge, Rubric
from hooklab.behaviour.prompts import load_behaviour_prompts
from hooklab.behaviour.runner import arm_generations, default_scorers, score_records
from hooklab.behaviour.scorers import SCORERS
from hooklab.behaviour.stats import arm_means, design_comparisons, gap_closed, paired_differences
from hooklab.behaviour.viewer import behaviour_figure, write_viewer
from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.generation.arms import DEFAULT_ARMS, parse_arm
from hooklab.jsonl import read_jsonl

__all__ = ["BehaveConfig", "BehaveExperiment", "JUDGE_RUBRIC"]

GENERATIONS_DIR = "generations"
JUDGE_DIR = "judge"
#: The rubric a ``judge`` answers (yes/no), scored as ``judge:helpful``.
JUDGE_RUBRIC = Rubric(
    name="helpful",
    version="1",
    template=(
        "Does the response answer the user's request helpfully and directly? Reply yes or "
        "no.\n\nRequest: {prompt}\n\nResponse: {response}\n\nAnswer:"
    ),
    scale="yes/no",
)
#: Scorers the headline reports, with their labels.
HEADLINE_SCORERS = {
    "false_refusal": "false refusal",
    "harmful_refusal": "harmful refusal",
    "assistant_register": "assistant register",
    "end_of_turn": "end of turn",
    "structure": "structure",
}


@dataclass(frozen=True)
class BehaveConfig(Config):
    """What a behave run does (the ``[behave]`` TOML section too)."""

    section: ClassVar[str] = "behave"

    arms: tuple[str, ...] = DEFAULT_ARMS
    """Model arms (pt, it, pt+late:it, pt+late:random, it-skip:3, ...@raw)."""
    prompt_set: str = "builtin"
    """Behaviour set the expected answers and instructions are read from, by prompt id: behaviour (or builtin), behaviour-tiny (or tiny) or a JSONL file; the names --prompts uses."""  # noqa: E501
    max_new_tokens: int = 48
    """Most tokens generated per response."""
    batch_size: int = 8
    """Prompts per generation batch."""
    greedy: bool = True
    """Greedy decoding; --no-greedy samples with temperature and top_p."""
    temperature: float = 1.0
    """Sampling temperature (with --no-greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass (with --no-greedy)."""
    scorers: tuple[str, ...] = default_scorers()
    """Rule scorers (default: every registered one)."""
    judge: str | None = None
    """Local Hugging Face judge model folder (rubric 'helpful', yes/no); none by default."""
    seed: int = 0
    """Seed of the random control, of sampling and of the bootstrap."""

    def __post_init__(self) -> None:
        if not self.arms:
            raise HooklabError("behave.arms is empty: name at least one arm, e.g. pt,it.")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise HooklabError(
                f"behave.max_new_tokens={self.max_new_tokens}, batch_size={self.batch_size}: "
                "both must be at least 1."
            )
        if not 0 < self.temperature < math.inf or not 0 < self.top_p <= 1:
            raise HooklabError(
                f"behave.temperature={self.temperature}, top_p={self.top_p}: use a positive, "
                "finite temperature and top_p in (0, 1]."
            )
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown or not self.scorers:
            raise HooklabError(
                f"behave.scorers={list(self.scorers)}: use registered scorers, some of "
                f"{', '.join(sorted(SCORERS))}."
            )


class BehaveExperiment(Experiment[BehaveConfig]):
    name = "behave"
    config_type = BehaveConfig
    table = "scores"
    summary = "Free-running generations of model arms (grafts, controls), scored by behaviour."

    def validate(self, config: BehaveConfig, n_layers: int) -> None:
        canonical = [parse_arm(a, n_layers).text for a in config.arms]
        repeated = sorted({a for a in canonical if canonical.count(a) > 1})
        if repeated:
            raise HooklabError(f"behave.arms names {repeated} more than once; name each once.")
        load_behaviour_prompts(config.prompt_set)

    def plan(self, config: BehaveConfig, n_prompts: int, n_layers: int) -> PlanEstimate:  # noqa: ARG002
        n_arms, n_scorers = len(config.arms), len(config.scorers) + (config.judge is not None)
        return PlanEstimate(
            forward_passes=n_arms * n_prompts * config.max_new_tokens,
            rows=n_arms * n_prompts * n_scorers,
            bytes_per_row=40,
        )

    def prepare(self, pair: Any, config: BehaveConfig) -> Any:  # noqa: ARG002
        references = {p.id: p for p in load_behaviour_prompts(config.prompt_set)}
        judge = None if config.judge is None else LocalHFJudge(config.judge)
        return references, judge

    def describe_context(self, context: Any) -> dict[str, Any]:
        references, judge = context
        return {"prompt_set_size": len(references), "judge": None if judge is None else judge.id}

    def run_part(self, part: PartInput[BehaveConfig]) -> pd.DataFrame:
        config = part.config
        references, judge = part.context
        records = arm_generations(
            part.pair,
            config.arms,
            part.prompts,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            greedy=config.greedy,
            temperature=config.temperature,
            top_p=config.top_p,
            batch_size=config.batch_size,
        )
        extra = {}
        if judge is not None:
            cache = JudgeCache(part.out / JUDGE_DIR / f"{part.part_name}.jsonl")
            extra["judge:helpful"] = lambda g: cache.score(judge, g, JUDGE_RUBRIC)
        frame = score_records(records, part.prompts, references, config.scorers, extra)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(part.out / GENERATIONS_DIR / f"{part.part_name}.jsonl", lines)
        return frame

    def summarise(self, frame: pd.DataFrame, out: Path, config: BehaveConfig) -> list[Path]:
        comparisons = design_comparisons(frame)
        written = [
            atomic_write_csv(out / "arm_means.csv", arm_means(frame, seed=config.seed)),
            atomic_write_csv(
                out / "paired.csv", paired_differences(frame, comparisons, seed=config.seed)
            ),
            atomic_write_csv(
                out / "gap_closed.csv", gap_closed(frame, comparisons, seed=config.seed)
            ),
        ]
        written.append(write_viewer(out / "viewer.html", read_generations(out), frame))
        return written

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.viz.figures import save_html

        means = pd.read_csv(run_dir / "arm_means.csv")
        return [save_html(behaviour_figure(means), figures_dir / "behaviour.html")]

    def report_section(self, run_dir: Path) -> str:
        import html

        viewer = (run_dir / "viewer.html").resolve().as_uri()
        return "".join(
            [
                heading("Behaviour scores by arm (mean, 95% CI over prompts)"),
                csv_table(
                    run_dir / "arm_means.csv", ["scorer", "arm", "mean", "ci_low", "ci_high", "n"]
                ),
                heading("Paired differences (bootstrap CI, sign-flip p)"),
                csv_table(
                    run_dir / "paired.csv",
                    ["scorer", "role", "comparison", "mean", "ci_low", "ci_high", "p_value", "n"],
                ),
                heading("Fraction of the A to C gap that B closes"),
                csv_table(
                    run_dir / "gap_closed.csv",
                    ["scorer", "A", "B", "C", "gap", "fraction", "ci_low", "ci_high", "n", "note"],
                ),
                f"<p><a href='{html.escape(viewer, quote=True)}'>Responses side by side "
                "(viewer.html)</a></p>",
            ]
        )

    def headline(self, run_dir: Path) -> list[str]:
        means = pd.read_csv(run_dir / "arm_means.csv")
        gaps = pd.read_csv(run_dir / "gap_closed.csv")
        lines = [f"wrote {run_dir / 'scores.parquet'}, summaries and viewer.html in {run_dir}"]
        for scorer, label in HEADLINE_SCORERS.items():
            rows = means[(means["scorer"] == scorer) & (means["n"] > 0)]
            if rows.empty:
                continue
            cells = [
                f"{r.arm} {r.mean:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in rows.itertuples()
            ]
            lines.append(f"{label}: " + ", ".join(cells))
            for g in gaps[gaps["scorer"] == scorer].itertuples():
                closed = (
                    f"{g.fraction:.2f} [{g.ci_low:.2f}, {g.ci_high:.2f}]"
                    if pd.notna(g.fraction)
                    else f"n/a ({g.note})"
                )
                lines.append(f"  gap {g.A} -> {g.C} closed by {g.B}: {closed}")
        return lines


def read_generations(run_dir: Path) -> list[dict[str, Any]]:
    """Every generation record of a run folder (``generations/*.jsonl``, in part order)."""
    records = []
    for path in sorted((Path(run_dir) / GENERATIONS_DIR).glob("part-*.jsonl")):
        records += [record for _, record in read_jsonl(path)]
    return records


register_experiment(BehaveExperiment())
