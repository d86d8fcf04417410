"""Grafts: exact identities on every family, the random control, the optimised sweep, windows,
histories and the command line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import hooklab
from hooklab.architectures import read_logits
from hooklab.cli import main
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.effects import graft_effects
from hooklab.graft.engine import graft_hooks, mlp_out_hooks
from hooklab.graft.histories import load_histories, make_histories, save_histories
from hooklab.graft.sweep import GraftConfig, run_graft
from hooklab.graft.windows import parse_windows
from hooklab.lens import LogitLens
from hooklab.metrics import late_layers, layers_label
from hooklab.prompts import load_prompts
from hooklab.synthetic import TINY_SHAPES, write_mlp_swapped_checkpoint

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
    for mode in ("module", "splice", "random"):
        for host, donor_model in ((twins.pt, twins.pt), (twins.pt, twins.it)):
            hooks_ = graft_hooks(
                host,
                donor_model,
                range(twins.n_layers),
                mode,
                donor_mlp_out=donor,
                row_keys=["a", "b"],
            )
            grafted = residual_stream(host, tokens, attention_mask=mask, fwd_hooks=hooks_)
            assert torch.equal(grafted.resid_post, base), mode


def test_random_control_moves_mlp_out_by_exactly_the_true_grafts_norm(tiny_pair):
    tiny = tiny_pair("gemma3")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, mask = _tokens()
    record: dict = {}
    hooks_ = graft_hooks(
        pair.pt, pair.it, [1, 2], "random", row_keys=["p1", "p2"], seed=5, record=record
    )
    residual_stream(pair.pt, tokens, attention_mask=mask, fwd_hooks=hooks_)
    for layer in (1, 2):
        moved = (record[layer]["new_out"] - record[layer]["host_out"]).norm(dim=-1)
        assert torch.allclose(moved, record[layer]["module_delta_norm"], rtol=1e-5, atol=1e-6)
        assert float(record[layer]["module_delta_norm"].min()) > 0
    # the direction is not the true graft's (the control differs only in direction)
    module_record: dict = {}
    residual_stream(
        pair.pt,
        tokens,
        attention_mask=mask,
        fwd_hooks=graft_hooks(pair.pt, pair.it, [1], "module", record=module_record),
    )
    true_delta = module_record[1]["new_out"] - module_record[1]["host_out"]
    random_delta = record[1]["new_out"] - record[1]["host_out"]
    cosine = torch.nn.functional.cosine_similarity(true_delta, random_delta, dim=-1)
    assert float(cosine.abs().mean()) < 0.5


def test_random_control_is_seeded_per_prompt_not_per_batch(tiny_pair):
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, _ = _tokens()
    both = residual_stream(
        pair.pt,
        tokens,
        fwd_hooks=graft_hooks(pair.pt, pair.it, [2], "random", row_keys=["x", "y"], seed=1),
    ).resid_post
    second = residual_stream(
        pair.pt,
        tokens[1:],
        fwd_hooks=graft_hooks(pair.pt, pair.it, [2], "random", row_keys=["y"], seed=1),
    ).resid_post
    # equal up to batch-size float noise (~2e-6 even without a graft); another seed is far off
    assert torch.allclose(both[:, 1], second[:, 0], atol=1e-5)
    other_seed = residual_stream(
        pair.pt,
        tokens,
        fwd_hooks=graft_hooks(pair.pt, pair.it, [2], "random", row_keys=["x", "y"], seed=2),
    ).resid_post
    assert not torch.allclose(both, other_seed)


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
    naive = run_graft(pair, histories, config, lenses=LENSES, progress=False, reuse=False)
    numbers = fast.select_dtypes("number").columns
    difference = (fast[numbers] - naive[numbers]).abs().max().max()
    assert difference <= 1e-5


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
