"""The ``steer`` experiment: α = 1 is the unsteered model in every arm, the batched α grid is
one α at a time, the summaries' slopes and ratios on known tables, and a run end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import hooklab
from hooklab.cli import main
from hooklab.experiment import PartInput, get_experiment
from hooklab.experiments.steer import (
    SteerConfig,
    _generate_arm,
    _hooks,
    _lens_rows,
    behaviour_file,
    parse_steer_arm,
)
from hooklab.generation import generate
from hooklab.graft.histories import make_histories
from hooklab.metrics import late_layers
from hooklab.prompts import chat_prompt_ids, load_prompts, raw_prompt_ids, stop_token_ids
from hooklab.steering import load_directions
from hooklab.steering.dose import measure_scores, prompt_slopes, slope_table, specificity
from hooklab.stream import read_lens

ARMS = ("it", "it-notmpl", "pt-inject", "it-random", "it@attn_out")


@pytest.fixture(scope="module")
def steer_part(tmp_path_factory):
    pair = hooklab.load_pair("tiny")
    config = SteerConfig(
        calibration=3, max_new_tokens=6, behaviour="tiny", sources=("mlp_out", "attn_out")
    )
    context = get_experiment("steer").prepare(pair, config)
    prompts = load_prompts(behaviour_file("tiny"))[:3]
    out = tmp_path_factory.mktemp("steer")
    return PartInput(pair, config, prompts, context, out, "part-00000")


def _unsteered(part, arm):
    pair = part.pair
    model = pair.it if arm.model == "it" else pair.pt
    encode = raw_prompt_ids if arm.prompting == "raw" else chat_prompt_ids
    stops = stop_token_ids(pair.tokenizer)
    pad = pair.tokenizer.pad_token_id
    outputs = generate(
        model,
        [encode(pair.tokenizer, p.text) for p in part.prompts],
        max_new_tokens=part.config.max_new_tokens,
        stop_ids=stops,
        pad_id=int(pad if pad is not None else stops[0]),
    )
    return [o.token_ids for o in outputs]


@pytest.mark.parametrize("name", ARMS)
def test_alpha_one_is_unsteered_and_the_grid_is_one_alpha_at_a_time(steer_part, name):
    arm = parse_steer_arm(name, "mlp_out")
    batched = _generate_arm(steer_part, arm)
    assert set(batched) == {(p.id, a) for p in steer_part.prompts for a in (0, 0.5, 1, 1.5, 2)}
    plain = _unsteered(steer_part, arm)
    assert [batched[(p.id, 1.0)].token_ids for p in steer_part.prompts] == plain
    single = PartInput(
        steer_part.pair,
        SteerConfig(**{**steer_part.config.to_dict(), "batched_alphas": False}),
        steer_part.prompts,
        steer_part.context,
        steer_part.out,
        steer_part.part_name,
    )
    one_at_a_time = _generate_arm(single, arm)
    assert {k: v.token_ids for k, v in batched.items()} == {
        k: v.token_ids for k, v in one_at_a_time.items()
    }


@pytest.mark.parametrize("name", ARMS)
def test_the_hooks_at_alpha_one_change_nothing_and_inject_adds_s_d(steer_part, name):
    arm = parse_steer_arm(name, "mlp_out")
    context, n = steer_part.context, steer_part.pair.n_layers
    h = torch.randn(3, 4, steer_part.pair.d_model)
    for hook_name, fn in _hooks(context, arm, 1.0, n):
        assert torch.equal(fn(h.clone(), None), h), hook_name
    directions = context["sets"]["random" if arm.control else arm.source]
    for (_, fn), layer in zip(_hooks(context, arm, 2.0, n), context["layers"], strict=True):
        d = directions.vector(layer)
        if arm.mode == "inject":  # β = α − 1 = 1: h + s·d
            expected = h + directions.mean_projection[directions.index(layer)] * d
        else:  # α = 2: the component along d doubled (times the control's gain)
            gain = directions.gains()[directions.index(layer)]
            expected = h + gain * (h @ d).unsqueeze(-1) * d
        torch.testing.assert_close(fn(h.clone(), None), expected)


def test_lens_rows_at_alpha_one_are_the_unsteered_readout(steer_part):
    pair = steer_part.pair
    histories = make_histories(pair, steer_part.prompts, max_new_tokens=6, progress=False)
    rows = _lens_rows(steer_part, parse_steer_arm("it", "mlp_out"), histories)
    by_alpha = {}
    for prompt_id, alpha, *_, value in rows:
        by_alpha.setdefault(alpha, {})[prompt_id] = value
    late = late_layers(pair.n_layers)
    for history in histories:
        tokens = torch.tensor([history.tokens])
        read = torch.zeros_like(tokens, dtype=torch.bool)
        read[0, history.read_from : history.read_to] = True
        kl = read_lens(pair.it, tokens, read_mask=read).metrics["kl_to_final"][:, :, late]
        reference = float(torch.nanmean(kl.float()))
        assert by_alpha[1.0][history.prompt_id] == pytest.approx(reference, abs=1e-6)
    assert any(
        abs(by_alpha[0.0][h.prompt_id] - by_alpha[1.0][h.prompt_id]) > 1e-6 for h in histories
    )  # steering moves the readout


def _table(slopes_by_arm: dict[str, list[float]], alphas=(0.0, 1.0, 2.0)) -> pd.DataFrame:
    rows = []
    for arm, slopes in slopes_by_arm.items():
        for i, slope in enumerate(slopes):
            for alpha in alphas:
                value = 0.1 * i + slope * alpha
                rows += [
                    (f"p{i}", arm, alpha, "end_of_turn", "governance", value),
                    (f"p{i}", arm, alpha, "raw_continuation", "governance", 1 - value),
                    (f"p{i}", arm, alpha, "repetition", "content", value),
                ]
    return pd.DataFrame(rows, columns=["prompt_id", "arm", "alpha", "scorer", "group", "value"])


def test_slopes_and_specificity_on_a_known_table():
    table = _table({"it": [0.2, 0.4, 0.6], "it-random": [0.1, 0.2, 0.3]})
    scores = measure_scores(table)
    # raw_continuation enters governance as 1 - value: the group mean is the value itself
    gov = scores[(scores.measure == "governance") & (scores.arm == "it")]
    assert np.allclose(gov.sort_values(["prompt_id", "alpha"])["value"], [0, .2, .4, .1, .5, .9,
                                                                         .2, .8, 1.4])  # fmt: skip
    slopes = prompt_slopes(scores)
    summary = slope_table(slopes).set_index(["arm", "measure"])
    assert summary.loc[("it", "governance"), "slope"] == pytest.approx(0.4)
    assert summary.loc[("it", "content"), "slope"] == pytest.approx(-0.4)  # 1 - repetition
    assert summary.loc[("it", "repetition"), "slope"] == pytest.approx(0.4)
    assert summary.loc[("it-random", "governance"), "slope"] == pytest.approx(0.2)
    low, high = summary.loc[("it", "governance"), ["ci_low", "ci_high"]]
    assert 0.2 <= low < 0.4 < high <= 0.6
    ratio = specificity(slopes, "it", "it-random", ["governance"]).iloc[0]
    # every prompt's true slope is twice its random slope: every resample's ratio is 2
    assert ratio["ratio"] == pytest.approx(2) and ratio["n_prompts"] == 3
    assert ratio["ci_low"] == pytest.approx(2) and ratio["ci_high"] == pytest.approx(2)


def test_a_missing_alpha_is_left_out_of_the_slope():
    table = _table({"it": [0.5]}, alphas=(0.0, 1.0, 2.0))
    table.loc[(table.alpha == 2.0), "value"] = np.nan
    slopes = prompt_slopes(measure_scores(table))
    row = slopes[(slopes.arm == "it") & (slopes.measure == "end_of_turn")].iloc[0]
    assert row["slope"] == pytest.approx(0.5) and row["n_alphas"] == 2


def test_end_to_end_run_report_and_direction_file(tmp_path, tiny_pair, capsys):
    out = tmp_path / "run"
    args = ["steer", "--out", str(out), "--pair", "tiny", "--device", "cpu"]
    args += ["--prompts", str(behaviour_file("tiny")), "--limit", "3", "--part-size", "2"]
    args += ["--calibration", "3", "--max-new-tokens", "6", "--behaviour", "tiny"]
    args += ["--alphas", "0,1,2", "--arms", "it,it-random", "--sources", "mlp_out,resid_post"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "governance slope it:" in printed and "specificity ratio" in printed
    table = pd.read_parquet(out / "steer.parquet")
    assert set(table["arm"]) == {"it", "it-random", "it@resid_post"}
    assert set(table["alpha"]) == {0.0, 1.0, 2.0} and table["prompt_id"].nunique() == 3
    assert "late_kl_to_final" in set(table["scorer"])
    for name in ("dose_response.csv", "slopes.csv", "specificity.csv", "prompt_slopes.csv"):
        assert (out / name).is_file(), name
    assert len((out / "generations" / "part-00001.jsonl").read_text().splitlines()) == 9
    for name in ("mlp_out", "resid_post", "random"):
        assert (out / "directions" / f"{name}.safetensors").is_file()
    assert (out / "directions" / "stability.csv").is_file()
    pair = hooklab.load_pair("tiny")
    loaded = load_directions(out / "directions" / "mlp_out", pair.it)
    assert loaded.hook == "mlp_out" and loaded.source == "mean" and loaded.n_prompts == 3
    other = tiny_pair("llama")
    with pytest.raises(hooklab.HooklabError, match="compute directions for this"):
        load_directions(
            out / "directions" / "mlp_out", hooklab.load_pair(pt=other.pt, it=other.it).it
        )
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.html").read_text()
    assert "Direction specificity" in report
    figures = {p.name for p in (tmp_path / "report").rglob("*.html")}
    assert {"dose_response.html", "direction_stability.html", "direction_lens.html"} <= figures


def test_end_of_turn_is_the_template_marker_not_any_stop_token(steer_part):
    """steer scores ``end_of_turn`` as behave does: ``<eos>`` (PT's document end) is not the
    template's ``<end_of_turn>``."""
    from types import SimpleNamespace

    from hooklab.experiments.steer import _score_rows
    from hooklab.prompts import ends_turn

    tokenizer = steer_part.pair.tokenizer
    eos, eot = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert eos != eot
    body = tokenizer("Paris is a city", add_special_tokens=False)["input_ids"]
    arm = parse_steer_arm("pt-inject", "mlp_out")
    for last, expected in ((eos, 0.0), (eot, 1.0)):
        ids = (*body, last)
        output = SimpleNamespace(token_ids=ids, stop_reason="eot", n_tokens=len(ids))
        outputs = {
            (p.id, a): output for p in steer_part.prompts for a in steer_part.config.alpha_grid
        }
        rows, _ = _score_rows(steer_part, arm, outputs)
        values = {value for _, _, name, _, value in rows if name == "end_of_turn"}
        assert values == {expected}
        assert ends_turn(ids, tokenizer) is bool(expected)


def test_dose_response_and_slopes_resample_in_prompt_id_order():
    """The CI of dose_response.csv / slopes.csv must not depend on the table's row order."""
    from hooklab.steering.dose import dose_response

    rng = np.random.default_rng(3)
    ids = [f"p{i:02d}" for i in range(12)]
    scores = pd.DataFrame(
        [
            {"prompt_id": p, "arm": "it", "alpha": a, "measure": "governance", "value": v}
            for p in ids
            for a, v in zip((0.0, 1.0, 2.0), rng.normal(size=3), strict=True)
        ]
    )
    shuffled = scores.sample(frac=1.0, random_state=7).reset_index(drop=True)
    pd.testing.assert_frame_equal(dose_response(scores, seed=1), dose_response(shuffled, seed=1))
    slopes = prompt_slopes(scores)
    pd.testing.assert_frame_equal(
        slope_table(slopes, seed=1), slope_table(slopes.iloc[::-1].reset_index(drop=True), seed=1)
    )


def test_directions_rebuild_from_the_run_folders_calibration_histories(tmp_path):
    """The calibration histories are saved in OUT/directions/ and accepted back: the same
    directions (and random control) come out of them, bit for bit."""
    from hooklab.experiments.steer import _promote_directions
    from hooklab.steering.sweep import (
        CALIBRATION_HISTORIES,
        prepare_directions,
        write_direction_set,
    )

    pair = hooklab.load_pair("tiny")
    config = SteerConfig(calibration=3, history_tokens=4, behaviour="tiny")
    context = prepare_directions(pair, config)
    write_direction_set(context, tmp_path, "part-00000")
    _promote_directions(tmp_path)
    saved = tmp_path / "directions" / CALIBRATION_HISTORIES
    assert saved.is_file()
    again = prepare_directions(
        pair, SteerConfig(calibration_histories=str(saved), history_tokens=4, behaviour="tiny")
    )
    assert again["digest"] == context["digest"]
    for name, directions in context["sets"].items():
        assert torch.equal(again["sets"][name].vectors, directions.vectors), name
    assert [h.prompt_id for h in again["calibration_histories"]] == [
        h.prompt_id for h in context["calibration_histories"]
    ]
