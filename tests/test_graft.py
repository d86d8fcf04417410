"""Grafts: exact identities on every family, the random control, the optimised sweep, windows,
histories and the command line."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

import hooklab
from hooklab.architectures import read_logits
from hooklab.cli import main
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.effects import graft_effects
from hooklab.graft.engine import (
    graft_hooks,
    mlp_out_hooks,
    module_change_norms,
    random_directions,
)
from hooklab.graft.histories import load_histories, make_histories, save_histories
from hooklab.graft.sweep import GraftConfig, run_graft
from hooklab.graft.windows import parse_windows
from hooklab.lens import LogitLens
from hooklab.metrics import late_layers, layers_label
from hooklab.prompts import load_prompts
from hooklab.synthetic import (
    TINY_SHAPES,
    write_mlp_swapped_checkpoint,
    write_perturbed_checkpoint,
)
from tests.graft_reference import max_difference, naive_graft

LENSES = {"pt": LogitLens(), "it": LogitLens()}


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(5, 500, (2, 10), generator=torch.Generator().manual_seed(3))
    tokens[:, 0] = 0
    mask = torch.ones_like(tokens)
    mask[1, 7:] = 0
    return tokens, mask


@pytest.fixture(scope="module")
def swapped(tiny_pair, tiny_root):
    """shape -> a pair (A, B) where B is A with the IT checkpoint's MLP-path weights."""
    made = {}

    def make(shape):
        if shape not in made:
            tiny = tiny_pair(shape)
            b = write_mlp_swapped_checkpoint(tiny.pt, tiny.it, tiny_root / shape / "mlp-swapped")
            made[shape] = hooklab.load_pair(pt=tiny.pt, it=b, device="cpu")
        return made[shape]

    return make


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_grafting_every_mlp_of_b_into_a_reproduces_b(swapped, shape):
    pair = swapped(shape)
    tokens, mask = _tokens()
    every = range(pair.n_layers)
    with torch.no_grad():
        expected = pair.it(tokens, attention_mask=mask)
        stream = residual_stream(
            pair.pt,
            tokens,
            attention_mask=mask,
            fwd_hooks=graft_hooks(pair.pt, pair.it, every, "module"),
        )
        assert torch.equal(read_logits(pair.pt, stream.resid_post[-1]), expected)
        # splice and module agree here: all layers from the start, identical non-MLP weights
        donor = {}
        residual_stream(
            pair.it, tokens, attention_mask=mask, fwd_hooks=mlp_out_hooks(pair.n_layers, donor)
        )
        spliced = residual_stream(
            pair.pt,
            tokens,
            attention_mask=mask,
            fwd_hooks=graft_hooks(pair.pt, pair.it, every, "splice", donor_mlp_out=donor),
        )
        assert torch.equal(spliced.resid_post, stream.resid_post)
        # and the identity is not vacuous: A and B really differ
        assert not torch.allclose(pair.pt(tokens, attention_mask=mask), expected, atol=1e-3)


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_self_graft_and_graft_between_identical_models_change_nothing(tiny_pair, shape):
    tiny = tiny_pair(shape)
    twins = hooklab.load_pair(pt=tiny.pt, it=tiny.pt, device="cpu")
    tokens, mask = _tokens()
    base = residual_stream(twins.pt, tokens, attention_mask=mask).resid_post
    donor = {}
    residual_stream(
        twins.it, tokens, attention_mask=mask, fwd_hooks=mlp_out_hooks(twins.n_layers, donor)
    )
    every = range(twins.n_layers)
    for mode in ("module", "splice", "random"):
        for host, donor_model in ((twins.pt, twins.pt), (twins.pt, twins.it)):
            norms = module_change_norms(host, donor_model, tokens, every, attention_mask=mask)
            assert all(float(n.abs().max()) == 0 for n in norms.values())
            hooks_ = graft_hooks(
                host,
                donor_model,
                every,
                mode,
                donor_mlp_out=donor,
                module_norms=norms,
                row_keys=["a", "b"],
            )
            grafted = residual_stream(host, tokens, attention_mask=mask, fwd_hooks=hooks_)
            assert torch.equal(grafted.resid_post, base), mode


