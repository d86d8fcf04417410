"""The behave experiment: arms' generations scored by behaviour rules, summaries, viewer."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import hooklab
from hooklab.behaviour import load_behaviour_prompts, score_generation
from hooklab.behaviour.runner import arm_generations, score_records
from hooklab.behaviour.stats import (
    design_comparisons,
    gap_closed,
    paired_difference,
    paired_differences,
)
from hooklab.behaviour.viewer import viewer_html
from hooklab.errors import HooklabError
from hooklab.experiment import get_experiment
from hooklab.experiments.behave import BehaveConfig, read_generations
from hooklab.generation import DEFAULT_ARMS
from hooklab.prompts import Prompt, load_prompts
from hooklab.runs import ExecutionSpec, PairSpec, PromptSpec, RunSpec, run_spec

PROMPT_IDS = ("tiny-fact-00", "tiny-harm-00", "tiny-format-00")
SCORERS = ("false_refusal", "end_of_turn", "content_accuracy", "structure", "raw_continuation")


@pytest.fixture(scope="module")
def pair():
    return hooklab.load_pair("tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny_set():
    prompts = {p.id: p for p in load_prompts("behaviour-tiny")}
    references = {p.id: p for p in load_behaviour_prompts("tiny")}
    return [prompts[i] for i in PROMPT_IDS], references


def _columns(records, *keys):
    return [tuple(json.dumps(r[k]) for k in keys) for r in records]


def test_behaviour_sets_load_as_run_prompts():
    for name, set_name in (("behaviour-tiny", "tiny"), ("behaviour", "builtin")):
        run = load_prompts(name)
        references = load_behaviour_prompts(set_name)
        assert [(p.id, p.text, p.category) for p in run] == [
            (p.id, p.text, p.category) for p in references
        ]


def test_self_graft_and_skip_zero_reproduce_the_host(pair, tiny_set):
    prompts, references = tiny_set
    arms = ("pt", "pt+late:pt", "it", "it-skip:0")
    records = arm_generations(pair, arms, prompts, max_new_tokens=8, batch_size=2)
    by_arm = {a: [r for r in records if r["arm"] == a] for a in arms}
    assert all(len(v) == len(prompts) for v in by_arm.values())
    keys = ("prompt_id", "text", "token_ids", "stop_reason", "n_tokens")
    assert _columns(by_arm["pt+late:pt"], *keys) == _columns(by_arm["pt"], *keys)
    assert _columns(by_arm["it-skip:0"], *keys) == _columns(by_arm["it"], *keys)
    assert _columns(by_arm["pt"], "token_ids") != _columns(by_arm["it"], "token_ids")
    scores = score_records(records, prompts, references, SCORERS)
    assert len(scores) == len(arms) * len(prompts) * len(SCORERS)
    wide = scores.pivot_table(
        index=["prompt_id", "scorer"], columns="arm", values="value", dropna=False
    )
    pd.testing.assert_series_equal(wide["pt+late:pt"], wide["pt"], check_names=False)
    pd.testing.assert_series_equal(wide["it-skip:0"], wide["it"], check_names=False)
    # each row is the scorer's own score of the decoded response
    for record in records:
        from hooklab.behaviour.runner import _generation

        prompt = next(p for p in prompts if p.id == record["prompt_id"])
        expected = score_generation(
            _generation(record, prompt, references[prompt.id]), list(SCORERS)
        )
        rows = scores[(scores["prompt_id"] == prompt.id) & (scores["arm"] == record["arm"])]
        got = dict(zip(rows["scorer"], rows["value"], strict=True))
        for name, value in expected.items():
            assert (value is None and math.isnan(got[name])) or got[name] == value


def _record(prompt_id, arm, text="Tokyo.", stop="eot"):
    spec = {"arm": arm, "host": arm[:2], "intervention": "none", "layers": []}
    spec |= {"window": None, "donor": None, "prompting": "template"}
    return {
        "prompt_id": prompt_id,
        "category": "factual",
        "prompt_text": "What is the capital of Japan?",
        "arm": arm,
        "arm_spec": spec,
        "text": text,
        "token_ids": [1, 2],
        "stop_reason": stop,
        "n_tokens": 2,
    }


def test_references_are_looked_up_by_id_and_checked(tiny_set):
    _, references = tiny_set
    known = Prompt("tiny-fact-00", "What is the capital of Japan?", "factual")
    other = Prompt("mine", "What is the capital of Japan?", "factual")
    records = [_record("tiny-fact-00", "pt"), _record("mine", "pt")]
    scores = score_records(records, [known, other], references, ["content_accuracy"])
    by_id = scores.set_index("prompt_id")
    assert by_id.loc["tiny-fact-00", "value"] == 1.0 and by_id.loc["tiny-fact-00", "in_prompt_set"]
    assert math.isnan(by_id.loc["mine", "value"]) and not by_id.loc["mine", "in_prompt_set"]
    changed = Prompt("tiny-fact-00", "What is the capital of Peru?", "factual")
    with pytest.raises(HooklabError, match="tiny-fact-00"):
        score_records(records[:1], [changed], references, ["content_accuracy"])


def _scores(values: dict[str, list[float]], scorer: str = "s") -> pd.DataFrame:
    rows = []
    for arm, column in values.items():
        host, _, rest = arm.partition("+")
        window, _, donor = rest.partition(":")
        for i, value in enumerate(column):
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "arm": arm,
                    "host": host,
                    "intervention": "none"
                    if not rest
                    else "random"
                    if donor == "random"
                    else "graft",
                    "window": window,
                    "donor": {"random": "it" if host == "pt" else "pt"}.get(donor, donor),
                    "prompting": "template",
                    "scorer": scorer,
                    "value": value,
                }
            )
    return pd.DataFrame(rows)


def test_paired_difference_of_an_arm_with_itself_is_zero_with_p_one():
    scores = _scores({"pt": [0.0, 1.0, 1.0, 0.0, 1.0, np.nan]})
    result = paired_difference(scores, "s", "pt", "pt")
    assert (result["mean"], result["ci_low"], result["ci_high"]) == (0.0, 0.0, 0.0)
    assert result["p_value"] == 1.0 and result["n"] == 5


def test_design_paired_differences_and_gap_closed():
    a = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    c = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    b = [x + 0.5 * (y - x) for x, y in zip(a, c, strict=True)]  # closes half the gap exactly
    scores = _scores({"pt": a, "pt+late:it": b, "pt+late:random": a, "it": c, "it+late:pt": c})
    comparisons = design_comparisons(scores)
    assert [(x.role, x.label) for x in comparisons] == [
        ("B-A", "pt+late:it - pt"),
        ("C-B", "it - pt+late:it"),
        ("C-A", "it - pt"),
        ("B-R", "pt+late:it - pt+late:random"),
        ("R-A", "pt+late:random - pt"),
        ("B-A", "it+late:pt - it"),
        ("C-B", "pt - it+late:pt"),
        ("C-A", "pt - it"),
    ]
    paired = paired_differences(scores, comparisons).set_index("comparison")
    assert paired.loc["pt+late:it - pt", "mean"] == pytest.approx(0.75 / 2)
    assert paired.loc["pt+late:random - pt", "p_value"] == 1.0
    # six differences of 1, two of 0: 2 sign patterns of the six x 4 of the zeros reach the mean
    assert paired.loc["it - pt", "p_value"] == pytest.approx(8 / 2**8)
    gaps = gap_closed(scores, comparisons).set_index("B")
    assert gaps.loc["pt+late:it", ["fraction", "ci_low", "ci_high"]].tolist() == [0.5] * 3
    assert gaps.loc["it+late:pt", "fraction"] == pytest.approx(0.0)
    flat = _scores({"pt": a, "pt+late:it": c, "it": a})  # A and C equal: no gap to close
    row = gap_closed(flat, design_comparisons(flat)).iloc[0]
    assert math.isnan(row["fraction"]) and "includes 0" in row["note"]


def test_viewer_escapes_every_text():
    hostile = "</td><script>alert(1)</script>"
    records = [_record("p<1>", "pt", text=hostile), _record("p<1>", "<b>arm</b>", text="ok")]
    records[0]["prompt_text"] = "<img src=x onerror=alert(1)>"
    scores = pd.DataFrame(
        {"prompt_id": ["p<1>"], "arm": ["pt"], "scorer": ["<i>s</i>"], "value": [1.0]}
    )
    page = viewer_html(records, scores)
    assert "<script>" not in page and "<img" not in page and "<b>arm" not in page
    assert "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;i&gt;s&lt;/i&gt;: 1.00" in page
    assert page.count("<td>") == 2  # one cell per arm, the hostile text did not close one


def test_config_defaults_and_refusals():
    config = BehaveConfig()
    assert config.arms == DEFAULT_ARMS and config.prompt_set == "builtin"
    assert config.max_new_tokens == 48 and config.greedy and config.judge is None
    assert "false_refusal" in config.scorers
    assert BehaveConfig.from_dict({"arms": "pt, it"}).arms == ("pt", "it")
    with pytest.raises(HooklabError, match="scorers"):
        BehaveConfig(scorers=("nope",))
    with pytest.raises(HooklabError, match="more than once"):
        get_experiment("behave").validate(BehaveConfig(arms=("pt", "pt@template")), 6)
    with pytest.raises(HooklabError, match="Accepted"):
        get_experiment("behave").validate(BehaveConfig(arms=("pt+late:xx",)), 6)


def test_end_to_end_run_writes_table_generations_summaries_figure_viewer(tmp_path):
    arms = ("pt", "pt+late:it", "pt+late:random", "it")
    config = BehaveConfig(arms=arms, prompt_set="tiny", max_new_tokens=8, batch_size=2)
    spec = RunSpec(
        experiment="behave",
        out=str(tmp_path / "run"),
        pair=PairSpec(name="tiny", device="cpu"),
        prompts=PromptSpec(source="behaviour-tiny", limit=4),
        config=config,
        execution=ExecutionSpec(part_size=2),
    )
    table_path = run_spec(spec, progress=False)
    out = tmp_path / "run"
    assert table_path == out / "scores.parquet"
    table = pd.read_parquet(table_path)
    n_scorers = len(config.scorers)
    assert len(table) == 4 * len(arms) * n_scorers
    assert sorted((out / "generations").glob("*.jsonl")) == [
        out / "generations" / "part-00000.jsonl",
        out / "generations" / "part-00001.jsonl",
    ]
    records = read_generations(out)
    assert len(records) == 4 * len(arms)
    assert {r["arm_spec"]["prompting"] for r in records} == {"template"}
    # the table is the scorers' scores of the saved generations
    prompts = {p.id: p for p in load_prompts("behaviour-tiny")}
    references = {p.id: p for p in load_behaviour_prompts("tiny")}
    again = score_records(
        records, [prompts[i] for i in dict.fromkeys(r["prompt_id"] for r in records)],
        references, config.scorers,
    )  # fmt: skip
    np.testing.assert_array_equal(table["value"].to_numpy(), again["value"].to_numpy())
    means = pd.read_csv(out / "arm_means.csv")
    assert len(means) == len(arms) * n_scorers
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["role"]) == {"B-A", "C-B", "C-A", "R-A", "B-R"}
    assert (out / "gap_closed.csv").is_file()
    assert "<table>" in (out / "viewer.html").read_text()
    experiment = get_experiment("behave")
    (figure,) = experiment.figures(out, tmp_path / "figures")
    assert figure.is_file() and "plotly" in figure.read_text()[:5000].lower()
    assert "viewer.html" in experiment.report_section(out)
    lines = experiment.headline(out)
    assert any(line.startswith("end of turn: pt ") for line in lines)
    assert run_spec(spec, progress=False) == table_path  # resume: nothing left to do
    pd.testing.assert_frame_equal(pd.read_parquet(table_path), table)


def test_end_of_turn_is_the_turn_marker_not_a_document_end():
    # PT ends a line of text with EOS; only the chat template's end-of-turn marker ends a turn
    from hooklab.prompts import end_of_turn_ids, stop_token_ids
    from hooklab.synthetic.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(512)
    turn = end_of_turn_ids(tokenizer)
    assert turn == [tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    assert tokenizer.eos_token_id in stop_token_ids(tokenizer)
    assert tokenizer.eos_token_id not in turn
