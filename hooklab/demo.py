"""The main job on one pair: native and same-history readouts, a late / mid / early graft sweep
in both directions with the norm-matched random control, token views and a report.

``hooklab demo`` runs it on the embedded pair and compares its headline numbers with the ones
hooklab states for the locked library versions (:data:`EXPECTED_FILE`); ``hooklab demo --pt A
--it B`` (or ``--pair NAME``) runs the same job on any pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hooklab.versions import STACK, library_versions

__all__ = ["EXPECTED_FILE", "Headline", "DemoResult", "run_demo", "expected_headlines", "compare"]

#: The embedded pair's headline numbers under the locked versions (README states them too).
EXPECTED_FILE = "demo_expected.json"
#: Printed to 3 decimals: a difference above this is a different result, not rounding.
MATCH_TOLERANCE = 1.5e-3


@dataclass(frozen=True)
class Headline:
    """One headline number: a mean over prompts with its 95% bootstrap CI, in nats."""

    key: str
    label: str
    mean: float
    ci_low: float
    ci_high: float

    def format(self) -> str:
        return f"{self.label}: {self.mean:+.3f} nats [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its runs and report, and its headline numbers."""

    readout: Path
    graft: Path
    report: Path
    headlines: tuple[Headline, ...]


def run_demo(
    pair_spec: Any,
    out: Path,
    *,
    prompts: str = "builtin",
    limit: int | None = None,
    echo: Any = print,
) -> DemoResult:
    """Run the main job on ``pair_spec`` (a :class:`~hooklab.runs.PairSpec`) into ``out``."""
    from hooklab.graft.sweep import GraftConfig
    from hooklab.readout import ReadoutConfig
    from hooklab.runs import ExecutionSpec, PromptSpec, RunSpec, run_spec
    from hooklab.viz.report import write_report

    pair = pair_spec.load()
    echo(f"pair: {pair!r}\n{pair.compatibility.format()}\n")
    common: dict[str, Any] = dict(
        pair=pair_spec,
        prompts=PromptSpec(source=prompts, limit=limit),
        execution=ExecutionSpec(part_size=20),
    )
    readout_dir, graft_dir = out / "readout", out / "graft"
    readout_config = ReadoutConfig(conditions=("native", "same_history"), max_new_tokens=16)
    run_spec(RunSpec(experiment="readout", out=str(readout_dir), config=readout_config, **common))
    # the graft is teacher-forced on the readout's own IT responses: generated once
    graft_config = GraftConfig(windows="late,mid,early", max_new_tokens=16)
    run_spec(
        RunSpec(
            experiment="graft",
            out=str(graft_dir),
            config=graft_config,
            histories=str(readout_dir),
            **common,
        )
    )
    views = _token_views(pair, readout_dir, out / "token_views")
    name = {"tiny": "the embedded PT/IT pair"}.get(
        str(pair_spec.name), pair_spec.name or f"PT {pair_spec.pt}, IT {pair_spec.it}"
    )
    report = write_report(
        out, [readout_dir, graft_dir], token_views=views, title=f"hooklab demo: {name}"
    )
    return DemoResult(readout_dir, graft_dir, report, headlines(readout_dir, graft_dir))


def _token_views(pair: Any, readout_dir: Path, views_dir: Path) -> list[tuple[str, Path]]:
    import pandas as pd

    from hooklab.graft.histories import load_histories
    from hooklab.viz.tokens import safe_filename, write_token_view

    table = pd.read_parquet(readout_dir / "readout.parquet")
    histories = {h.prompt_id: h for h in load_histories(readout_dir)}
    views = []
    for index, prompt_id in enumerate(list(dict.fromkeys(table["prompt_id"].astype(str)))[:5]):
        path = write_token_view(
            views_dir / f"{safe_filename(prompt_id, index)}.html",
            pair.tokenizer,
            table,
            prompt_id,
            "same_history",
            pair=pair,
            tokens=histories[prompt_id].tokens,
            folder=views_dir,
        )
        views.append((prompt_id, path))
    return views


def headlines(readout_dir: Path, graft_dir: Path) -> tuple[Headline, ...]:
    """The late-region convergence gap per condition and the late graft effects."""
    import pandas as pd

    gap = pd.read_csv(readout_dir / "convergence_gap.csv")
    effects = pd.read_csv(graft_dir / "effects.csv")
    rows = [
        Headline(
            f"gap/{r.condition}",
            f"convergence gap (IT - PT late-region KL), {r.condition}",
            float(r.mean),
            float(r.ci_low),
            float(r.ci_high),
        )  # fmt: skip
        for r in gap[gap["region"] == "late"].itertuples()
    ]
    rows += [
        Headline(
            f"graft/{r.mode}/{r.direction}",
            f"late {r.mode} graft {r.direction}",
            float(r.mean),
            float(r.ci_low),
            float(r.ci_high),
        )  # fmt: skip
        for r in effects[effects["window"] == "late"].itertuples()
    ]
    return tuple(rows)


def expected_headlines() -> dict[str, Any]:
    """``{"versions": {...}, "limit": N, "headlines": {key: [mean, low, high]}}`` as shipped."""
    text = resources.files("hooklab").joinpath(EXPECTED_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def compare(found: tuple[Headline, ...], *, limit: int | None) -> list[str]:
    """Lines saying how ``found`` differs from the shipped numbers (empty: the same), or why
    they cannot be compared (another prompt limit)."""
    expected = expected_headlines()
    if limit != expected["limit"]:
        return []
    lines = []
    for headline in found:
        want = expected["headlines"].get(headline.key)
        if want is None:
            continue
        got = (headline.mean, headline.ci_low, headline.ci_high)
        if any(abs(g - w) > MATCH_TOLERANCE for g, w in zip(got, want, strict=True)):
            lines.append(
                f"  {headline.key}: {headline.mean:+.3f} [{headline.ci_low:+.3f}, "
                f"{headline.ci_high:+.3f}], expected {want[0]:+.3f} "
                f"[{want[1]:+.3f}, {want[2]:+.3f}]"
            )
    if lines:
        have = library_versions(STACK)
        lines.insert(
            0,
            "!! These numbers DIFFER from the ones hooklab states for its locked versions ("
            + ", ".join(f"{k} {v}" for k, v in expected["versions"].items())
            + "); this machine has "
            + ", ".join(f"{k} {v}" for k, v in have.items())
            + ". Install with the lock file (README) or see docs/dependencies.md:",
        )
    return lines