def test_random_control_matches_the_module_grafts_norm_at_every_layer(tiny_pair):
    # The control's change at each layer has the norm of the module graft's change at that
    # layer in the module graft's own pass, not on the already randomised stream.
    tiny = tiny_pair("gemma3")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, mask = _tokens()
    window = [1, 2, 3]
    module_record: dict = {}
    norms: dict = {}
    residual_stream(
        pair.pt,
        tokens,
        attention_mask=mask,
        fwd_hooks=graft_hooks(
            pair.pt, pair.it, window, "module", record=module_record, record_norms=norms
        ),
    )
    record: dict = {}
    hooks_ = graft_hooks(
        pair.pt,
        pair.it,
        window,
        "random",
        row_keys=["p1", "p2"],
        seed=5,
        module_norms=norms,
        record=record,
    )
    residual_stream(pair.pt, tokens, attention_mask=mask, fwd_hooks=hooks_)
    real = mask.bool()
    for layer in window:
        true_change = module_record[layer]["new_out"] - module_record[layer]["host_out"]
        moved = (record[layer]["new_out"] - record[layer]["host_out"]).norm(dim=-1)[real]
        assert float(true_change.norm(dim=-1)[real].min()) > 0
        ratio = moved / true_change.norm(dim=-1)[real]
        assert torch.allclose(ratio, torch.ones_like(ratio), rtol=1e-5, atol=0), layer
        # the direction is not the true graft's (the control differs only in direction)
        random_change = record[layer]["new_out"] - record[layer]["host_out"]
        cosine = torch.nn.functional.cosine_similarity(true_change, random_change, dim=-1)
        assert float(cosine[real].abs().mean()) < 0.5
    with pytest.raises(HooklabError, match="random mode needs module_norms"):
        graft_hooks(pair.pt, pair.it, window, "random", row_keys=["p1", "p2"])


def test_random_control_is_seeded_per_prompt_not_per_batch(tiny_pair):
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, _ = _tokens()

    def grafted(rows, keys, seed):
        norms = module_change_norms(pair.pt, pair.it, tokens[rows], [2])
        hooks_ = graft_hooks(
            pair.pt, pair.it, [2], "random", row_keys=keys, seed=seed, module_norms=norms
        )
        return residual_stream(pair.pt, tokens[rows], fwd_hooks=hooks_).resid_post

    both = grafted(slice(0, 2), ["x", "y"], 1)
    second = grafted(slice(1, 2), ["y"], 1)
    # equal up to batch-size float noise (~2e-6 even without a graft); another seed is far off
    assert torch.allclose(both[:, 1], second[:, 0], atol=1e-5)
    assert not torch.allclose(both, grafted(slice(0, 2), ["x", "y"], 2))


@pytest.mark.parametrize("d_model", [20, 64, 100])
def test_random_directions_do_not_depend_on_padding_or_other_rows(d_model):
    alone = random_directions(["a"], 3, 2, 7, d_model)
    batched = random_directions(["b", "a"], 3, 2, 13, d_model)
    assert torch.equal(batched[1, :7], alone[0])
    assert torch.allclose(alone.norm(dim=-1), torch.ones(1, 7))
    assert not torch.equal(batched[0, :7], alone[0])  # another key, other directions
    assert not torch.equal(random_directions(["a"], 3, 1, 7, d_model), alone)  # another layer


@pytest.fixture(scope="module")
def odd_pair(tiny_checkpoint, tiny_root):
    """``odd_pair(d_model)``: a tiny llama pair whose d_model is not a multiple of 16."""
    made = {}

    def make(d_model: int):
        if d_model not in made:
            pt = tiny_checkpoint(
                "llama",
                f"llama-d{d_model}",
                hidden_size=d_model,
                intermediate_size=2 * d_model,
                num_attention_heads=2,
                num_key_value_heads=1,
            )
            it = write_perturbed_checkpoint(pt, tiny_root / "single" / f"llama-d{d_model}-it")
            made[d_model] = hooklab.load_pair(pt=pt, it=it, device="cpu")
        return made[d_model]

    return make


@pytest.mark.parametrize("d_model", [20, 100])
def test_random_graft_of_a_history_does_not_depend_on_padding(odd_pair, d_model):
    # One [pos, d_model] draw per row differed at a row's last position whenever
    # pos * d_model is not a multiple of 16 (torch's sampler redraws the last 16 values).
    pair = odd_pair(d_model)
    tokens = torch.randint(5, 500, (2, 12), generator=torch.Generator().manual_seed(6))
    tokens[:, 0] = 0
    mask = torch.ones_like(tokens)
    mask[0, 7:] = 0  # the history "short" has 7 tokens; batched, it is padded to 12

    def grafted(rows: slice, keys: list[str], length: int) -> torch.Tensor:
        t, m = tokens[rows, :length], mask[rows, :length]
        norms = module_change_norms(pair.pt, pair.it, t, [1, 2], attention_mask=m)
        hooks_ = graft_hooks(
            pair.pt, pair.it, [1, 2], "random", row_keys=keys, seed=4, module_norms=norms
        )
        return residual_stream(pair.pt, t, attention_mask=m, fwd_hooks=hooks_).resid_post

    batched = grafted(slice(0, 2), ["short", "long"], 12)[:, 0, :7]
    alone = grafted(slice(0, 1), ["short"], 7)[:, 0]
    # batch-size float noise only (~5e-6); other directions move the stream by ~1e-1
    assert torch.allclose(batched, alone, atol=2e-5)


@pytest.fixture(scope="module")
def sweep(tiny_pair):
    tiny = tiny_pair("qwen3")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    histories = make_histories(pair, load_prompts()[:5], max_new_tokens=6, progress=False)
    config = GraftConfig(
        directions=("it-to-pt", "pt-to-it"),
        modes=("module", "splice", "random"),
        windows="late,mid,early,1:3",
        batch_size=2,
    )
    return (
        pair,
        histories,
        config,
        run_graft(pair, histories, config, lenses=LENSES, progress=False),
    )


def test_optimised_sweep_equals_the_naive_sweep(sweep):
    pair, histories, config, fast = sweep
    naive = naive_graft(pair, histories, config, lenses=LENSES)
    assert max_difference(fast, naive) <= 1e-5
    pd.testing.assert_frame_equal(
        fast.select_dtypes(exclude="number"), naive.select_dtypes(exclude="number")
    )


def test_random_only_sweep_equals_the_naive_sweep_and_the_full_sweep(sweep):
    # with no module mode, the sweep runs the module graft for the random control's norms
    pair, histories, config, full = sweep
    only = GraftConfig(
        directions=config.directions, modes=("random",), windows=config.windows, batch_size=2
    )
    fast = run_graft(pair, histories, only, lenses=LENSES, progress=False)
    assert max_difference(fast, naive_graft(pair, histories, only, lenses=LENSES)) <= 1e-5
    keys = ["prompt_id", "direction", "mode", "window", "layer"]
    ours = fast.set_index(keys)["kl_to_final"]
    in_full = full.set_index(keys)["kl_to_final"].loc[ours.index]
    assert float((ours - in_full).abs().max()) <= 1e-5


def test_opt_in_metric_adds_a_column_and_changes_no_other(sweep):
    pair, histories, config, table = sweep
    with_js = GraftConfig(
        directions=config.directions,
        modes=config.modes,
        windows=config.windows,
        batch_size=2,
        metrics=("js_to_final",),
    )
    more = run_graft(pair, histories, with_js, lenses=LENSES, progress=False)
    assert set(more.columns) - set(table.columns) == {"js_to_final", "delta_js_to_final"}
    pd.testing.assert_frame_equal(more[table.columns], table)
    js = more["js_to_final"]
    assert (more.loc[more["layer"] == pair.n_layers - 1, "js_to_final"] == 0).all()
    assert (js > 1e-4).any() and (js <= math.log(2)).all()
    with pytest.raises(HooklabError, match="metrics=entropy: not an opt-in metric"):
        GraftConfig(metrics=("entropy",))


def test_graft_table(sweep):
    pair, histories, config, table = sweep
    keys = ["prompt_id", "direction", "mode", "window", "layer"]
    assert not table.duplicated(keys).any()
    n_windows = 4
    per = 2 * (1 + 3 * n_windows) * pair.n_layers  # directions x (baseline + modes x windows)
    assert len(table) == len(histories) * per
    baseline = table[table["mode"] == "none"]
    assert (baseline.filter(like="delta_").abs().to_numpy() == 0).all()
    # delta = grafted - ungrafted host, same prompt and layer
    late = table[
        (table["mode"] == "module")
        & (table["window"] == "late")
        & (table["direction"] == "it-to-pt")
    ].set_index(["prompt_id", "layer"])
    base = baseline[baseline["direction"] == "it-to-pt"].set_index(["prompt_id", "layer"])
    recomputed = late["kl_to_final"] - base.loc[late.index, "kl_to_final"]
    assert torch.allclose(
        torch.tensor(recomputed.to_numpy()),
        torch.tensor(late["delta_kl_to_final"].to_numpy()),
        atol=1e-12,
    )
    # IT is the teacher: its own final layer is at KL 0 from the teacher
    it_final = baseline[(baseline["host"] == "it") & (baseline["layer"] == pair.n_layers - 1)]
    assert (it_final["kl_to_teacher"].abs() < 1e-6).all()
    # a real graft moves the host's final distribution relative to the teacher
    grafted_final = table[(table["mode"] == "module") & (table["layer"] == pair.n_layers - 1)]
    assert (grafted_final["delta_kl_to_teacher"].abs() > 0).any()
    # effects count each prompt's response tokens once, not once per late layer
    effects = graft_effects(table)
    n_response = sum(h.read_to - h.read_from for h in histories)
    assert (effects["n_tokens"] == n_response).all() and (effects["n_prompts"] == 5).all()
    assert (effects["late_layers"] == layers_label(late_layers(pair.n_layers))).all()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("early,mid,late", [(0,), (1, 2), (3,)]),
        ("last25", [(3,)]),
        ("0:2,2:4", [(0, 1), (2, 3)]),
        ("sliding:2", [(0, 1), (1, 2), (2, 3)]),
        ("sliding:2:2", [(0, 1), (2, 3)]),
    ],
)
def test_windows(spec, expected):
    assert [w.layers for w in parse_windows(spec, 4)] == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0:9", "outside the model"),
        ("3:3", "empty"),
        ("late,lat", "not a window name"),
        ("sliding:5", "need 1 <= W <= 4"),
        ("x:2", "must be integers"),
        ("", "no window"),
    ],
)
def test_bad_windows_name_the_valid_range(spec, message):
    with pytest.raises(HooklabError, match=message) as info:
        parse_windows(spec, 4)
    if spec:
        assert "layers 0..3" in str(info.value)


def test_overlapping_windows_refused_where_not_allowed():
    with pytest.raises(HooklabError, match="overlap"):
        parse_windows("0:3,2:4", 4, allow_overlap=False)
    assert len(parse_windows("0:3,2:4", 4)) == 2


def test_histories_round_trip(sweep, tmp_path):
    _, histories, _, _ = sweep
    save_histories(histories, tmp_path)
    assert load_histories(tmp_path) == histories
    with pytest.raises(HooklabError, match="no histories.jsonl"):
        load_histories(tmp_path / "nowhere")


def test_cli_graft_end_to_end_and_repeatable_from_saved_histories(tiny_pair, tmp_path, capsys):
    tiny = tiny_pair("olmo2")
    args = [
        "--pt",
        str(tiny.pt),
        "--it",
        str(tiny.it),
        "--limit",
        "4",
        "--max-new-tokens",
        "5",
        "--windows",
        "late,early",
        "--mode",
        "module,random",
        "--device",
        "cpu",
    ]
    assert main(["graft", "--out", str(tmp_path / "a"), *args]) == 0
    assert "late-region change of kl_to_final" in capsys.readouterr().out
    table = pd.read_parquet(tmp_path / "a" / "graft.parquet")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["config"]["experiment"] == "graft" and manifest["n_rows"] == len(table)
    effects = pd.read_csv(tmp_path / "a" / "effects.csv")
    assert {"ci_low", "bca_low", "p_sign_flip", "n_prompts", "n_tokens"} <= set(effects.columns)
    again = [
        "graft",
        "--out",
        str(tmp_path / "b"),
        "--histories",
        str(tmp_path / "a" / "histories"),
        *args,
    ]
    assert main(again) == 0
    repeated = pd.read_parquet(tmp_path / "b" / "graft.parquet")
    pd.testing.assert_frame_equal(table, repeated)


def test_cli_graft_refuses_a_bad_window_before_work(tiny_pair, tmp_path, capsys):
    tiny = tiny_pair("llama")
    code = main(
        [
            "graft",
            "--out",
            str(tmp_path),
            "--pt",
            str(tiny.pt),
            "--it",
            str(tiny.it),
            "--windows",
            "2:40",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "window '2:40': outside the model" in err and "layers 0..3" in err
    assert not (tmp_path / "histories").exists()


def test_one_definition_of_the_random_controls_norm():
    """grep finds one definition of the norm the random control is matched to (change_norm),
    used by the teacher-forced graft and by generation; the two sources are named."""
    import re
    from pathlib import Path

    from hooklab.generation.arms import parse_arm
    from hooklab.graft.engine import RANDOM_NORM_SOURCES

    package = Path(__file__).resolve().parents[1] / "hooklab"
    engine = (package / "graft" / "engine.py").read_text()
    generation = (package / "generation" / "interventions.py").read_text()
    assert len(re.findall(r"def change_norm\(", engine)) == 1
    assert "change_norm(" in generation and "norm(dim=-1" not in generation
    assert "record_norms[layer] = change_norm(" in engine
    assert set(RANDOM_NORM_SOURCES) == {"module_pass", "own_pass"}
    assert parse_arm("pt+late:random", 6).to_dict()["random_norm"] == "own_pass"
    assert "random_norm" not in parse_arm("pt+late:it", 6).to_dict()
